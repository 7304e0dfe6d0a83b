"""A 2-process DDP run (gloo, CPU): every parameter of f, f_ph and f_msr ends identical on both
ranks, and f_msr was trained; under 16-mixed with an overflow on one rank, both ranks skip that
meta step and nothing waits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "ddp_fit.py"


def _fit_two_ranks(tmp_path, method, *options):
    repo = str(SCRIPT.parents[2])
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(SCRIPT), method, str(tmp_path), *options],
                            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_ddp_two_ranks_stay_identical(method, tmp_path):
    ranks = _fit_two_ranks(tmp_path, method)
    assert ranks[0]["msr_steps"] == ranks[1]["msr_steps"] == 3
    p0, p1 = ranks[0]["params"], ranks[1]["params"]
    assert p0.keys() == p1.keys() and any(k.startswith("msr.") for k in p0)
    for name in p0:
        assert torch.equal(p0[name], p1[name]), f"{name} differs between ranks"


def test_an_overflow_on_one_rank_skips_the_meta_step_on_both(tmp_path):
    """16-mixed with a real GradScaler, an inf in rank 0's gradients at step 1: both ranks skip
    that meta step (no collective left waiting: the run ends), take the two others, and f_msr
    stays finite and identical on both ranks."""
    ranks = _fit_two_ranks(tmp_path, "simclr", "overflow")
    for rank in ranks:
        assert rank["counts"] == {"taken": 2, "skipped": 1, "refused": 0}
        assert all(torch.isfinite(v).all() for v in rank["params"].values())
    p0, p1 = ranks[0]["params"], ranks[1]["params"]
    for name in (n for n in p0 if n.startswith("msr.")):
        assert torch.equal(p0[name], p1[name]), f"{name} differs between ranks"
