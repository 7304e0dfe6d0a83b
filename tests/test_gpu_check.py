"""benchmarks/gpu_check.py: its quick CPU mode runs every part through the code path of the GPU
run (solo's CIFAR SimCLR and BYOL configs through ``solo-iclmsr pretrain`` on the built-in set,
the meta step's cost and fidelity parts, the augmentation benchmark) and writes a report with
every part."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from solo_source import SKIP_REASON, solo_source

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_full_check_is_refused_without_a_gpu_and_parts_are_checked():
    gpu_check = _module()
    with pytest.raises(SystemExit, match="--device cpu --quick"):
        gpu_check.parse_args(["--device", "cpu"])
    with pytest.raises(SystemExit, match="unknown nope"):
        gpu_check.parse_args(["--device", "cpu", "--quick", "--parts", "pretrain,nope"])
    # the GPU run's sizes: solo's batch 256 and a few hundred steps, the meta step at batch 256
    overrides = gpu_check.pretrain_overrides("cuda", False, "simclr", Path("ckpt"))
    assert "accelerator=gpu" in overrides and "data.dataset=builtin" in overrides
    assert not any(o.startswith(("optimizer.batch_size", "backbone.name", "precision"))
                   for o in overrides)
    assert "256" in gpu_check.cost_argv("cuda", False)


def test_quick_cpu_run_writes_every_part(tmp_path):
    source = solo_source()
    if source is None:
        pytest.skip(SKIP_REASON)
    env = dict(os.environ, SOLO_ICLMSR_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device",
                           "cpu", "--quick", "--out", str(out), "--solo-source", str(source)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = (out / "gpu_check.md").read_text()
    for heading in ("## (a) solo-learn's CIFAR configs", "## (b) Cost of the meta step",
                    "## (b) Fidelity of the autocast meta step", "## (c) Augmentation throughput"):
        assert heading in report, report
    assert "Failed" not in report and "Not run" not in report, report
    assert "* device: CPU only" in report and "torch " in report and "CUDA" in report
    # (a): both configs, every arm, finite, with the commands that rerun them
    for config in ("simclr", "byol"):
        for arm in ("base", "iclmsr", "iclmsr_autocast"):
            row = next(line for line in report.splitlines()
                       if line.startswith(f"| {config} | {arm} |"))
            assert "| yes |" in row, row
        assert f"--config-name {config} ++iclmsr.enabled=true" in report
    assert report.count("solo-iclmsr pretrain --config-path SOLO/scripts/pretrain/cifar") == 6
    # (b): the meta step in float32 and under autocast, and its fidelity against float32
    assert "| exact_jvp | 4 | autocast |" in report and "| exact_jvp | 1 | float32 |" in report
    assert "| sgd | exact_autocast_bf16 | total |" in report
    assert "python benchmarks/meta_step.py --parts cost" in report
    # (c): the project's ops against Kornia at 32 and 224 px on the device
    assert "| 32 px |" in report and "| 224 px |" in report
    assert "python benchmarks/augment.py" in report
