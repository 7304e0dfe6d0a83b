"""Auto-resume's choice of checkpoint (``solo_iclmsr.runs.resume``): only a run of the same
training config is resumed, the newest first and younger than ``max_hours`` as in solo, and a
same-name run that differs is named with the keys that differ. The run folders here are
``args.json`` files beside empty checkpoints; whole runs are in test_runs.py."""

import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from solo_iclmsr.config.flat import covered
from solo_iclmsr.runs.resume import (MAY_DIFFER, differing_keys, find_resumable,
                                     reached_max_epochs)

CONFIG = {"name": "simclr-builtin", "method": "simclr", "seed": 5, "max_epochs": 3,
          "devices": 1, "enable_progress_bar": True,
          "data": {"dataset": "builtin", "num_workers": 2},
          "optimizer": {"name": "lars", "lr": 0.4},
          "augmentations": [{"crop_size": 32}],
          "iclmsr": {"enabled": True, "strata": "frozen", "lambda_msr": 1.0}}


def _cfg(**changes):
    """``CONFIG`` with dotted keys changed, as a DictConfig."""
    cfg = OmegaConf.create(CONFIG)
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def _run(root: Path, version: str, cfg, epochs=(0,)) -> Path:
    """A run folder as solo's Checkpointer leaves it: ``args.json`` (with the logger's id) and
    one checkpoint per epoch; returns the last."""
    folder = root / "simclr" / version
    folder.mkdir(parents=True)
    args = {**OmegaConf.to_container(cfg), "wandb_run_id": version}
    (folder / "args.json").write_text(json.dumps(args))
    for epoch in epochs:
        checkpoint = folder / f"{cfg.name}-{version}-ep={epoch}.ckpt"
        checkpoint.write_bytes(b"")
        time.sleep(0.01)  # distinct creation times
    return checkpoint


def test_the_same_config_is_resumed_whatever_the_run_time_keys(tmp_path):
    old = _run(tmp_path, "offline-a", _cfg(), epochs=(0, 1))
    new = _cfg(devices=[0, 1], data__num_workers=0, enable_progress_bar=False)
    choice = find_resumable(new, tmp_path / "simclr", max_hours=36)
    assert choice.checkpoint == old  # the folder's newest checkpoint
    assert choice.reason == f"Resuming from previous checkpoint that matches specifications: '{old}'"


def test_a_changed_setting_is_not_resumed_and_the_keys_are_named(tmp_path):
    old = _run(tmp_path, "offline-a", _cfg())
    choice = find_resumable(_cfg(iclmsr__lambda_msr=0.25, seed=6), tmp_path / "simclr", 36)
    assert choice.checkpoint is None
    assert choice.reason == (f"Not resuming '{old}': a run of the same name, but this one "
                             f"differs in iclmsr.lambda_msr (1.0 -> 0.25), seed (5 -> 6); "
                             f"starting a new version folder.")
    assert "\n" not in choice.reason


def test_the_newest_matching_run_is_resumed_past_newer_ones_that_differ(tmp_path):
    _run(tmp_path, "offline-a", _cfg())
    wanted = _run(tmp_path, "offline-b", _cfg())
    _run(tmp_path, "offline-c", _cfg(iclmsr__strata="random_fixed"))
    assert find_resumable(_cfg(), tmp_path / "simclr", 36).checkpoint == wanted
    choice = find_resumable(_cfg(augmentations=[{"crop_size": 16}]), tmp_path / "simclr", 36)
    # the newest run of the name is the one named
    assert choice.checkpoint is None and "offline-c" in choice.reason
    assert "augmentations.0.crop_size (32 -> 16)" in choice.reason
    assert "iclmsr.strata ('random_fixed' -> 'frozen')" in choice.reason


def test_other_names_old_runs_and_folders_without_args_are_not_candidates(tmp_path):
    _run(tmp_path, "offline-a", _cfg(name="other"))
    stray = tmp_path / "simclr" / "offline-b"
    stray.mkdir()
    (stray / "x-ep=0.ckpt").write_bytes(b"")
    choice = find_resumable(_cfg(), tmp_path / "simclr", 36)
    assert (choice.checkpoint, choice.reason) == (None, None)
    _run(tmp_path, "offline-c", _cfg())
    assert find_resumable(_cfg(), tmp_path / "simclr", max_hours=1e-9).checkpoint is None
    assert find_resumable(_cfg(), tmp_path / "nothing", 36).checkpoint is None


def test_only_the_listed_keys_may_differ():
    recorded = {**CONFIG, "wandb_run_id": "offline-a",
                "checkpoint": {"dir": "elsewhere", "frequency": 5}}
    assert differing_keys(recorded, _cfg()) == []
    changed = _cfg(method_kwargs__temperature=0.1, optimizer__lr=0.2)
    assert differing_keys(recorded, changed) == [
        "method_kwargs.temperature ('<absent>' -> 0.1)", "optimizer.lr (0.4 -> 0.2)"]
    assert covered("checkpoint.dir", MAY_DIFFER) and not covered("iclmsr.strata", MAY_DIFFER)
    assert not covered("devicesx", ["devices"])


def test_a_checkpoint_of_the_last_epoch_has_reached_max_epochs():
    cfg = _cfg()  # max_epochs 3: epochs 0, 1, 2
    assert reached_max_epochs({"epoch": 2}, cfg)
    assert not reached_max_epochs({"epoch": 1}, cfg)
    assert not reached_max_epochs({}, cfg)
