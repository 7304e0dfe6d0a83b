"""Cost of ICL-MSR's meta step against the plain SimCLR step (time per step and peak memory).

Config: timm resnet18 with the CIFAR stem (3x3 conv stride 1, no max-pool), 32 px, batch 64,
n = 8 strata, SimCLR projector 512 -> 2048 -> 256 (solo-learn's defaults proj_hidden_dim 2048,
proj_output_dim 256), temperature 0.2, SGD (lr 0.1, momentum 0.9, weight decay 5e-4, alpha = lr),
f_msr with its default 4 conv-BN-ReLU blocks of width 64 and Adam.

Arms: the base SimCLR step; stage 1 only (L_to = L_ct + lambda L_msr, A detached); stage 1 +
exact meta step (exact_impl jvp, and double_backward for reference); stage 1 + finite-difference
meta step; each meta arm with meta_every 1 and 4. Every arm runs in a fresh subprocess so that its
peak memory is its own (memory is measured there; time is measured interleaved, see below). Views are the raw batch plus noise (augmentation cost is not measured).

Time: all arms are built in one process and timed interleaved: in each round every arm runs one
period of 4 steps (a whole period of meta_every 1 and 4), so a disturbance from other processes
hits all arms alike. Reported: the mean wall-clock seconds per step over the rounds, and the best
round (wall clock, after a device synchronisation on CUDA, and the process's CPU time); ratios to
the base step use the best round, the least disturbed estimate on a shared machine.

Memory: on CUDA, torch.cuda.max_memory_allocated minus the memory allocated before the first
step. On CPU, the peak resident set size of the process (VmHWM in /proc/self/status) minus the
resident set size before the first step; this counts what the allocator actually held, so it is
an upper bound on the tensors alive at the peak.

Usage:
    python benchmarks/meta_step.py                 # full run, 8 timed steps per arm
    python benchmarks/meta_step.py --quick         # batch 16, 4 steps, a smoke test
    python benchmarks/meta_step.py --profile exact_jvp   # torch.profiler table of one step
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ARMS: Dict[str, dict] = {
    "base": dict(stage1=False, meta_grad=None),
    "stage1": dict(stage1=True, meta_grad=None),
    "exact_jvp": dict(stage1=True, meta_grad="second_order", exact_impl="jvp"),
    "exact_double_backward": dict(stage1=True, meta_grad="second_order",
                                  exact_impl="double_backward"),
    "finite_difference": dict(stage1=True, meta_grad="finite_difference"),
}


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8,
                        help="timed steps per arm (rounded up to a multiple of 4 so that "
                             "meta_every 4 is averaged over whole periods)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n-strata", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda if available")
    parser.add_argument("--quick", action="store_true",
                        help="batch 16, 4 steps, 1 warm-up: checks that every arm runs")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of arms")
    parser.add_argument("--every", default="1,4", help="meta_every values for the meta arms")
    parser.add_argument("--profile", default=None, choices=list(ARMS),
                        help="print a torch.profiler table of one step of this arm and exit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = 16, 4, 1
    args.steps = -(-args.steps // 4) * 4
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


# --------------------------------------------------------------------------------------------
# One arm, in this process
# --------------------------------------------------------------------------------------------

def build(args: argparse.Namespace, arm: str, meta_every: int):
    import timm
    import torch
    from torch import nn

    from solo_iclmsr.core import ICLMSROptions, MetaSemanticRegularizer, infonce_head_loss

    torch.manual_seed(0)
    device = torch.device(args.device)
    encoder = timm.create_model("resnet18", num_classes=0)
    encoder.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    encoder.maxpool = nn.Identity()
    feature_dim = encoder.num_features
    projector = nn.Sequential(nn.Linear(feature_dim, 2048), nn.BatchNorm1d(2048), nn.ReLU(),
                              nn.Linear(2048, 256))
    encoder, projector = encoder.to(device), projector.to(device)
    lr = 0.1
    params = list(encoder.parameters()) + list(projector.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    spec = ARMS[arm]
    options = ICLMSROptions(n_strata=args.n_strata, meta_every=meta_every,
                            meta_grad=spec.get("meta_grad") or "second_order",
                            exact_impl=spec.get("exact_impl", "jvp"))
    regularizer = MetaSemanticRegularizer(feature_dim, args.n_strata, options.msr_depth,
                                          options.msr_width).to(device)
    meta_optimizer = torch.optim.Adam(regularizer.parameters(), lr=options.msr_lr)
    head_loss = infonce_head_loss(projector, temperature=0.2, msr_loss="mixture")
    raw = torch.rand(args.batch, 3, args.size, args.size, device=device)
    views = [raw + 0.1 * torch.randn_like(raw), raw.flip(-1) + 0.1 * torch.randn_like(raw)]
    return dict(encoder=encoder, projector=projector, optimizer=optimizer, options=options,
                regularizer=regularizer, meta_optimizer=meta_optimizer, head_loss=head_loss,
                raw=raw, views=views, lr=lr, spec=spec)


def make_step(m: dict):
    import torch

    from solo_iclmsr.core import collect_grads, meta_step, resolve_alpha, total_loss

    encoder, projector, head_loss = m["encoder"], m["projector"], m["head_loss"]
    options, spec, views, raw = m["options"], m["spec"], m["views"], m["raw"]

    def step(batch_idx: int) -> None:
        m["optimizer"].zero_grad(set_to_none=True)
        features = [encoder(x) for x in views]
        if not spec["stage1"]:
            l_ct, _ = head_loss(features, None)
            l_ct.backward()
            m["optimizer"].step()
            return
        run_meta = spec["meta_grad"] is not None and options.should_meta_step(batch_idx)
        with torch.set_grad_enabled(run_meta):  # A keeps its graph only for the meta step
            weights = m["regularizer"](raw)
        l_to, _, _ = total_loss(features, weights, head_loss, options.lambda_msr)
        l_to.backward()
        if run_meta:
            m["meta_optimizer"].zero_grad(set_to_none=True)
            meta_step(encoder, projector, m["regularizer"], views, raw, head_loss, options,
                      alpha=resolve_alpha(options, m["lr"]),
                      stage1_grads=collect_grads(encoder, projector, copy=False),  # before step
                      weights=weights)
            m["meta_optimizer"].step()
        m["optimizer"].step()

    return step


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_worker(args: argparse.Namespace, arm: str, meta_every: int) -> dict:
    """Peak memory of one arm, in a fresh process: warm-up and one period of 4 steps."""
    import torch

    m = build(args, arm, meta_every)
    step = make_step(m)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        mem_before = torch.cuda.memory_allocated()
    else:
        mem_before = rss_kib("VmRSS") * 1024
    for i in range(args.warmup + 4):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if cuda else rss_kib("VmHWM") * 1024
    return dict(arm=arm, meta_every=meta_every, peak_delta_mib=(peak - mem_before) / 2**20)


def run_timing(args: argparse.Namespace, plan: List[tuple]) -> Dict[tuple, dict]:
    """Time all arms in one process, interleaved: round after round, every arm runs one period
    of 4 steps, so a disturbance from other processes hits all arms alike."""
    import torch

    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    arms = {}
    for arm, every in plan:
        arms[(arm, every)] = make_step(build(args, arm, every))
        for i in range(args.warmup):
            arms[(arm, every)](i)
    sync()
    walls: Dict[tuple, List[float]] = {key: [] for key in arms}
    cpus: Dict[tuple, List[float]] = {key: [] for key in arms}
    for r in range(args.steps // 4):
        for key, step in arms.items():
            first = args.warmup + 4 * r
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(first, first + 4):
                step(i)
            sync()
            walls[key].append((time.perf_counter() - start) / 4)
            cpus[key].append((time.process_time() - start_cpu) / 4)
        print(f"  round {r + 1}/{args.steps // 4} done", flush=True)
    return {key: dict(mean_s=sum(walls[key]) / len(walls[key]), step_s=min(walls[key]),
                      cpu_s=min(cpus[key])) for key in arms}


def run_profile(args: argparse.Namespace, arm: str) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    m = build(args, arm, 1)
    step = make_step(m)
    for i in range(args.warmup):
        step(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        step(0)
    key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30))


# --------------------------------------------------------------------------------------------
# Driver: one subprocess per arm, then the table
# --------------------------------------------------------------------------------------------

def main(argv: List[str]) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        arm, every = args.worker.split("@")
        print(json.dumps(run_worker(args, arm, int(every))))
        return
    if args.profile is not None:
        run_profile(args, args.profile)
        return
    plan = []
    for arm in args.arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"--arms: unknown arm {arm!r}; valid: {', '.join(ARMS)}")
        everies = [1] if ARMS[arm]["meta_grad"] is None else [int(e) for e in args.every.split(",")]
        plan += [(arm, e) for e in everies]
    forwarded = [a for a in argv if a != "--quick"] + (["--quick"] if args.quick else [])
    forwarded += ["--device", args.device]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    print(f"device {args.device}, batch {args.batch}, {args.size} px, n {args.n_strata}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
    memory = {}
    for arm, every in plan:
        if every != 1:  # the peak is reached in a meta step: the same as with meta_every 1
            memory[(arm, every)] = memory[(arm, 1)]
            continue
        out = subprocess.run([sys.executable, __file__, *forwarded, "--worker", f"{arm}@{every}"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"arm {arm}@{every} failed:\n{out.stderr}")
        memory[(arm, every)] = json.loads(out.stdout.strip().splitlines()[-1])["peak_delta_mib"]
        print(f"  memory {arm}: {memory[(arm, every)]:.0f} MiB", flush=True)
    timing = run_timing(args, plan)
    results = [dict(arm=arm, meta_every=every, peak_delta_mib=memory[(arm, every)],
                    **timing[(arm, every)]) for arm, every in plan]
    base = next((r for r in results if r["arm"] == "base"), None)
    print()
    print("| arm | meta_every | s / step, mean | s / step, best period | x base (wall) "
          "| x base (process CPU time) | peak mem delta (MiB) | x base |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        every = "-" if ARMS[r["arm"]]["meta_grad"] is None else str(r["meta_every"])
        ratio = (lambda key: f"{r[key] / base[key]:.2f}" if base else "-")
        print(f"| {r['arm']} | {every} | {r['mean_s']:.3f} | {r['step_s']:.3f} | {ratio('step_s')} "
              f"| {ratio('cpu_s')} | {r['peak_delta_mib']:.0f} | {ratio('peak_delta_mib')} |")

if __name__ == "__main__":
    main(sys.argv[1:])
