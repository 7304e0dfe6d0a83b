"""solo-learn's own pretraining configs, unchanged, through ``solo-iclmsr pretrain``."""

from pathlib import Path

import pytest
import torch
from plugin_kit import METHOD_NAMES, SCRIPT_NAMES
from solo_source import solo_source

from solo_iclmsr import cli
from solo_iclmsr.config import compose, solo_checked
from solo_iclmsr.plugin import prepare_pretrain
from solo_iclmsr.plugin.registry import method_class

ROOT = solo_source()
PRETRAIN_FILES = sorted(ROOT.glob("scripts/pretrain/*/*.y*ml")) if ROOT else []
# Upstream's imagenet-100/all4one.yml has no `momentum` block, which All4One (a momentum method)
# reads: upstream cannot build it either (nor find it: Hydra reads .yaml files only).
BROKEN_UPSTREAM = {"imagenet-100/all4one.yml": "the config lacks 'momentum'"}


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", PRETRAIN_FILES, ids=_id)
@pytest.mark.parametrize("enabled", [False, True])
def test_every_pretrain_config_loads_and_builds_its_model(path, enabled, tmp_path):
    overrides = [f"++iclmsr.enabled={str(enabled).lower()}", "++wandb.enabled=False"]
    if path.parent.name == "custom":
        (tmp_path / "train" / "a").mkdir(parents=True)
        overrides.append(f"data.train_path={tmp_path / 'train'}")
    cfg = compose(str(path.parent), path.name, overrides)
    if "mae" in path.name and enabled:  # excluded, with its reason
        with pytest.raises(ValueError, match="has no ICL-MSR variant: MAE reconstructs"):
            prepare_pretrain(cfg)
        return
    if _id(path) in BROKEN_UPSTREAM:
        with pytest.raises(ValueError, match=BROKEN_UPSTREAM[_id(path)]):
            cfg = prepare_pretrain(cfg)
            with torch.device("meta"):
                solo_checked(method_class(cfg.method, cfg.iclmsr.enabled), cfg)
        return
    cfg = prepare_pretrain(cfg)
    with torch.device("meta"):
        model = solo_checked(method_class(cfg.method, cfg.iclmsr.enabled), cfg)
    assert model.cfg.method == path.stem.replace("barlow", "barlow_twins").split("_vit")[0] \
        or model.cfg.method in path.stem
    assert hasattr(model, "msr") == enabled


def _tiny_overrides(folder: Path, name: str) -> list:
    """Small CPU sizes for the method's heads, prototypes, queues and whitening."""
    cfg = compose(str(folder), name, ["++wandb.enabled=False"])
    out = []
    for key, value in cfg.method_kwargs.items():
        if key.endswith("_dim"):
            out.append(f"method_kwargs.{key}={8 if cfg.method == 'wmse' and key == 'proj_output_dim' else 64}")
        elif key == "num_prototypes":
            out.append(f"method_kwargs.{key}=" + ("[8,8]" if not isinstance(value, int) else "16"))
        elif key == "queue_size":
            out.append(f"method_kwargs.{key}=64")
        elif key == "whitening_size":
            out.append(f"method_kwargs.{key}=16")
    return out


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_solo_cifar_config_trains_one_step_with_iclmsr(name, solo_scripts, fake_cifar, tmp_path,
                                                       capsys):
    """scripts/pretrain/cifar/<method>.yaml, unchanged, with ICL-MSR on and small CPU overrides:
    one training step and a checkpoint written by solo's Checkpointer."""
    folder = solo_scripts / "pretrain" / "cifar"
    file = SCRIPT_NAMES.get(name, name)
    code = cli.main([
        "pretrain", "--config-path", str(folder), "--config-name", file, "++iclmsr.enabled=true",
        f"data.train_path={fake_cifar}", f"data.val_path={fake_cifar}", "data.num_workers=0",
        "optimizer.batch_size=16", "max_epochs=1", "++limit_train_batches=1",
        "++limit_val_batches=1", "devices=1", "accelerator=cpu", "precision=32", "strategy=auto",
        "sync_batchnorm=False", "++wandb.enabled=False", "++scheduler.warmup_epochs=0",
        "++enable_progress_bar=False", "++diagnostics.images=16",
        "++iclmsr.n_strata=2", "++iclmsr.msr_width=8", "++iclmsr.msr_depth=2",
        *_tiny_overrides(folder, file)])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    checkpoints = list((tmp_path / "trained_models").glob("*/*/*.ckpt"))
    assert len(checkpoints) == 1, out
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert state["global_step"] == 1
    assert any(k.startswith("msr.") for k in state["state_dict"]) and "iclmsr_optimizer" in state
    assert (checkpoints[0].parent / "args.json").is_file()
    assert (checkpoints[0].parent / "metrics.csv").is_file()


def test_solo_cifar_simclr_at_its_16_mixed_with_a_real_scaler(solo_scripts, fake_cifar, tmp_path,
                                                              capsys):
    """scripts/pretrain/cifar/simclr.yaml with its ``precision: 16-mixed`` kept: on a CPU a real
    float16 GradScaler (at torch's initial scale, which overflows on the first steps), not
    Lightning's silent bf16. Exit 0, finite metrics, the skipped meta steps in metrics.csv
    (a tiny timm backbone for the CPU's sake)."""
    import csv
    import math

    folder = solo_scripts / "pretrain" / "cifar"
    assert compose(str(folder), "simclr", []).precision == "16-mixed"
    code = cli.main([
        "pretrain", "--config-path", str(folder), "--config-name", "simclr",
        "++iclmsr.enabled=true", f"data.train_path={fake_cifar}", f"data.val_path={fake_cifar}",
        "data.num_workers=0", "optimizer.batch_size=8", "max_epochs=1", "backbone.name=test_resnet",
        "++limit_val_batches=1", "devices=1", "accelerator=cpu", "strategy=auto",
        "sync_batchnorm=False", "++wandb.enabled=False", "++scheduler.warmup_epochs=0",
        "++enable_progress_bar=False", "++diagnostics.images=16", "++iclmsr.n_strata=2",
        "++iclmsr.msr_width=8", "++iclmsr.msr_depth=2", *_tiny_overrides(folder, "simclr")])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    (checkpoint,) = (tmp_path / "trained_models").glob("*/*/*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    counts = state["iclmsr_meta_counts"]
    assert counts["skipped"] >= 1 and counts["taken"] >= 1 and sum(counts.values()) == 5
    assert all(torch.isfinite(v).all() for k, v in state["state_dict"].items() if k.startswith("msr."))
    with open(checkpoint.parent / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}
    assert logged["train_meta_skipped"] == counts["skipped"]
    assert all(math.isfinite(v) for v in logged.values()), logged
