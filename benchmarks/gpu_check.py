"""The GPU check: one command, nothing downloaded, one markdown report.

    python benchmarks/gpu_check.py                        # on a GPU (make gpu-check)
    python benchmarks/gpu_check.py --device cpu --quick   # tiny sizes, the same code path

The quick mode (a test of the script, not a measurement): a narrow timm ``test_resnet``, batch
8-16, a few steps, and bfloat16 where the GPU run takes float16 (emulated on most CPUs).

Parts (each timed and written to ``--out DIR``/gpu_check.md as soon as it ends, so that a run cut
short keeps what it measured):

* **pretrain**: solo-learn's own ``scripts/pretrain/cifar/simclr.yaml`` and ``byol.yaml``
  (16-mixed, ResNet-18, batch 256, LARS), unchanged but for the overrides a short run on one
  device needs (the built-in set, ``data.dataset=builtin``; one device, no validation, no wandb;
  a few hundred steps), through ``solo-iclmsr pretrain`` (the function its command runs, with a
  callback that measures): the base method, ICL-MSR (``meta_precision: float32``, the default)
  and ICL-MSR with ``meta_precision: autocast``. Per run: whether the loss and the parameters
  stayed finite, the optimizer steps the GradScaler skipped, the meta steps taken / skipped /
  refused, images per second after the first steps, peak memory.
* **cost**: the cost part of ``benchmarks/meta_step.py`` at batch 256 under float16 autocast with
  a GradScaler (as 16-mixed): base, the exact meta step, ``meta_stages: 1``, each with
  ``meta_every`` 1 and 4 and with the meta step in float32 and under autocast; timed with CUDA
  events.
* **fidelity**: the fidelity part of ``benchmarks/meta_step.py`` for the autocast meta step
  (bfloat16 and float16) against the float32 one, on ResNet-18 on this device (float16
  autocast is emulated on most CPUs: minutes per ResNet-18 meta step there).
* **augment**: ``benchmarks/augment.py`` on the device: the project's batch augmentation
  against Kornia's ``AugmentationSequential`` at 32 and 224 px, and its share of a resnet18
  training step (the CPU columns, with solo-learn's per-image pipeline, are left to
  ``benchmarks/augment.py`` alone).

The report gives the device, the torch, CUDA and cuDNN versions, and for every part the
command that reruns it alone. solo-learn's configs come from ``--solo-source`` (a ``.tar.gz``
archive or a checkout), by default ``$SOLO_LEARN_SOURCE`` or the vendored archive
``shared/vendor/solo-learn-9187ea3.tar.gz`` beside the checkout or inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import math
import os
import platform
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

ARCHIVE = "solo-learn-9187ea3.tar.gz"
PARTS = ("pretrain", "cost", "fidelity", "augment")
CONFIGS = ("simclr", "byol")
#: the pretraining arms: Hydra overrides added to the config's
ARMS = {"base": ["++iclmsr.enabled=false"],
        "iclmsr": ["++iclmsr.enabled=true"],
        "iclmsr_autocast": ["++iclmsr.enabled=true", "++iclmsr.meta_precision=autocast"]}


# --------------------------------------------------------------------------------------------
# Sizes: the GPU run and the quick CPU run take the same code path
# --------------------------------------------------------------------------------------------

def pretrain_overrides(device: str, quick: bool, config: str, checkpoints: Path) -> List[str]:
    """What a short run of solo's config on one device changes (the recipe itself is kept)."""
    gpu = device == "cuda"
    out = ["data.dataset=builtin", "++wandb.enabled=False", "devices=1", "strategy=auto",
           "sync_batchnorm=False", f"accelerator={'gpu' if gpu else 'cpu'}",
           "++limit_val_batches=0", "++enable_progress_bar=False", "auto_resume.enabled=False",
           f"checkpoint.dir={checkpoints}", "++diagnostics.enabled=false",
           "++diagnostics.every_n_steps=0", "++data.builtin.n_test=256"]
    if not quick:
        # 100 steps of 256 images per epoch, 2 epochs; warm-up over the first epoch
        return out + ["++data.builtin.n_train=25600", "max_epochs=2",
                      "++scheduler.warmup_epochs=1", "data.num_workers=4"]
    # float16 arithmetic is emulated on most CPUs (tens of times slower than bfloat16): the
    # quick run trains at bf16-mixed
    tiny = ["precision=bf16-mixed", "backbone.name=test_resnet", "++backbone.kwargs.stem_width=8",
            "++backbone.kwargs.channels=[16,32,48,96]", "optimizer.batch_size=16",
            "method_kwargs.proj_hidden_dim=64", "method_kwargs.proj_output_dim=32",
            "++iclmsr.n_strata=2", "++iclmsr.msr_width=8", "++iclmsr.msr_depth=2"]
    if config == "byol":
        tiny.append("method_kwargs.pred_hidden_dim=64")
    return out + tiny + ["++data.builtin.n_train=32", "max_epochs=2",
                         "++scheduler.warmup_epochs=1", "data.num_workers=0"]


def cost_argv(device: str, quick: bool) -> List[str]:
    """benchmarks/meta_step.py's command line for the cost part."""
    common = ["--parts", "cost", "--device", device, "--every", "1,4",
              "--meta-precision", "float32,autocast"]
    if not quick:
        return common + ["--arms", "base,exact_jvp,stages1", "--model", "resnet18", "--batch",
                         "256", "--amp", "float16", "--steps", "8", "--warmup", "2"]
    # bfloat16: float16 arithmetic is emulated on most CPUs (tens of times slower); two arms
    # (each a subprocess for its memory)
    return common + ["--arms", "base,exact_jvp", "--model", "test_resnet", "--batch", "8",
                     "--amp", "bfloat16", "--steps", "4", "--warmup", "1", "--n-train", "64"]


def fidelity_argv(device: str, quick: bool) -> List[str]:
    """benchmarks/meta_step.py's command line for the autocast meta step's fidelity."""
    common = ["--parts", "fidelity", "--device", device, "--fid-vsteps", "sgd",
              "--fid-sanity-every", "1000"]
    if not quick:
        return common + ["--fid-models", "resnet18", "--fid-batch", "64", "--fid-steps", "10",
                         "--fid-arms", "exact_autocast_bf16,exact_autocast_fp16"]
    return common + ["--fid-models", "test_resnet", "--fid-batch", "8", "--fid-steps", "2",
                     "--fid-arms", "exact_autocast_bf16", "--n-train", "64"]


def augment_sizes(quick: bool) -> Dict[str, Any]:
    """benchmarks/augment.py's sizes."""
    return dict(batch=8 if quick else 256, repeats=1 if quick else 3, sizes=(32, 224))


# --------------------------------------------------------------------------------------------
# solo-learn's configs
# --------------------------------------------------------------------------------------------

def _candidates(given: Optional[str]) -> List[Path]:
    if given:
        return [Path(given)]
    found = []
    env = os.environ.get("SOLO_LEARN_SOURCE")
    if env and "://" not in env:
        found.append(Path(env) if Path(env).is_absolute() else ROOT / env)
    return found + [ROOT.parent / "shared" / "vendor" / ARCHIVE,
                    ROOT / "shared" / "vendor" / ARCHIVE]


def solo_cifar_configs(given: Optional[str], workdir: Path) -> Path:
    """solo-learn's ``scripts/pretrain/cifar`` folder, from a checkout or extracted from an
    archive into ``workdir``."""
    for source in _candidates(given):
        if source.is_dir() and (source / "scripts" / "pretrain" / "cifar").is_dir():
            return source / "scripts" / "pretrain" / "cifar"
        if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(source) as archive:
                members = [m for m in archive.getmembers() if "/scripts/" in m.name + "/"]
                archive.extractall(workdir, members=members, filter="data")
            for root in workdir.iterdir():
                if (root / "scripts" / "pretrain" / "cifar").is_dir():
                    return root / "scripts" / "pretrain" / "cifar"
    raise SystemExit(f"gpu_check: solo-learn's configs were not found in "
                     f"{', '.join(str(c) for c in _candidates(given))}: give --solo-source "
                     f"(its archive {ARCHIVE} or a checkout)")


# --------------------------------------------------------------------------------------------
# Part (a): solo's configs through solo-iclmsr pretrain
# --------------------------------------------------------------------------------------------

def _peak_rss_reset() -> bool:
    """Reset the process's peak resident set size (Linux); whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def meter_class() -> type:
    """The measuring callback (Lightning imported only when part (a) runs)."""
    import lightning.pytorch as pl

    class Meter(pl.Callback):
        """Images per second after ``skip`` steps, the steps the GradScaler skipped, peak
        memory, the last loss, and the trained module (``module``). The time of a step is the
        interval between the ends of two consecutive steps of an epoch (data loading included;
        the first step of an epoch, with the loader's start, and the checkpoint written at an
        epoch's end are left out)."""

        def __init__(self, skip: int) -> None:
            super().__init__()
            self.skip, self.steps, self.skipped, self.timed = skip, 0, 0, 0
            self.seconds = 0.0
            self.mark: Optional[float] = None
            self.scale: Optional[float] = None
            self.loss = float("nan")
            self.peak_mib = float("nan")
            self.peak_what = ""
            self.cuda = False
            self.module: Any = None

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.cuda = module.device.type == "cuda"
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.peak_what = "torch.cuda.max_memory_allocated"
            else:
                self.peak_what = ("peak RSS of the process (VmHWM)" if _peak_rss_reset()
                                  else "peak RSS of the process since its start (VmHWM)")
            scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
            if scaler is not None and scaler.is_enabled():
                self.scale = float(scaler.get_scale())

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.mark = None

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            if self.cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            self.steps += 1
            if self.mark is not None and self.steps > self.skip:
                self.seconds += now - self.mark
                self.timed += 1
            self.mark = now
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.loss = float(loss)
            scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
            if scaler is not None and scaler.is_enabled():
                scale = float(scaler.get_scale())
                if self.scale is not None and scale < self.scale:  # halved: the step was skipped
                    self.skipped += 1
                self.scale = scale

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.module = module
            if self.cuda:
                torch.cuda.synchronize()
                self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
            else:
                self.peak_mib = (_status_kib("VmHWM") or float("nan")) / 1024

    return Meter


def run_pretrain(cfg_dir: Path, config: str, arm: str, device: str, quick: bool,
                 workdir: Path) -> Dict[str, Any]:
    """One pretraining of solo's ``config`` with ``arm``'s overrides; what it measured."""
    from solo_iclmsr.config import compose
    from solo_iclmsr.runs.pretrain import pretrain

    checkpoints = workdir / "trained_models" / f"{config}-{arm}"
    overrides = ARMS[arm] + pretrain_overrides(device, quick, config, checkpoints)
    command = ["solo-iclmsr", "pretrain", "--config-path", "SOLO/scripts/pretrain/cifar",
               "--config-name", config, *[o.replace(str(checkpoints), "trained_models")
                                          for o in overrides]]
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    cfg = compose(str(cfg_dir), config, overrides)
    meter = meter_class()(skip=2 if quick else 20)
    row: Dict[str, Any] = dict(config=config, arm=arm, command=shlex.join(command),
                               batch=int(cfg.optimizer.batch_size), precision=str(cfg.precision),
                               backbone=str(cfg.backbone.name), error=None)
    started = time.perf_counter()
    model = None
    try:
        result = pretrain(cfg, callbacks=[meter])
        model = meter.module
        row["steps"] = result.global_step
    except Exception as error:  # a failed run is a result: reported, the check goes on
        row["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        row["steps"] = meter.steps
        traceback.print_exc()
    row["wall_s"] = time.perf_counter() - started
    row["loss"] = meter.loss
    row["params_finite"] = None if model is None else all(
        bool(torch.isfinite(p).all()) for p in model.parameters())
    row["finite"] = (row["error"] is None and math.isfinite(meter.loss)
                     and bool(row["params_finite"]))
    row["opt_skipped"] = meter.skipped
    counts = getattr(model, "iclmsr_meta_counts", None) if model is not None else None
    row["meta"] = dict(counts) if counts and arm != "base" else None
    row["images_s"] = (row["batch"] * meter.timed / meter.seconds
                       if meter.timed and meter.seconds > 0 else float("nan"))
    row["timed_steps"], row["skip"] = meter.timed, meter.skip
    row["peak_mib"] = meter.peak_mib
    row["peak_what"] = meter.peak_what
    del model
    meter.module = None
    shutil.rmtree(checkpoints, ignore_errors=True)
    return row


def pretrain_section(rows: List[Dict[str, Any]]) -> List[str]:
    """Part (a)'s table and its commands."""
    lines = ["| config | arm | backbone, precision, batch | optimizer steps | finite "
             "| steps skipped by the GradScaler | meta steps taken / skipped / refused "
             "| images/s (steps timed) | time per image, x base | peak memory (MiB) | last loss "
             "| wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["config"]: r for r in rows if r["arm"] == "base"}
    for r in rows:
        meta = "-" if not r["meta"] else "{taken} / {skipped} / {refused}".format(**r["meta"])
        b = base.get(r["config"])
        ratio = (f"{b['images_s'] / r['images_s']:.2f}" if b and math.isfinite(b["images_s"])
                 and math.isfinite(r["images_s"]) and b["images_s"] > 0 else "-")
        finite = "yes" if r["finite"] else ("no: " + (r["error"] or "non-finite values"))
        lines.append(f"| {r['config']} | {r['arm']} | {r['backbone']}, {r['precision']}, "
                     f"{r['batch']} | {r['steps']} | {finite} | {r['opt_skipped']} | {meta} "
                     f"| {r['images_s']:.0f} ({r['timed_steps']}) | {ratio} "
                     f"| {r['peak_mib']:.0f} | {r['loss']:.4g} | {r['wall_s']:.0f} |")
    what = next((r["peak_what"] for r in rows if r["peak_what"]), "")
    skip = rows[0]["skip"] if rows else 0
    lines += ["", f"Images per second: the batch over the wall time of a step, over the steps "
                  f"after the first {skip} (a step: from the end of the previous step of the "
                  f"same epoch, data loading included); each image makes two views. Peak "
                  f"memory: {what}. "
                  f"Meta steps skipped: with the optimizer step the GradScaler skipped; refused: "
                  f"a meta-gradient that was not finite. Commands (`SOLO`: the solo-learn source; "
                  f"`data.dataset=builtin`: the project's built-in set, no download):", ""]
    lines += [f"    {r['command']}" for r in rows]
    return lines


# --------------------------------------------------------------------------------------------
# The other benchmark scripts, imported from their files
# --------------------------------------------------------------------------------------------

def load_script(name: str) -> Any:
    """``benchmarks/<name>.py`` as a module."""
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cost_section(device: str, quick: bool) -> List[str]:
    """Part (b): the cost table of benchmarks/meta_step.py."""
    meta = load_script("meta_step")
    argv = cost_argv(device, quick)
    args = meta.parse_args(argv)
    rows = meta.cost_part(args, argv)
    lines = [f"`python benchmarks/meta_step.py {shlex.join(argv)}`", "",
             meta.cost_header(args) + ":", ""] + meta._fmt_cost_table(rows)
    targets = io.StringIO()
    with contextlib.redirect_stdout(targets):
        meta.print_targets(rows, [])
    lines += ["", "```", targets.getvalue().strip(), "```"]
    return lines


def fidelity_section(device: str, quick: bool) -> List[str]:
    """Part (b), fidelity: the autocast meta step against the float32 one on this device."""
    meta = load_script("meta_step")
    argv = fidelity_argv(device, quick)
    args = meta.parse_args(argv)
    lines = [f"`python benchmarks/meta_step.py {shlex.join(argv)}`", ""]
    runs = []
    for model, batch in zip(args.fid_models.split(","), args.fid_batch.split(",")):
        run = meta.run_fidelity(args, model, int(batch))
        run["rows"] = meta.summarize_fidelity(run)
        runs.append(run)
        lines += meta.fidelity_lines(run) + [""]
    targets = io.StringIO()
    with contextlib.redirect_stdout(targets):
        meta.print_targets(None, runs)
    return lines + ["```", targets.getvalue().strip(), "```"]


def augment_section(device: str, quick: bool) -> List[str]:
    """Part (c): benchmarks/augment.py with its device columns on ``device``."""
    augment = load_script("augment")
    sizes = augment_sizes(quick)
    rows = augment.measure(sizes["batch"], sizes["repeats"], sizes["sizes"], device,
                           cpu_columns=False)
    argv = ["--batch", str(sizes["batch"]), "--repeats", str(sizes["repeats"]), "--sizes",
            ",".join(str(s) for s in sizes["sizes"]), "--device", device, "--no-cpu"]
    return [f"`python benchmarks/augment.py {shlex.join(argv)}`", "",
            f"batch {sizes['batch']}, two views per image (solo's SimCLR augmentations), torch "
            f"threads {torch.get_num_threads()}:", ""] + augment.table(rows)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def environment(device: str) -> List[str]:
    """The machine and the versions."""
    import lightning

    lines = [f"* date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"* python {platform.python_version()}, torch {torch.__version__}, lightning "
             f"{lightning.__version__}",
             f"* CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
             f"threads {torch.get_num_threads()}"]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.insert(1, f"* device: {torch.cuda.get_device_name(0)} "
                        f"({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                        f"cuDNN {torch.backends.cudnn.version()}, driver-visible devices "
                        f"{torch.cuda.device_count()}")
    else:
        lines.insert(1, f"* device: CPU only (no GPU); CUDA build {torch.version.cuda or 'none'}")
    return lines


def write_report(path: Path, head: List[str], sections: Dict[str, List[str]]) -> None:
    titles = {"pretrain": "(a) solo-learn's CIFAR configs through `solo-iclmsr pretrain`, "
                          "built-in set",
              "cost": "(b) Cost of the meta step (`benchmarks/meta_step.py`, cost part)",
              "fidelity": "(b) Fidelity of the autocast meta step on this device "
                          "(`benchmarks/meta_step.py`, fidelity part)",
              "augment": "(c) Augmentation throughput (`benchmarks/augment.py`)"}
    text = list(head)
    for part in PARTS:
        if part in sections:
            text += ["", f"## {titles[part]}", ""] + sections[part]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="auto: cuda (refused without a GPU unless --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (a small timm backbone, a few steps, small batches)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"),
                        help="folder of gpu_check.md")
    parser.add_argument("--solo-source", default=None,
                        help=f"solo-learn main: its archive ({ARCHIVE}) or a checkout")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of "
                        + ", ".join(PARTS))
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="parts that would start after this many minutes are left out (and "
                             "said so); default 8 on a GPU, no limit with --quick")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.max_minutes is None:
        args.max_minutes = math.inf if args.quick else 8.0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda, but torch sees no CUDA device")
    if args.device == "cpu" and not args.quick:
        raise SystemExit("gpu_check: no GPU here; the full check is sized for one GPU. On a "
                         "CPU run the quick check: --device cpu --quick")
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        raise SystemExit(f"gpu_check: --parts: unknown {', '.join(sorted(unknown))}; valid: "
                         f"{', '.join(PARTS)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    out = Path(args.out)
    report = out / "gpu_check.md"
    head = ["# GPU check (`benchmarks/gpu_check.py`)", "",
            f"Command: `python benchmarks/gpu_check.py{' ' + shlex.join(argv) if argv else ''}`"
            + (" (quick: tiny sizes, a test of the script, not a measurement)" if args.quick
               else ""), ""] + environment(args.device)
    sections: Dict[str, List[str]] = {}
    failed: List[str] = []
    parts = [p for p in PARTS if p in args.parts.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        for part in parts:
            elapsed = (time.perf_counter() - started) / 60
            if elapsed > args.max_minutes:
                sections[part] = [f"Not run: {elapsed:.1f} min had passed (--max-minutes "
                                  f"{args.max_minutes:g})."]
                failed.append(part)
                continue
            print(f"gpu_check: {part} ({elapsed:.1f} min so far)", flush=True)
            part_start = time.perf_counter()
            try:
                sections[part], ok = PART_RUNNERS[part](args, workdir)
                if not ok:
                    failed.append(part)
            except Exception as error:  # the other parts still run
                traceback.print_exc()
                sections[part] = [f"Failed: `{type(error).__name__}: {error}`"]
                failed.append(part)
            sections[part] += ["", f"Part time: {(time.perf_counter() - part_start) / 60:.1f} min."]
            write_report(report, head, sections)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total = (time.perf_counter() - started) / 60
    head.append(f"* whole check: {total:.1f} min" + (f"; failed or left out: {', '.join(failed)}"
                                                       if failed else ""))
    write_report(report, head, sections)
    print(f"gpu_check: {report} ({total:.1f} min)" + (f"; FAILED: {', '.join(failed)}"
                                                        if failed else ""), flush=True)
    return 1 if failed else 0


def _pretrain_part(args: argparse.Namespace, workdir: Path) -> Tuple[List[str], bool]:
    """Part (a); it fails when a run failed or did not stay finite."""
    cfg_dir = solo_cifar_configs(args.solo_source, workdir / "solo")
    rows = [run_pretrain(cfg_dir, config, arm, args.device, args.quick, workdir)
            for config in CONFIGS for arm in ARMS]
    return pretrain_section(rows), all(r["finite"] for r in rows)


PART_RUNNERS: Dict[str, Callable[[argparse.Namespace, Path], Tuple[List[str], bool]]] = {
    "pretrain": _pretrain_part,
    "cost": lambda args, workdir: (cost_section(args.device, args.quick), True),
    "fidelity": lambda args, workdir: (fidelity_section(args.device, args.quick), True),
    "augment": lambda args, workdir: (augment_section(args.device, args.quick), True),
}


if __name__ == "__main__":
    sys.exit(main())
