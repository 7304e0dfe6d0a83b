"""Cost and fidelity of ICL-MSR's meta step, side by side, in one run.

Part 1, cost: time per step and peak memory of every arm over the plain SimCLR step (``base``):

* ``base``: the SimCLR step; ``stage1``: L_to = L_ct + lambda L_msr with A detached, no meta step;
* ``exact_jvp`` / ``exact_double_backward``: ``meta_grad: second_order`` with ``exact_impl``
  jvp / double_backward;
* ``finite_difference``: v at theta', J_f w by central differences (two encoder forwards without
  autograd);
* ``linearized``: v0 = grad L_ct(theta) instead of grad L_ct(theta'), taken in stage 1 from the
  stage-1 graph (``torch.autograd.grad(l_ct, params, retain_graph=True)`` before the backward,
  only on meta batches, counted in the arm's time), passed as ``PlainGrads``;
* ``stages1`` / ``stages2``: the exact step (jvp) with the virtual step on the last 1 / 2 stages
  of the encoder (``iclmsr.meta_stages``): the activations entering them are recorded in the
  training step's forward (``plugin.truncation.EncoderTail``), the pass at theta' and the jvp run
  through those stages only;
* ``batch25`` / ``batch50``: the exact step with the meta objective and its jvp on a random
  quarter / half of the batch (``iclmsr.meta_batch``);
* ``stages1_batch25`` / ``stages1_batch50``: both;

each meta arm with meta_every 1 and 4. The meta step reuses the stage-1 gradient
(``collect_grads(..., copy=False)`` before ``optimizer.step()``).

Mixed precision (``--amp``, ``--meta-precision``): with ``--amp float16`` (or ``bfloat16``) every
arm's training step runs under autocast to that dtype, float16 with a GradScaler as Lightning's
``16-mixed`` runs it (scaled backward, the gradients unscaled before the meta step, no meta step
and no optimizer step on gradients that are not finite); f_msr runs in float32. The meta step
runs outside that region, at each ``iclmsr.meta_precision`` of ``--meta-precision``: ``float32``
(the default) or ``autocast`` (the passes of its L_ct(theta') part under the training step's
dtype; float16 with a ``MetaLossScale``, as the plugin keeps one). ``--meta-precision autocast``
without ``--amp`` trains under float16 autocast on CUDA and bfloat16 on a CPU.

Config (the benchmark config): timm resnet18 with the CIFAR stem (3x3 conv stride 1, no max-pool),
32 px, batch 64, n = 8 strata, SimCLR projector 512 -> 2048 -> 256, temperature 0.2, mixture
L_msr, f_msr at its defaults (4 conv-BN-ReLU blocks of width 64) with Adam. The real optimizer is
solo-learn's SimCLR recipe: LARS (momentum 0.9, eta 0.02, clip_lr, exclude_bias_n_norm, weight
decay 1e-4), lr 0.4 * batch / 256 with a warm-up cosine schedule; the virtual step is ``sgd``
with alpha = lr unless ``--virtual-step optimizer``. LARS is solo-learn's own class. Data: the
project's built-in dataset (``solo_iclmsr.data.load_builtin``), two random resized crops (scale 0.4-1)
with horizontal flips made in torch; f_msr reads the un-augmented image.

Time: all arms are built in one process and timed interleaved: in each round every arm runs one
period of 4 steps (a whole period of meta_every 1 and 4), so a disturbance from other processes
hits all arms alike. Reported: the mean wall-clock seconds per step over the rounds and the best
round (wall clock; on CUDA the time between two CUDA events recorded around the period; and the
process's CPU time); ratios to
the base step use the best round, the least disturbed estimate on a shared machine.

Memory: every arm runs in a fresh subprocess (while the fidelity part runs; memory does not
depend on the load). On CUDA, torch.cuda.max_memory_allocated minus the memory allocated before
the first step; on CPU, the peak resident set size (VmHWM) minus the resident set size before the
first step, with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``) so that
freed tensors leave the resident set at once: the peak then follows the tensors alive at the
peak (repeat runs agree to about 1 MiB) instead of what the heap kept (tens of MiB of noise).

Part 2, fidelity: a real training run (the recipe's LARS updates the model between the measured
steps; f_msr is trained by the exact meta-gradient with the ``sgd`` virtual step). At every step,
at the same parameters and on the same batch, the meta-gradient that lands on f_msr's parameters
is computed by every arm, for ``virtual_step: sgd`` (alpha = the current lr) and
``virtual_step: optimizer`` (the update LARS would take), and compared with ``exact_jvp`` in
float32 (the reference): cosine and relative error, median and worst over the steps, for the
whole gradient (L_ct(theta') part + gamma L_uni part) and for its L_ct(theta') part alone (the
only part the modes differ in). On the first step the reference is also compared with a float64
``exact_double_backward``. The run also reports ||real update|| / ||alpha g|| and the cosine of
the real update with -alpha g (g = grad L_to, the stage-1 gradient), and checks that the
``optimizer`` virtual step reproduces the real update. The learning rate follows the recipe's
warm-up cosine, compressed: ``--fid-warmup`` steps of linear warm-up, then a cosine over
``--fid-horizon`` steps, so the measured steps see the warm-up and the peak rate.

The meta step under autocast (``--fid-arms exact_autocast_bf16,exact_autocast_fp16``):
``exact_jvp`` with ``meta_precision: autocast`` at the same parameters, on the same batch and
with the same stage-1 gradient as the float32 reference (the meta-gradient is sensitive to that
gradient, which the plugin reuses from the training step), its passes under bfloat16 /
float16 autocast (``torch.autocast("cpu", ...)`` on a CPU); float16 with the plugin's dynamic
``MetaLossScale`` (from its initial value, one per arm and virtual step). A meta-gradient that
is not finite is counted, as the plugin refuses it, and left out of the comparison. On CUDA
the float32 arms run without TF32. float16 autocast is very slow on a CPU without float16
arithmetic (ResNet-18: minutes per meta step).

Usage:
    python benchmarks/meta_step.py                         # both parts, the benchmark config
    python benchmarks/meta_step.py --quick                 # batch 16, few steps: a smoke test
    python benchmarks/meta_step.py --parts fidelity --fid-models test_resnet
    python benchmarks/meta_step.py --profile exact_jvp     # torch.profiler table of one step
    python benchmarks/meta_step.py --parts cost --arms base,exact_jvp --amp float16 \
        --meta-precision float32,autocast                  # the meta step under autocast
    python benchmarks/meta_step.py --parts fidelity --fid-models test_resnet \
        --fid-arms exact_autocast_bf16,exact_autocast_fp16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solo_iclmsr.core import (ICLMSROptions, MetaSemanticRegularizer, PlainGrads,  # noqa: E402
                              collect_grads, infonce_head_loss, meta_step, optimizer_step,
                              sgd_step, total_loss, uniformity_loss)
from solo_iclmsr.core.meta_precision import MetaLossScale  # noqa: E402

ARMS: Dict[str, dict] = {
    "base": dict(stage1=False, meta_grad=None),
    "stage1": dict(stage1=True, meta_grad=None),
    "exact_jvp": dict(stage1=True, meta_grad="second_order", exact_impl="jvp"),
    "exact_double_backward": dict(stage1=True, meta_grad="second_order",
                                  exact_impl="double_backward"),
    "finite_difference": dict(stage1=True, meta_grad="finite_difference"),
    "linearized": dict(stage1=True, meta_grad="linearized"),
    "stages1": dict(stage1=True, meta_grad="second_order", meta_stages=1),
    "stages2": dict(stage1=True, meta_grad="second_order", meta_stages=2),
    "batch25": dict(stage1=True, meta_grad="second_order", meta_batch=0.25),
    "batch50": dict(stage1=True, meta_grad="second_order", meta_batch=0.5),
    "stages1_batch25": dict(stage1=True, meta_grad="second_order", meta_stages=1,
                            meta_batch=0.25),
    "stages1_batch50": dict(stage1=True, meta_grad="second_order", meta_stages=1,
                            meta_batch=0.5),
    # fidelity only: exact_jvp with ``meta_precision: autocast`` (the cost part times that
    # with ``--meta-precision autocast``)
    "exact_autocast_bf16": dict(stage1=True, meta_grad="second_order", meta_precision="autocast",
                                autocast="bfloat16"),
    "exact_autocast_fp16": dict(stage1=True, meta_grad="second_order", meta_precision="autocast",
                                autocast="float16"),
}
#: the arms that make the meta step cheaper by moving fewer layers or reading fewer images
CHEAP_ARMS = ("stages1", "stages2", "batch25", "batch50", "stages1_batch25", "stages1_batch50")
#: the meta step under autocast, against the float32 reference (fidelity part only)
AUTOCAST_ARMS = ("exact_autocast_bf16", "exact_autocast_fp16")
META_ARMS = [a for a, spec in ARMS.items() if spec["meta_grad"] is not None]
COST_ARMS = [a for a in ARMS if a not in AUTOCAST_ARMS]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
REFERENCE = "exact_jvp"

#: per encoder: projector (hidden, out) and f_msr (depth, width). resnet18 uses solo-learn's
#: SimCLR projector and f_msr's defaults; test_resnet (96 channels) the small CPU settings of
#: benchmarks/evidence.py.
MODELS: Dict[str, dict] = {
    "resnet18": dict(proj=(2048, 256), msr=(4, 64)),
    "test_resnet": dict(proj=(512, 128), msr=(3, 32)),
}

# solo-learn's SimCLR recipe (scripts/pretrain/cifar/simclr.yaml), weight decay as stated above.
LARS_KWARGS = dict(momentum=0.9, eta=0.02, clip_lr=True, exclude_bias_n_norm=True,
                   weight_decay=1e-4)
BASE_LR, LR_BATCH = 0.4, 256
WARMUP_START_LR = 3e-5
TEMPERATURE = 0.2

# Targets (met / not met is printed, nothing is tuned to them).
TARGETS = dict(exact_every1=3.0, exact_every4=1.5, cheap_every1=1.6, cheap_every4=1.2,
               cheap_cos_median=0.99, cheap_cos_worst=0.95, memory=1.3,
               autocast_cos_median=0.99)


def parse_args(argv: List[str]) -> argparse.Namespace:
    """Command-line options (``--help`` lists them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="cost,fidelity", help="cost, fidelity or both")
    parser.add_argument("--model", default="resnet18", choices=list(MODELS),
                        help="encoder of the cost part")
    parser.add_argument("--steps", type=int, default=8,
                        help="timed steps per arm (rounded up to a multiple of 4 so that "
                             "meta_every 4 is averaged over whole periods)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n-strata", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda if available")
    parser.add_argument("--arms", default=",".join(COST_ARMS),
                        help="comma-separated subset of the cost part's arms")
    parser.add_argument("--every", default="1,4", help="meta_every values for the meta arms")
    parser.add_argument("--meta-precision", default="float32",
                        help="iclmsr.meta_precision of the cost part's meta arms, comma-separated: "
                             "float32 (the meta step outside autocast), autocast (under the "
                             "training step's autocast dtype; float16 with MetaLossScale)")
    parser.add_argument("--amp", default=None, choices=["none", "float16", "bfloat16"],
                        help="the cost part's training step under autocast to this dtype "
                             "(float16 with a GradScaler, as Lightning's 16-mixed); default: none, "
                             "or float16 on CUDA and bfloat16 on a CPU when --meta-precision "
                             "asks for autocast")
    parser.add_argument("--virtual-step", default="sgd", choices=["sgd", "optimizer"],
                        help="virtual step of the cost part's meta arms")
    parser.add_argument("--fid-models", default="resnet18,test_resnet",
                        help="encoders of the fidelity part, comma-separated")
    parser.add_argument("--fid-steps", type=int, default=20, help="measured training steps")
    parser.add_argument("--fid-batch", default="32,64",
                        help="batch of the fidelity run, one per --fid-models entry (the lr "
                             "follows it: 0.4 * batch / 256)")
    parser.add_argument("--fid-sanity-every", type=int, default=5,
                        help="run the exact_double_backward sanity arm every k steps (it costs "
                             "about five base steps)")
    parser.add_argument("--fid-warmup", type=int, default=4, help="warm-up steps of the lr")
    parser.add_argument("--fid-horizon", type=int, default=200,
                        help="length of the cosine schedule the fidelity run is the start of")
    parser.add_argument("--fid-arms", default=",".join(a for a in META_ARMS
                                                       if a not in AUTOCAST_ARMS),
                        help="meta arms compared in the fidelity part (the reference is always "
                             "run); the meta step under autocast: exact_autocast_bf16, "
                             "exact_autocast_fp16 (float16 autocast is slow on a CPU without "
                             "float16 arithmetic)")
    parser.add_argument("--fid-vsteps", default="sgd,optimizer",
                        help="virtual steps of the fidelity part: sgd, optimizer or both")
    parser.add_argument("--fid-json", default=None, help="write every per-step number here")
    parser.add_argument("--n-train", type=int, default=2048, help="built-in images to draw from")
    parser.add_argument("--quick", action="store_true",
                        help="batch 16, 4 timed steps, 3 fidelity steps: checks every arm runs")
    parser.add_argument("--profile", default=None, choices=list(ARMS),
                        help="print a torch.profiler table of one step of this arm and exit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.fid_steps, args.fid_sanity_every = 16, 4, 1, 3, 2
        args.fid_batch = ",".join(["16"] * len(args.fid_models.split(",")))
    args.steps = -(-args.steps // 4) * 4
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.precisions = [p for p in args.meta_precision.split(",") if p]
    unknown = [p for p in args.precisions if p not in ("float32", "autocast")]
    if unknown or not args.precisions:
        raise SystemExit(f"--meta-precision: expected float32 and/or autocast, got "
                         f"{args.meta_precision!r}")
    if args.amp is None:
        args.amp = "none"
        if "autocast" in args.precisions:
            args.amp = "float16" if args.device == "cuda" else "bfloat16"
    if "autocast" in args.precisions and args.amp == "none":
        raise SystemExit("--meta-precision autocast needs a training step under autocast: "
                         "--amp float16 or bfloat16")
    return args


def amp_dtype(args: argparse.Namespace) -> Optional[torch.dtype]:
    """The autocast dtype of the cost part's training step (``None``: float32)."""
    return DTYPES.get(args.amp)


# --------------------------------------------------------------------------------------------
# The recipe's optimizer and schedule
# --------------------------------------------------------------------------------------------

def lars_class() -> Tuple[type, str]:
    """solo-learn's LARS (the optimizer of its recipes) and how the report names it."""
    from solo.utils.lars import LARS

    return LARS, "solo-learn's LARS (solo.utils.lars)"


def recipe_lr(batch: int) -> float:
    """Peak learning rate of the recipe: 0.4 * batch / 256."""
    return BASE_LR * batch / LR_BATCH


def warmup_cosine(step: int, warmup: int, horizon: int, peak: float,
                  start: float = WARMUP_START_LR, end: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup`` steps, then a cosine to ``end``
    over the rest of ``horizon`` steps (solo-learn's per-step warm-up cosine)."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = (step - warmup) / max(1, horizon - warmup)
    return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * min(progress, 1.0)))


# --------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------

class BatchSource:
    """Batches of the built-in dataset: the raw image (f_msr's input) and two views, random
    resized crops (area 0.4-1, aspect 3/4-4/3, bilinear) with horizontal flips, made in torch
    from a seeded generator; normalised by the data's per-channel mean and std."""

    def __init__(self, n_train: int, size: int, device: torch.device, seed: int = 0) -> None:
        from solo_iclmsr.data import BuiltinSpec, load_builtin

        full = load_builtin(BuiltinSpec(image_size=size, n_train=n_train, n_test=16), "train")
        images = torch.from_numpy(full["full"]).float().div_(255.0)
        mean = images.mean(dim=(0, 2, 3), keepdim=True)
        std = images.std(dim=(0, 2, 3), keepdim=True)
        self.images = ((images - mean) / std).to(device)
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, batch_size: int) -> Tuple[Tensor, List[Tensor]]:
        """(raw images, [view 1, view 2]) of ``batch_size`` random images."""
        index = torch.randint(len(self.images), (batch_size,), generator=self.generator)
        raw = self.images[index.to(self.images.device)]
        return raw, [self._crop(raw), self._crop(raw)]

    def _crop(self, raw: Tensor) -> Tensor:
        b, g = raw.shape[0], self.generator
        area = torch.empty(b).uniform_(0.4, 1.0, generator=g)
        ratio = torch.exp(torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
        w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        grid = F.affine_grid(theta.to(raw.device), list(raw.shape), align_corners=False)
        return F.grid_sample(raw, grid, mode="bilinear", padding_mode="reflection",
                             align_corners=False)


def build_encoder(name: str) -> nn.Module:
    """timm ``name`` without classifier, with the CIFAR stem: the first conv 3x3 stride 1
    (a deep stem keeps its other convs) and no max-pool."""
    import timm

    model = timm.create_model(name, num_classes=0)
    stem = model.conv1
    first = stem if isinstance(stem, nn.Conv2d) else stem[0]
    replacement = nn.Conv2d(first.in_channels, first.out_channels, kernel_size=3, stride=1,
                            padding=1, bias=first.bias is not None)
    if isinstance(stem, nn.Conv2d):
        model.conv1 = replacement
    else:
        stem[0] = replacement
    model.maxpool = nn.Identity()
    return model


class Setup:
    """Everything one arm or one fidelity run needs: f, f_ph, f_msr, the losses, LARS and Adam,
    the options and a batch source."""

    def __init__(self, args: argparse.Namespace, model: str, batch: int,
                 options: Optional[dict] = None, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.device = torch.device(args.device)
        self.batch_size = batch
        self.encoder = build_encoder(model).to(self.device)
        c = self.encoder.num_features
        hidden, out = MODELS[model]["proj"]
        self.projector = nn.Sequential(nn.Linear(c, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                       nn.Linear(hidden, out)).to(self.device)
        depth, width = MODELS[model]["msr"]
        self.options = ICLMSROptions(n_strata=args.n_strata, msr_depth=depth, msr_width=width,
                                     **(options or {}))
        self.regularizer = MetaSemanticRegularizer(c, args.n_strata, depth, width).to(self.device)
        self.head_loss = infonce_head_loss(self.projector, TEMPERATURE, msr_loss_form="mixture")
        self.params = {**{"encoder." + k: p for k, p in self.encoder.named_parameters()},
                       **{"head." + k: p for k, p in self.projector.named_parameters()}}
        self.lr = recipe_lr(batch)
        lars, self.lars_name = lars_class()
        self.optimizer = lars(list(self.params.values()), lr=self.lr, **LARS_KWARGS)
        self.meta_optimizer = torch.optim.Adam(self.regularizer.parameters(),
                                               lr=self.options.msr_lr)
        self.data = BatchSource(args.n_train, args.size, self.device, seed)
        self.tails: Dict[int, Any] = {}

    def tail(self, stages: int):
        """The last ``stages`` stages of the encoder (``meta_stages``), made once."""
        from solo_iclmsr.plugin.truncation import EncoderTail

        if stages not in self.tails:
            self.tails[stages] = EncoderTail(self.encoder, stages)
        return self.tails[stages]

    def meta_inputs(self, arm: str, views: List[Tensor], activations: Dict[int, List[Tensor]],
                    stage1: Dict[str, Optional[Tensor]], vstep: str) -> dict:
        """What ``meta_step`` takes for ``arm``: the encoder (or its tail) and its inputs, the
        stage-1 gradient keyed by its names, the virtual step and which parameters move."""
        stages = ARMS[arm].get("meta_stages")
        if stages is None:
            return dict(encoder=self.encoder, views=views, stage1_grads=stage1,
                        virtual_step=self.virtual_step(vstep))
        tail = self.tail(stages)
        names = tail.parameter_names()
        renamed = {("encoder.backbone." + k[len("encoder."):] if k.startswith("encoder.") else k): g
                   for k, g in stage1.items()}
        params = {**{"encoder." + n: p for n, p in tail.named_parameters() if n in names},
                  **{k: p for k, p in self.params.items() if k.startswith("head.")}}
        virtual = sgd_step(self.lr) if vstep == "sgd" else optimizer_step(self.optimizer, params)
        return dict(encoder=tail, views=activations[stages], stage1_grads=renamed,
                    virtual_step=virtual, encoder_params=names)

    def forward(self, views: List[Tensor], stages: Sequence[int] = ()
                ) -> Tuple[List[Tensor], Dict[int, List[Tensor]]]:
        """The encoder's features of the views, and the activations at the cut of every tail of
        ``stages`` (recorded by the same forward)."""
        activations: Dict[int, List[Tensor]] = {k: [] for k in stages}
        with contextlib.ExitStack() as stack:
            for k in stages:
                stack.enter_context(self.tail(k).recording(activations[k]))
            features = [self.encoder(x) for x in views]
        return features, activations

    def set_lr(self, lr: float) -> None:
        """The learning rate of every group (the schedule)."""
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def virtual_step(self, kind: str) -> Callable:
        """U of the meta step: ``sgd`` (alpha = the current lr) or ``optimizer`` (LARS's)."""
        return sgd_step(self.lr) if kind == "sgd" else optimizer_step(self.optimizer, self.params)

    def plain_grads(self, l_ct: Tensor) -> PlainGrads:
        """v0 = grad L_ct(theta) from the stage-1 graph (kept for the backward of L_to)."""
        grads = torch.autograd.grad(l_ct, list(self.params.values()), retain_graph=True,
                                    allow_unused=True)
        return PlainGrads(l_ct.detach(), dict(zip(self.params, grads)))


def make_step(s: Setup, arm: str, meta_every: int, virtual_step: str,
              precision: str = "float32", amp: Optional[torch.dtype] = None
              ) -> Callable[[int], None]:
    """One training step of ``arm`` on one fixed batch (data loading is not timed).

    ``amp``: the training step (the forwards and the loss) runs under autocast to this dtype,
    float16 with a GradScaler, as Lightning's ``16-mixed`` runs it: scaled backward, the
    gradients unscaled before the meta step, no meta step and no optimizer step when they are
    not finite. ``precision``: ``iclmsr.meta_precision`` of the meta step, which runs outside
    the training step's autocast region as in the plugin (f_msr in float32); ``autocast`` runs
    the passes of its L_ct(theta') part under ``amp`` (float16: with a ``MetaLossScale``)."""
    spec = ARMS[arm]
    options = ICLMSROptions(**{**s.options.__dict__, "meta_every": meta_every,
                               "meta_grad": spec.get("meta_grad") or "second_order",
                               "exact_impl": spec.get("exact_impl", "jvp"),
                               "meta_stages": spec.get("meta_stages"),
                               "meta_batch": spec.get("meta_batch"),
                               "virtual_step": virtual_step, "meta_precision": precision})
    raw, views = s.data.batch(s.batch_size)
    encoder, projector, head_loss = s.encoder, s.projector, s.head_loss
    stages = [spec["meta_stages"]] if spec.get("meta_stages") else []
    device_type = s.device.type
    scaler = torch.amp.GradScaler(device_type) if amp == torch.float16 else None
    meta_scale = MetaLossScale() if precision == "autocast" and amp == torch.float16 else None

    def autocast() -> Any:
        return torch.autocast(device_type, dtype=amp, enabled=amp is not None)

    def optimizer_step() -> None:
        if scaler is None:
            s.optimizer.step()
        else:
            scaler.step(s.optimizer)
            scaler.update()

    def step(batch_idx: int) -> None:
        s.optimizer.zero_grad(set_to_none=True)
        run_meta = spec["meta_grad"] is not None and options.should_meta_step(batch_idx)
        with autocast():
            features, activations = s.forward(views, stages if run_meta else ())
        if not spec["stage1"]:
            with autocast():
                l_ct, _ = head_loss(features, None)
            (l_ct if scaler is None else scaler.scale(l_ct)).backward()
            optimizer_step()
            return
        with torch.set_grad_enabled(run_meta):  # A keeps its graph only for the meta step
            weights = s.regularizer(raw)  # f_msr in float32, as in the plugin's meta step
        with autocast():
            l_to, l_ct, _ = total_loss(features, weights, head_loss, options.lambda_msr)
        plain = s.plain_grads(l_ct) if run_meta and spec["meta_grad"] == "linearized" else None
        (l_to if scaler is None else scaler.scale(l_to)).backward()
        if scaler is not None:
            scaler.unscale_(s.optimizer)  # as Lightning does before on_before_optimizer_step
        if run_meta and (amp is None or _grads_finite(s.params.values())):
            s.meta_optimizer.zero_grad(set_to_none=True)
            activations = {k: [a.float() for a in acts] for k, acts in activations.items()}
            inputs = s.meta_inputs(arm, views, activations,
                                   collect_grads(encoder, projector, copy=False),  # before step
                                   virtual_step)
            meta_step(inputs.pop("encoder"), projector, s.regularizer, inputs.pop("views"), raw,
                      head_loss, options, plain_grads=plain, weights=weights,
                      generator=torch.Generator().manual_seed(batch_idx),
                      autocast_dtype=amp,
                      loss_scale=None if meta_scale is None else meta_scale.scale, **inputs)
            finite = amp is None or _grads_finite(s.regularizer.parameters())
            if meta_scale is not None:
                meta_scale.update(finite)
            if finite:
                s.meta_optimizer.step()
        optimizer_step()

    return step


def _grads_finite(params: Any) -> bool:
    """Whether every ``.grad`` of ``params`` is finite (one synchronisation)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


# --------------------------------------------------------------------------------------------
# Part 1: cost
# --------------------------------------------------------------------------------------------

def rss_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_worker(args: argparse.Namespace, arm: str, meta_every: int, precision: str) -> dict:
    """Peak memory of one arm, in a fresh process: warm-up and two more steps."""
    s = Setup(args, args.model, args.batch)
    step = make_step(s, arm, meta_every, args.virtual_step, precision, amp_dtype(args))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_kib("VmRSS") * 1024
    for i in range(args.warmup + 2):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if cuda else rss_kib("VmHWM") * 1024
    return dict(arm=arm, meta_every=meta_every, precision=precision,
                peak_delta_mib=(peak - before) / 2**20)


def run_timing(args: argparse.Namespace, plan: List[tuple]) -> Dict[tuple, dict]:
    """All arms in one process, interleaved: round after round, every arm runs one period of
    4 steps, so a disturbance from other processes hits all arms alike. On CUDA the wall time
    of a period is taken by CUDA events recorded around it (the GPU's own clock)."""
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    steps = {}
    for arm, every, precision in plan:
        steps[(arm, every, precision)] = make_step(Setup(args, args.model, args.batch), arm,
                                                   every, args.virtual_step,
                                                   _precision(precision), amp_dtype(args))
        for i in range(args.warmup):
            steps[(arm, every, precision)](i)
    sync()
    walls: Dict[tuple, List[float]] = {key: [] for key in steps}
    cpus: Dict[tuple, List[float]] = {key: [] for key in steps}
    rounds = args.steps // 4
    for r in range(rounds):
        for key, step in steps.items():
            first = args.warmup + 4 * r
            first -= first % 4  # every period starts on a meta batch
            if cuda:
                events = (torch.cuda.Event(enable_timing=True),
                          torch.cuda.Event(enable_timing=True))
                sync()
                events[0].record()
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(first, first + 4):
                step(i)
            if cuda:
                events[1].record()
                events[1].synchronize()
                wall = events[0].elapsed_time(events[1]) / 1000.0
            else:
                wall = time.perf_counter() - start
            walls[key].append(wall / 4)
            cpus[key].append((time.process_time() - start_cpu) / 4)
        print(f"  timing round {r + 1}/{rounds} done", flush=True)
    return {key: dict(mean_s=statistics.mean(walls[key]), step_s=min(walls[key]),
                      cpu_s=min(cpus[key])) for key in steps}


def _precision(precision: str) -> str:
    """The meta step's ``meta_precision`` of a plan entry (``-``: an arm without one)."""
    return "float32" if precision == "-" else precision


def run_profile(args: argparse.Namespace, arm: str) -> None:
    """torch.profiler table of one meta-batch step of ``arm``, then the model passes in it."""
    from torch.profiler import ProfilerActivity, profile

    s = Setup(args, args.model, args.batch)
    step = make_step(s, arm, 1, args.virtual_step, args.precisions[0], amp_dtype(args))
    for i in range(args.warmup):
        step(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        start = time.perf_counter()
        step(0)
        wall = time.perf_counter() - start
    key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    events = prof.key_averages()
    print(events.table(sort_by=key, row_limit=30))
    convs = {name: sum(isinstance(m, nn.Conv2d) for m in module.modules())
             for name, module in (("f", s.encoder), ("f_msr", s.regularizer))}
    by_name = {e.key: e for e in events}
    print(f"one step of {arm}: {wall:.3f} s wall under the profiler; conv layers per pass: "
          f"f {convs['f']}, f_msr {convs['f_msr']}")
    for name in ("aten::mkldnn_convolution", "aten::cudnn_convolution",
                 "aten::convolution_backward", "aten::native_batch_norm"):
        e = by_name.get(name)
        if e is not None:
            print(f"  {name}: {e.count} calls, {e.cpu_time_total / 1e6:.3f} s CPU time "
                  f"({100 * e.cpu_time_total / max(wall * 1e6, 1):.0f} % of the step)")


# --------------------------------------------------------------------------------------------
# Part 2: fidelity
# --------------------------------------------------------------------------------------------

def _flat(tensors: Any) -> Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _reg_grad(reg: nn.Module) -> Tensor:
    return _flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in reg.parameters())


def _compare(got: Tensor, ref: Tensor) -> Tuple[float, float]:
    """(cosine, ||got - ref|| / ||ref||)."""
    return (F.cosine_similarity(got, ref, dim=0).item(),
            ((got - ref).norm() / ref.norm().clamp_min(1e-300)).item())


def _meta_options(s: Setup, arm: str, vstep: str) -> ICLMSROptions:
    spec = ARMS[arm]
    # gamma_uni = 0: the L_ct(theta') part alone; the L_uni part is added exactly afterwards.
    return ICLMSROptions(**{**s.options.__dict__, "meta_grad": spec["meta_grad"],
                            "exact_impl": spec.get("exact_impl", "jvp"), "virtual_step": vstep,
                            "meta_stages": spec.get("meta_stages"),
                            "meta_batch": spec.get("meta_batch"), "gamma_uni": 0.0,
                            "meta_precision": spec.get("meta_precision", "float32")})


def _float64_reference(s: Setup, views: List[Tensor], raw: Tensor, vstep: str) -> Tensor:
    """L_ct(theta') part by ``exact_double_backward`` on float64 copies of the models (first
    step: the optimizer has no state yet, so a fresh LARS is the same optimizer)."""
    encoder = copy.deepcopy(s.encoder).double()
    projector = copy.deepcopy(s.projector).double()
    reg = copy.deepcopy(s.regularizer).double()
    params = {**{"encoder." + k: p for k, p in encoder.named_parameters()},
              **{"head." + k: p for k, p in projector.named_parameters()}}
    if vstep == "sgd":
        virtual = sgd_step(s.lr)
    else:
        if any(len(st) for st in s.optimizer.state.values()):
            raise RuntimeError("the float64 reference is made on the first step only")
        lars = type(s.optimizer)(list(params.values()), lr=s.lr, **LARS_KWARGS)
        virtual = optimizer_step(lars, params)
    head_loss = infonce_head_loss(projector, TEMPERATURE, msr_loss_form="mixture")
    options = _meta_options(s, "exact_double_backward", vstep)
    meta_step(encoder, projector, reg, [v.double() for v in views], raw.double(), head_loss,
              options, virtual_step=virtual)
    return _reg_grad(reg)


def run_fidelity(args: argparse.Namespace, model: str, batch: int) -> dict:
    """The training run of part 2; returns the per-step numbers. On CUDA the float32 arms run
    in float32 proper: TF32 (cuDNN's default for convolutions) is off for the run."""
    if args.device != "cuda":
        return _run_fidelity(args, model, batch)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _run_fidelity(args, model, batch)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run_fidelity(args: argparse.Namespace, model: str, batch: int) -> dict:
    s = Setup(args, model, batch)
    arms = [REFERENCE] + [a for a in args.fid_arms.split(",") if a and a != REFERENCE]
    reg_params = [p for p in s.regularizer.parameters() if p.requires_grad]
    gamma = s.options.gamma_uni
    peak = recipe_lr(batch)
    records = []
    # the autocast arms' dynamic float16 loss scale, one per arm and virtual step, as the plugin
    # keeps one per run (MetaLossScale: its initial value, halved after a non-finite result)
    vsteps = args.fid_vsteps.split(",")
    scales = {(arm, vstep): MetaLossScale() for arm in arms for vstep in vsteps}
    start = time.perf_counter()
    for t in range(args.fid_steps):
        s.set_lr(warmup_cosine(t, args.fid_warmup, args.fid_horizon, peak))
        raw, views = s.data.batch(batch)
        s.optimizer.zero_grad(set_to_none=True)
        weights = s.regularizer(raw)
        stages = sorted({ARMS[a]["meta_stages"] for a in arms if ARMS[a].get("meta_stages")})
        features, activations = s.forward(views, stages)
        l_to, l_ct, _ = total_loss(features, weights, s.head_loss, s.options.lambda_msr)
        plain = s.plain_grads(l_ct)
        l_to.backward()
        stage1 = collect_grads(s.encoder, s.projector, copy=True)
        uni = torch.autograd.grad(gamma * uniformity_loss(weights, s.options.uni_t,
                                                          s.options.uni_over),
                                  reg_params, retain_graph=True, allow_unused=True)
        uni = _flat(torch.zeros_like(p) if u is None else u for u, p in zip(uni, reg_params))
        record: Dict[str, Any] = dict(step=t, lr=s.lr, ct_loss=l_ct.item())
        ct_ref = {}
        for vstep in vsteps:
            grads = {}
            for arm in arms:
                if arm == "exact_double_backward" and t % args.fid_sanity_every:
                    continue
                s.regularizer.zero_grad(set_to_none=True)
                inputs = s.meta_inputs(arm, views, activations, stage1, vstep)
                dtype = DTYPES.get(ARMS[arm].get("autocast"))
                scale = scales[(arm, vstep)] if dtype == torch.float16 else None
                # the same parameters, batch and stage-1 gradient as the float32 reference; the
                # autocast arms' passes of the L_ct(theta') part under ``dtype``
                meta_step(inputs.pop("encoder"), s.projector, s.regularizer, inputs.pop("views"),
                          raw, s.head_loss, _meta_options(s, arm, vstep), plain_grads=plain,
                          weights=weights, generator=torch.Generator().manual_seed(t),
                          autocast_dtype=dtype, loss_scale=None if scale is None else scale.scale,
                          **inputs)
                grad = _reg_grad(s.regularizer)
                finite = bool(torch.isfinite(grad).all())
                if scale is not None:
                    record[f"{vstep}/{arm}/loss_scale"] = scale.scale
                    scale.update(finite)
                if not finite:  # the plugin does not apply it: counted, not compared
                    record[f"{vstep}/{arm}/refused"] = 1
                    continue
                grads[arm] = grad
            ref = grads[REFERENCE]
            ct_ref[vstep] = ref
            record[f"{vstep}/ct_norm"] = ref.norm().item()
            record[f"{vstep}/uni_norm"] = uni.norm().item()
            for arm in (a for a in arms[1:] if a in grads):
                record[f"{vstep}/{arm}/total"] = _compare(grads[arm] + uni, ref + uni)
                record[f"{vstep}/{arm}/ct"] = _compare(grads[arm], ref)
            if t == 0:
                ref64 = _float64_reference(s, views, raw, vstep)
                record[f"{vstep}/float64/total"] = _compare(ref + uni, ref64 + uni)
                record[f"{vstep}/float64/ct"] = _compare(ref, ref64)
        # The real LARS update against alpha * g, and against the optimizer virtual step.
        g = {k: stage1[k] if stage1[k] is not None else torch.zeros_like(p)
             for k, p in s.params.items()}
        predicted = s.virtual_step("optimizer")({k: p.detach() for k, p in s.params.items()}, g)
        before = _flat(s.params.values())
        s.optimizer.step()
        after = _flat(s.params.values())
        update, sgd_update = after - before, -s.lr * _flat(g.values())
        record["update_ratio"] = (update.norm() / sgd_update.norm()).item()
        record["update_cos"] = F.cosine_similarity(update, sgd_update, dim=0).item()
        record["virtual_vs_real"] = ((_flat(predicted.values()) - after).norm()
                                     / update.norm()).item()
        # f_msr learns from the exact meta-gradient with the paper's sgd virtual step.
        s.meta_optimizer.zero_grad(set_to_none=True)
        total = (ct_ref.get("sgd", ct_ref[vsteps[0]]) + uni).float()
        offset = 0
        for p in s.regularizer.parameters():
            p.grad = total[offset:offset + p.numel()].view_as(p).to(p.device).clone()
            offset += p.numel()
        s.meta_optimizer.step()
        records.append(record)
        print(f"  fidelity {model} step {t + 1}/{args.fid_steps}: lr {s.lr:.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return dict(model=model, batch=batch, peak_lr=peak, arms=arms, records=records,
                lars=s.lars_name)


def summarize_fidelity(run: dict) -> List[dict]:
    """Median and worst of cosine and relative error per (virtual step, arm, part)."""
    rows = []
    for vstep in ("sgd", "optimizer"):
        for arm in run["arms"][1:] + ["float64"]:
            for part in ("total", "ct"):
                key = f"{vstep}/{arm}/{part}"
                pairs = [r[key] for r in run["records"] if key in r]
                refused = sum(f"{vstep}/{arm}/refused" in r for r in run["records"])
                if not pairs and not refused:
                    continue
                nan = float("nan")
                cos, err = [p[0] for p in pairs] or [nan], [p[1] for p in pairs] or [nan]
                rows.append(dict(vstep=vstep, arm=arm, part=part, n=len(pairs), refused=refused,
                                 cos_median=statistics.median(cos), cos_worst=min(cos),
                                 err_median=statistics.median(err), err_worst=max(err)))
    return rows


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def _fmt_cost_table(results: List[dict]) -> List[str]:
    base = next((r for r in results if r["arm"] == "base"), None)
    lines = ["| arm | meta_every | meta precision | s / step, mean | s / step, best period "
             "| x base (wall) | x base (process CPU time) | peak mem delta (MiB) | x base |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        every = "-" if ARMS[r["arm"]]["meta_grad"] is None else str(r["meta_every"])

        def ratio(key: str) -> str:
            return f"{r[key] / base[key]:.2f}" if base else "-"

        lines.append(f"| {r['arm']} | {every} | {r['precision']} | {r['mean_s']:.3f} "
                     f"| {r['step_s']:.3f} | {ratio('step_s')} | {ratio('cpu_s')} "
                     f"| {r['peak_delta_mib']:.0f} | {ratio('peak_delta_mib')} |")
    return lines


def cost_plan(args: argparse.Namespace) -> List[tuple]:
    """(arm, meta_every, meta precision) of every row of the cost table (``-``: no meta step)."""
    plan = []
    for arm in args.arms.split(","):
        if arm in AUTOCAST_ARMS:
            raise SystemExit(f"--arms: {arm} is an arm of the fidelity part; time the meta step "
                             f"under autocast with --arms exact_jvp --meta-precision autocast")
        if arm not in ARMS:
            raise SystemExit(f"--arms: unknown arm {arm!r}; valid: {', '.join(COST_ARMS)}")
        if ARMS[arm]["meta_grad"] is None:
            plan.append((arm, 1, "-"))
            continue
        plan += [(arm, int(e), p) for p in args.precisions for e in args.every.split(",")]
    return plan


def measure_memory(args: argparse.Namespace, argv: List[str], plan: List[tuple]) -> Dict[tuple, float]:
    """Peak memory of every arm, each in a fresh subprocess, one after another (meta_every 4
    peaks in its meta step, as meta_every 1)."""
    forwarded = [a for a in argv if a != "--quick"] + (["--quick"] if args.quick else [])
    forwarded += ["--device", args.device, "--amp", args.amp]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # A fixed mmap threshold makes glibc return every freed block of >= 128 KiB to the OS at
    # once, so the resident-set peak follows the live tensors rather than what the heap kept.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    memory = {}
    for arm, every, precision in plan:
        if (arm, 1, precision) in memory:  # the peak is reached in a meta step: as meta_every 1
            memory[(arm, every, precision)] = memory[(arm, 1, precision)]
            continue
        out = subprocess.run([sys.executable, __file__, *forwarded, "--worker",
                              f"{arm}@1@{_precision(precision)}"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"memory of arm {arm} failed:\n{out.stderr}", flush=True)
            return memory
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_delta_mib"]
        memory[(arm, 1, precision)] = memory[(arm, every, precision)] = peak
        label = "" if precision == "-" else f" ({precision} meta step)"
        print(f"  memory {arm}{label}: {peak:.0f} MiB", flush=True)
    return memory


def run_cost(plan: List[tuple], memory: Dict[tuple, float], args: argparse.Namespace
             ) -> List[dict]:
    """Part 1's table rows: the interleaved timing with the memory measured before."""
    timing = run_timing(args, plan)
    return [dict(arm=arm, meta_every=every, precision=precision,
                 peak_delta_mib=memory[(arm, every, precision)],
                 **timing[(arm, every, precision)]) for arm, every, precision in plan]


def cost_part(args: argparse.Namespace, argv: List[str]) -> List[dict]:
    """Part 1 alone: the memory of every arm (subprocesses), then the interleaved timing."""
    plan = cost_plan(args)
    memory = measure_memory(args, argv, plan)
    if len(memory) < len(plan):
        raise RuntimeError("the memory measurement failed (see above)")
    return run_cost(plan, memory, args)


def cost_header(args: argparse.Namespace) -> str:
    """One line: what the cost part measures."""
    training = "float32" if args.amp == "none" else f"autocast {args.amp}" + (
        " with a GradScaler" if args.amp == "float16" else "")
    return (f"{args.model}, batch {args.batch}, {args.size} px, n {args.n_strata}, LARS at lr "
            f"{recipe_lr(args.batch):g}, virtual step {args.virtual_step}, training step "
            f"{training}, meta step {', '.join(args.precisions)}, {args.steps} timed steps per "
            f"arm after {args.warmup} warm-up, on {args.device}"
            + (" (CUDA events)" if args.device == "cuda" else ""))


def machine() -> str:
    """The CPU model (or the platform's machine name)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def print_targets(cost: Optional[List[dict]], fidelity: List[dict]) -> None:
    """Met / not met for every target, with the numbers."""
    print("\nTargets:")
    by = {}
    if cost:
        base = next(r for r in cost if r["arm"] == "base")
        by = {(r["arm"], r["meta_every"]): r for r in cost if r["precision"] != "autocast"}
        for r in cost:
            if r["precision"] == "autocast" and (r["arm"], r["meta_every"]) in by:
                ref = by[(r["arm"], r["meta_every"])]
                print(f"  {r['arm']} meta_every {r['meta_every']}, autocast meta step: "
                      f"{r['step_s'] / base['step_s']:.2f}x base, "
                      f"{r['step_s'] / ref['step_s']:.2f}x the float32 meta step's step time, "
                      f"memory {r['peak_delta_mib'] / max(ref['peak_delta_mib'], 1e-9):.2f}x")
        x = {k: r["step_s"] / base["step_s"] for k, r in by.items()}
        mem = {k: r["peak_delta_mib"] / base["peak_delta_mib"] for k, r in by.items()}
        if ("exact_jvp", 1) in x:
            print(f"  exact (jvp) every batch <= {TARGETS['exact_every1']}x: "
                  f"{x[('exact_jvp', 1)]:.2f}x {_verdict(x[('exact_jvp', 1)] <= TARGETS['exact_every1'])}")
        if ("exact_jvp", 4) in x:
            print(f"  exact (jvp) meta_every 4 <= {TARGETS['exact_every4']}x: "
                  f"{x[('exact_jvp', 4)]:.2f}x {_verdict(x[('exact_jvp', 4)] <= TARGETS['exact_every4'])}")
        for arm in ("finite_difference", "linearized"):
            for every, key in ((1, "cheap_every1"), (4, "cheap_every4")):
                if (arm, every) in x:
                    print(f"  {arm} meta_every {every} <= {TARGETS[key]}x: {x[(arm, every)]:.2f}x "
                          f"{_verdict(x[(arm, every)] <= TARGETS[key])}")
        for arm in CHEAP_ARMS:
            for every, key in ((1, "cheap_every1"), (4, "cheap_every4")):
                if (arm, every) in x:
                    print(f"  {arm} meta_every {every} <= {TARGETS[key]}x: {x[(arm, every)]:.2f}x "
                          f"{_verdict(x[(arm, every)] <= TARGETS[key])}")
        for arm in META_ARMS:
            if (arm, 1) in mem:
                print(f"  peak memory {arm} <= {TARGETS['memory']}x base: {mem[(arm, 1)]:.2f}x "
                      f"{_verdict(mem[(arm, 1)] <= TARGETS['memory'])}")
    for run_rows in fidelity:
        for r in run_rows["rows"]:
            if r["arm"] in AUTOCAST_ARMS:
                ok = r["cos_median"] >= TARGETS["autocast_cos_median"] and not r["refused"]
                print(f"  {run_rows['model']} {r['arm']} virtual_step {r['vstep']} ({r['part']}): "
                      f"cosine to float32 median {r['cos_median']:.4f} (>= "
                      f"{TARGETS['autocast_cos_median']}), worst {r['cos_worst']:.4f}, "
                      f"{r['refused']} of {r['n'] + r['refused']} not finite {_verdict(ok)}")
            if r["arm"] in ("finite_difference", "linearized", *CHEAP_ARMS) and r["part"] == "total":
                ok = (r["cos_median"] >= TARGETS["cheap_cos_median"]
                      and r["cos_worst"] >= TARGETS["cheap_cos_worst"])
                print(f"  {run_rows['model']} {r['arm']} virtual_step {r['vstep']}: cosine to exact "
                      f"median {r['cos_median']:.4f} (>= {TARGETS['cheap_cos_median']}), worst "
                      f"{r['cos_worst']:.4f} (>= {TARGETS['cheap_cos_worst']}) {_verdict(ok)}")


def fidelity_lines(run: dict) -> List[str]:
    """The fidelity part's table of one run (``run_fidelity`` with its ``rows``), and the
    lines about the run's real updates."""
    recs = run["records"]
    lrs = [r["lr"] for r in recs]
    out = [f"Fidelity to exact_jvp (float32), {run['model']}, batch {run['batch']}, "
           f"{len(recs)} steps, lr {min(lrs):.2g}-{max(lrs):.2g} (alpha = lr for sgd); "
           f"'total' = the gradient on f_msr (L_ct(theta') part + gamma L_uni part), "
           f"'ct' = its L_ct(theta') part:",
           "| virtual step | arm | part | steps | cosine median | cosine worst "
           "| rel. error median | rel. error worst |",
           "|---|---|---|---|---|---|---|---|"]
    for r in run["rows"]:
        arm = ("exact_jvp vs float64 double_backward (step 1)" if r["arm"] == "float64"
               else r["arm"])
        steps = f"{r['n']}" + (f" ({r['refused']} not finite)" if r.get("refused") else "")
        out.append(f"| {r['vstep']} | {arm} | {r['part']} | {steps} | {r['cos_median']:.5f} "
                   f"| {r['cos_worst']:.5f} | {r['err_median']:.2e} | {r['err_worst']:.2e} |")
    for vstep in (v for v in ("sgd", "optimizer") if f"{v}/ct_norm" in recs[0]):
        ratio = statistics.median(r[f"{vstep}/ct_norm"] / max(r[f"{vstep}/uni_norm"], 1e-300)
                                  for r in recs)
        out.append(f"  {vstep}: median ||L_ct(theta') part|| / ||gamma L_uni part|| = {ratio:.3g}")
    half = recs[len(recs) // 2:]
    out.append(
        f"Real LARS update vs alpha * g ({run['lars']}): ||update|| / ||alpha g|| median "
        f"{statistics.median(r['update_ratio'] for r in recs):.2f} (steps {len(recs) // 2 + 1}"
        f"-{len(recs)}: {statistics.median(r['update_ratio'] for r in half):.2f}; range "
        f"{min(r['update_ratio'] for r in recs):.2f}-{max(r['update_ratio'] for r in recs):.2f}),"
        f" cosine(update, -alpha g) median "
        f"{statistics.median(r['update_cos'] for r in recs):.2f} (steps {len(recs) // 2 + 1}"
        f"-{len(recs)}: {statistics.median(r['update_cos'] for r in half):.2f}); "
        f"virtual_step optimizer vs the real update: max relative difference "
        f"{max(r['virtual_vs_real'] for r in recs):.1e}")
    return out


def main(argv: List[str]) -> None:
    """Runs the parts asked for and prints the tables."""
    args = parse_args(argv)
    if args.worker is not None:
        arm, every, precision = (args.worker.split("@") + ["float32"])[:3]
        print(json.dumps(run_worker(args, arm, int(every), precision)))
        return
    if args.profile is not None:
        run_profile(args, args.profile)
        return
    parts = set(args.parts.split(","))
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; torch {torch.__version__}; "
          f"device {args.device}; {machine()}, "
          f"{os.cpu_count()} CPUs; torch threads {torch.get_num_threads()} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); {lars_class()[1]}",
          flush=True)
    started = time.perf_counter()
    cost, memory, plan = None, {}, []
    memory_thread = None
    if "cost" in parts:
        print(f"cost: {cost_header(args)}", flush=True)
        plan = cost_plan(args)
        # Memory does not depend on the load: measure it while the fidelity part runs (the
        # timing runs afterwards, alone).
        memory_thread = threading.Thread(
            target=lambda: memory.update(measure_memory(args, argv, plan)))
        memory_thread.start()
    fidelity = []
    if "fidelity" in parts:
        models = args.fid_models.split(",")
        batches = [int(b) for b in args.fid_batch.split(",")]
        batches += [batches[-1]] * (len(models) - len(batches))
        for model, batch in zip(models, batches):
            print(f"fidelity: {model}, batch {batch}, {args.fid_steps} steps, peak lr "
                  f"{recipe_lr(batch):g} (warm-up {args.fid_warmup}, horizon {args.fid_horizon})",
                  flush=True)
            run = run_fidelity(args, model, batch)
            run["rows"] = summarize_fidelity(run)
            fidelity.append(run)
        if args.fid_json:
            with open(args.fid_json, "w") as f:
                json.dump(fidelity, f, indent=1)
    if memory_thread is not None:
        memory_thread.join()
        if len(memory) < len(plan):
            raise SystemExit("the memory measurement failed (see above)")
        cost = run_cost(plan, memory, args)
    print(f"\nwhole run: {(time.perf_counter() - started) / 60:.1f} min")
    if cost:
        print("\nCost (" + args.model + f", batch {args.batch}):")
        print("\n".join(_fmt_cost_table(cost)))
    for run in fidelity:
        print("\n" + "\n".join(fidelity_lines(run)))
    print_targets(cost, fidelity)


if __name__ == "__main__":
    main(sys.argv[1:])
