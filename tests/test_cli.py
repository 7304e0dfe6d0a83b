"""The solo-iclmsr command: errors in one line, NaN guard, and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "pretrain" / "builtin" / "simclr.yaml")
# A run of a few seconds per epoch: 256 tiny images, batch 32 (8 steps per epoch).
TINY = ["backbone.name=test_resnet", "optimizer.batch_size=32", "optimizer.lr=0.1",
        "scheduler.warmup_epochs=0", "+data.kwargs.n_train=256", "+data.kwargs.n_test=64",
        "data.num_workers=0", "method_kwargs.proj_hidden_dim=32", "method_kwargs.proj_output_dim=16",
        "iclmsr.n_strata=2", "iclmsr.msr_width=8", "iclmsr.msr_depth=2"]


def _cli(*args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", SOLO_ICLMSR_CACHE=str(Path(cwd) / "cache"))
    return subprocess.run([sys.executable, "-m", "solo_iclmsr.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_unknown_key_is_one_line_naming_the_nearest(tmp_path):
    result = _cli("pretrain", "--config", CONFIG, "+optimzer.lr=0.1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "optimzer" in result.stderr and "optimizer" in result.stderr


def test_unknown_method_is_one_line(tmp_path):
    result = _cli("pretrain", "--config", CONFIG, "method=simclrr", cwd=tmp_path)
    assert result.returncode == 2 and "simclr" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_missing_dataset_names_the_path(tmp_path):
    config = str(REPO / "configs" / "pretrain" / "cifar10" / "simclr.yaml")
    result = _cli("pretrain", "--config", config, f"data.train_path={tmp_path / 'nowhere'}",
                  "backbone.name=test_resnet", cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere" in result.stderr and result.stderr.strip().count("\n") == 0


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    args = ["pretrain", "--config", CONFIG, *TINY, "max_epochs=1", "name=nan", "--output-dir", "runs"]
    assert _cli(*args, cwd=tmp_path).returncode == 0
    last = tmp_path / "runs" / "nan" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    # Resume for a second epoch with a regularizer weight that overflows float32 at once.
    result = _cli(*args[:-4], "max_epochs=2", "iclmsr.lambda_msr=1e39", "name=nan",
                  "--output-dir", "runs", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the training loss became") and "at step" in line
    assert last.read_bytes() == before


def test_killed_run_resumes_to_the_same_number_of_steps(tmp_path):
    args = ["pretrain", "--config", CONFIG, *TINY, "max_epochs=3", "--output-dir", "runs"]
    straight = _cli(*args, "name=straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = json.loads((tmp_path / "runs" / "straight" / "done.json").read_text())

    env = dict(os.environ, OMP_NUM_THREADS="1", SOLO_ICLMSR_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "solo_iclmsr.cli", *args, "name=killed"]
    process = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = tmp_path / "runs" / "killed" / "checkpoints" / "epoch=000.ckpt"
    deadline = time.time() + 300
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "runs" / "killed" / "done.json").exists()

    resumed = _cli(*args, "name=killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = json.loads((tmp_path / "runs" / "killed" / "done.json").read_text())
    assert done["global_step"] == expected["global_step"] == 3 * (256 // 32)
