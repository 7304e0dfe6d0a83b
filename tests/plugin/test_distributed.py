"""ICL-MSR on several processes as on one: 2 CPU processes (gloo), each with B images, against 1
process with the same 2B images, same seeds: L_method, L_msr, the stage-1 gradients and f_msr's
meta-gradient agree in float64 (SimCLR's gathered negatives, BYOL, MoCo v2+'s queue), for
every exact implementation of the meta step and the finite differences."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_equivalence import one_process, two_processes

SUPPORT = Path(__file__).resolve().parents[1] / "support"
TINY = ["backbone.name=test_resnet", "++data.builtin.n_train=64", "++data.builtin.n_test=16",
        "++data.builtin.image_size=16", "augmentations.0.crop_size=16", "data.num_workers=0",
        "++scheduler.warmup_epochs=0", "method_kwargs.proj_hidden_dim=32",
        "method_kwargs.proj_output_dim=16", "iclmsr.n_strata=2", "iclmsr.msr_width=4",
        "iclmsr.msr_depth=1", "accelerator=cpu", "iclmsr.enabled=true", "max_epochs=2",
        "auto_resume.enabled=False", "++enable_progress_bar=False", "++diagnostics.images=8",
        "++diagnostics.every_n_steps=3", "++limit_val_batches=0"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12, msg=what)


@pytest.mark.parametrize("method, iclmsr", [
    ("simclr", {}),
    ("simclr", {"exact_impl": "double_backward"}),
    ("simclr", {"meta_grad": "finite_difference", "uni_over": "batch"}),
    ("byol", {}),
    ("mocov2plus", {}),
])
def test_two_processes_compute_what_one_process_computes_on_the_whole_batch(
        method, iclmsr, tmp_path):
    two = two_processes(method, _port(), str(tmp_path / "rank0.pt"), iclmsr)
    one = one_process(method, iclmsr)
    assert two["l_to"] == pytest.approx(one["l_to"], rel=1e-10)
    assert two["l_msr"] == pytest.approx(one["l_msr"], rel=1e-10)
    assert two["grads"].keys() == one["grads"].keys()
    for name, grad in one["grads"].items():
        _close(two["grads"][name], grad, f"stage-1 gradient of {name}")
    meta_norm = torch.cat([g.reshape(-1) for g in one["meta"].values()]).norm()
    assert meta_norm > 0
    for name, grad in one["meta"].items():
        _close(two["meta"][name], grad, f"meta-gradient of msr.{name}")


def _pretrain(folder: Path, *overrides: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1",
               SOLO_ICLMSR_CACHE=str(folder.parent / "cache"),
               PYTHONPATH=os.pathsep.join([str(SUPPORT.parents[1]), str(SUPPORT),
                                           os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(SUPPORT / "ddp_pretrain.py"), str(folder),
                             *TINY, *overrides], env=env, capture_output=True, text=True,
                            timeout=900, cwd=folder.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    (checkpoint,) = sorted(folder.glob("simclr/*/*ep=1.ckpt"))
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def test_a_ddp_pretrain_on_two_processes_ends_where_one_process_ends(tmp_path):
    """``solo-iclmsr pretrain`` with strategy=ddp devices=2 (batch 8 each) against devices=1
    (batch 16), BatchNorm in eval mode on both (DDP refuses SyncBatchNorm on CPU modules): the
    same parameters of f, f_ph, f_msr and the same f_msr optimizer state after 8 steps with
    ICL-MSR's meta step every step."""
    two = _pretrain(tmp_path / "two", "devices=2", "++strategy=ddp", "optimizer.batch_size=8")
    one = _pretrain(tmp_path / "one", "devices=1", "optimizer.batch_size=16")
    assert two["global_step"] == one["global_step"] == 8
    state2, state1 = two["state_dict"], one["state_dict"]
    assert state2.keys() == state1.keys() and any(k.startswith("msr.") for k in state1)
    for name, value in state1.items():
        if value.is_floating_point():
            torch.testing.assert_close(state2[name], value, rtol=1e-4, atol=1e-5, msg=name)
    adam2, adam1 = two["iclmsr_optimizer"]["state"], one["iclmsr_optimizer"]["state"]
    assert adam2.keys() == adam1.keys()
    for key in adam1:
        torch.testing.assert_close(adam2[key]["exp_avg"], adam1[key]["exp_avg"], rtol=1e-3,
                                   atol=1e-7)


@pytest.mark.parametrize("training", [True, False])
def test_sync_batch_norm_inside_the_meta_step_is_torchs_on_one_process(training):
    """``sync_batch_norm_forward`` (SyncBatchNorm in the meta step) on one process: torch's batch
    norm, its output, its gradient and its running statistics (momentum, unbiased variance)."""
    from solo_iclmsr.plugin.second_order import sync_batch_norm_forward

    torch.manual_seed(0)
    ours, reference = torch.nn.SyncBatchNorm(3).double(), torch.nn.BatchNorm2d(3).double()
    for norm in (ours, reference):
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
        norm.running_mean.fill_(0.2)
        norm.running_var.fill_(1.3)
        norm.train(training)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y, y_ref = sync_batch_norm_forward(ours, x), reference(x)
    _close(y, y_ref, "output")
    w = torch.randn_like(y)
    _close(torch.autograd.grad((y * w).sum(), x)[0], torch.autograd.grad((y_ref * w).sum(), x)[0],
           "gradient")
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, key), getattr(reference, key), msg=key)
