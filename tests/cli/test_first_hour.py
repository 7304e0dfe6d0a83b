"""The user's first hour: bad input ends with one line on stderr, exit code 2, and nothing that
was already written is touched."""

import hashlib
import os
from pathlib import Path

import pytest
import torch
from fake_data import write_image_folder

from solo_iclmsr import cli

REPO = Path(__file__).resolve().parents[2]
BUILTIN = ["--config-path", str(REPO / "configs" / "pretrain" / "builtin"), "--config-name", "simclr"]
# 64 images of 16 px, batch 16: a few seconds per epoch.
TINY = ["backbone.name=test_resnet", "optimizer.batch_size=16", "++data.builtin.n_train=64",
        "++data.builtin.n_test=32", "++data.builtin.image_size=16",
        "augmentations.0.crop_size=16", "data.num_workers=0", "++scheduler.warmup_epochs=0",
        "method_kwargs.proj_hidden_dim=32", "method_kwargs.proj_output_dim=16",
        "iclmsr.n_strata=2", "iclmsr.msr_width=4", "iclmsr.msr_depth=1", "accelerator=cpu",
        "max_epochs=1", "++enable_progress_bar=False", "++diagnostics.images=16",
        "iclmsr.enabled=true"]


def _run(capsys, *args):
    code = cli.main(["pretrain", *BUILTIN, *TINY, *args])
    out, err = capsys.readouterr()
    return code, err.strip()


def _one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_corrupted_checkpoint(tmp_path, capsys):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive" * 10)
    before = _digest(bad)
    code, err = _run(capsys, f"++resume_from_checkpoint={bad}")
    _one_line_error(code, err, "resume_from_checkpoint", "cannot be read", "corrupted")
    assert _digest(bad) == before


def test_a_foreign_checkpoint(tmp_path, capsys):
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}, "epoch": 0}, foreign)
    before = _digest(foreign)
    code, err = _run(capsys, f"++resume_from_checkpoint={foreign}")
    _one_line_error(code, err, "does not fit this model", "another method, backbone or config")
    assert _digest(foreign) == before


class Payload:
    """An object whose unpickling would run code: refused by torch.load(weights_only=True)."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_checkpoint_that_would_run_code(tmp_path, capsys):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, evil)
    code, err = _run(capsys, f"++resume_from_checkpoint={evil}")
    _one_line_error(code, err, "would run code", "weights_only")


def test_a_missing_checkpoint(tmp_path, capsys):
    code, err = _run(capsys, f"++resume_from_checkpoint={tmp_path / 'nowhere.ckpt'}")
    _one_line_error(code, err, "does not exist")


def test_an_unreadable_image_in_a_custom_folder(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "images", classes=2, per_class=8, size=16)
    broken = folder / "class1" / "3.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    code, err = _run(capsys, "data.dataset=custom", f"data.train_path={folder}")
    _one_line_error(code, err, str(broken), "remove or replace it")
    assert not (tmp_path / "trained_models").exists()  # refused before training started


def test_a_dataset_smaller_than_one_batch(tmp_path, capsys):
    code, err = _run(capsys, "++data.builtin.n_train=10")
    _one_line_error(code, err, "fewer than one batch", "optimizer.batch_size=16")
    assert not (tmp_path / "trained_models").exists()


def test_a_warm_up_that_never_ends(tmp_path, capsys):
    code, err = _run(capsys, "max_epochs=2", "++scheduler.warmup_epochs=10")
    _one_line_error(code, err, "scheduler.warmup_epochs=10", "max_epochs=2", "warmup_epochs=0")


@pytest.mark.parametrize("override, needles", [
    ("method=simclrr", ["method='simclrr' is unknown", "Did you mean 'simclr'"]),
    ("++iclmsr.n_strat=3", ["iclmsr.n_strat is an unknown key", "'n_strata'"]),
    ("iclmsr.n_strata=many", ["iclmsr.n_strata='many' is invalid"]),
    ("iclmsr.n_strata=0", ["iclmsr.n_strata=0 is invalid: expected a value >= 1"]),
    ("iclmsr.meta_grad=exactly", ["iclmsr.meta_grad='exactly' is invalid", "linearized"]),
    ("backbone.name=resnet1888", ["backbone.name='resnet1888' is unknown", "resnet18"]),
    ("max_epoch=3", ["Could not override 'max_epoch'"]),
    ("max_epochs==3", ["Error parsing override"]),
    ("++data.builtin.rhoo=0.5", ["data.builtin.rhoo is an unknown key", "'rho'"]),
    ("++diagnostics.masks=png", ["diagnostics.masks='png' is invalid"]),
    ("method=mae_iclmsr", ["has no ICL-MSR variant: MAE"]),
])
def test_a_malformed_config(override, needles, capsys):
    code, err = _run(capsys, override)
    _one_line_error(code, err, *needles)


def test_an_unknown_config_name(capsys):
    code = cli.main(["pretrain", "--config-path", BUILTIN[1], "--config-name", "simclrr"])
    _one_line_error(code, capsys.readouterr().err.strip(), "simclrr", "Did you mean 'simclr'")


def test_a_missing_dataset_that_cannot_be_downloaded(tmp_path, capsys, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    code, err = _run(capsys, "data.dataset=cifar10", f"data.train_path={tmp_path / 'nowhere'}",
                     f"data.val_path={tmp_path / 'nowhere'}")
    _one_line_error(code, err, "data.train_path=", "nowhere", "could not be fetched")


def test_a_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, capsys):
    assert _run(capsys, "name=nan")[0] == 0
    (checkpoint,) = (tmp_path / "trained_models" / "simclr").glob("*/*.ckpt")
    before = _digest(checkpoint)
    # Resume for a second epoch with a regularizer weight that overflows float32 at once.
    code, err = _run(capsys, "name=nan", "max_epochs=2", "iclmsr.lambda_msr=1e39",
                     f"++resume_from_checkpoint='{checkpoint}'")  # quoted: the name has '='
    _one_line_error(code, err, "the training loss became", "(epoch 1, batch 0)", "lower optimizer.lr")
    assert _digest(checkpoint) == before
