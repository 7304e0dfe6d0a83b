"""Evidence for ICL-MSR on the built-in confounded dataset: one command regenerates every table
and plot of ``benchmarks/results/evidence.md``.

    python benchmarks/evidence.py --scale cpu --out runs/evidence
    python benchmarks/evidence.py --scale gpu --out runs/evidence-gpu --seeds 3
    python benchmarks/evidence.py --scale cpu --only effect --methods simclr --rhos 0.95 --seeds 2

Parts (``--only`` picks some, comma-separated; default all):

* ``motivation``: the paper's 2x2 table. SimCLR pre-trained on full images and on
  foreground-only images (``data.kwargs.variant=fg``), each tested on full, foreground-only and
  decorrelated-background test images (5-NN top-1 and a linear probe whose training set is the
  pre-training variant; also with the probe trained on the test variant). The train-fg model is
  tested against the test sets of every rho (foreground-only images do not depend on rho).
* ``effect``: SimCLR, BYOL, Barlow Twins, each with and without ICL-MSR (the only difference
  between the arms is ``iclmsr.enabled``), ``--seeds`` seeds, rho in ``--rhos``: 5-NN and linear
  top-1 on full / fg / decorrelated test images, mean +- std.
* ``sensitivity``: SimCLR at rho = 0.95, one seed: lambda_msr, n_strata, meta_grad; wall-clock.
* ``strata``: what f_msr's strata pick: a PNG grid of where each a_t-weighted feature map is
  active on a few test images (ICL-MSR vs the base with uniform weights), the share of f_msr's
  weight on foreground-preferring channels, and how distinct the strata are.

Every run goes through the project's pipeline (``solo_iclmsr.config.compose`` /
``validate_pretrain`` and ``solo_iclmsr.train.pretrain``); evaluation uses
``solo_iclmsr.train.load_backbone`` and ``solo_iclmsr.evaluation`` (k-NN, linear probe). A run
whose folder already holds ``done.json`` and ``result.json`` is not trained again, so an
interrupted command resumes where it stopped; ``--fresh`` retrains everything.

Scales:

* ``cpu``: the whole set (60 runs: the grid of 54, the train-fg run, 5 sensitivity runs) in
  78 minutes on 2 idle CPU cores (measured 2026-11-26: base 0.11-0.17 s/step, ICL-MSR
  0.41-0.83 s/step, 192 steps per run); timm ``test_resnet`` (standard stem, 96 channels, a 1x1
  last map at 32 px), 32 px images, 4096 training / 1000 test images, batch 128, 6 epochs,
  projector 512/128, f_msr of width 32 and depth 3 (its other options at their defaults).
* ``gpu``: the CIFAR-sized rerun: ResNet-18 with the CIFAR stem (a 4x4 last map), 32 px,
  50 000 training / 10 000 test images (CIFAR-10's sizes), batch 256, 200 epochs, the methods'
  default projector sizes (configs/pretrain/builtin), f_msr at its defaults (width 64, depth 4).
  One GPU; not run yet, its time is not measured.

Both scales use random resized crops of scale 0.4-1.0 (not 0.08-1.0): at 32 px a smaller crop
often holds no part of the object, and then the base method cannot learn the foreground at all
(the pilot lesson of the design notes); and the colour changes of ``AUGMENT`` (reasons there).
``--jobs N`` trains N runs at a time, one process each, the CPU threads shared out (for a
many-core machine; processes on one GPU time-share it, so per-run times are then no speed
figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solo_iclmsr import config as cfgmod  # noqa: E402
from solo_iclmsr.core.regularizer import MetaSemanticRegularizer, channel_weights  # noqa: E402
from solo_iclmsr.data import BuiltinDataset, BuiltinSpec, foreground_only  # noqa: E402
from solo_iclmsr.data.builtin import NEUTRAL_GRAY, load_builtin  # noqa: E402
from solo_iclmsr.evaluation import extract_features, knn_accuracy, linear_probe  # noqa: E402
from solo_iclmsr.train import load_backbone, pretrain  # noqa: E402

NOTES = "## Reading"
PARTS = ("motivation", "effect", "sensitivity", "strata")
METHODS = ("simclr", "byol", "barlow_twins")
RHOS = (0.0, 0.8, 0.95)
TESTS = ("full", "fg", "decorrelated")
KNN_K = 5
CHANCE = 10.0


@dataclass
class Scale:
    name: str
    backbone: str
    cifar: bool
    image_size: int
    n_train: int
    n_test: int
    batch_size: int
    epochs: int
    crop_min_scale: float
    linear_epochs: int
    accelerator: str
    num_workers: int
    method_kwargs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    lr: Dict[str, float] = field(default_factory=dict)
    iclmsr: Dict[str, Any] = field(default_factory=dict)
    warmup_epochs: int = 0
    # changes to every view's augmentation, "section.key": value (see AUGMENT below)
    augment: Dict[str, Any] = field(default_factory=dict)


# Colour is an instance shortcut on the built-in dataset (every object has a random colour): with
# solo's hue 0.2 and grayscale 0.2, SimCLR trained on foreground-only images barely learns (5-NN
# 15.9 on foregrounds, chance 10, 8000 images, 5 epochs); with hue 0.5, grayscale 0.5 and no blur
# (a blur at 32 px smears the silhouette; solo's CIFAR recipes have none) it reaches 43.0. Chosen
# on the base method's train-fg/test-fg cell, the precondition of the design notes, before any
# ICL-MSR run at this setting; the same augmentation serves both arms of every comparison.
AUGMENT = {"color_jitter.hue": 0.5, "grayscale.prob": 0.5, "gaussian_blur.prob": 0.0}


SCALES = {
    "cpu": Scale(
        name="cpu", backbone="test_resnet", cifar=False, image_size=32, n_train=4096, n_test=1000,
        batch_size=128, epochs=6, crop_min_scale=0.4, linear_epochs=30, accelerator="cpu",
        num_workers=0,
        method_kwargs={"simclr": {"proj_hidden_dim": 512, "proj_output_dim": 128},
                       "byol": {"proj_hidden_dim": 512, "proj_output_dim": 128,
                                "pred_hidden_dim": 512},
                       "barlow_twins": {"proj_hidden_dim": 512, "proj_output_dim": 512}},
        lr={"simclr": 0.3, "byol": 0.5, "barlow_twins": 0.3},
        iclmsr={"msr_width": 32, "msr_depth": 3}, augment=AUGMENT),
    "gpu": Scale(
        name="gpu", backbone="resnet18", cifar=True, image_size=32, n_train=50000, n_test=10000,
        batch_size=256, epochs=200, crop_min_scale=0.4, linear_epochs=100, accelerator="gpu",
        num_workers=4, warmup_epochs=10, augment=AUGMENT),
}


def config_path(method: str) -> Path:
    return ROOT / "configs" / "pretrain" / "builtin" / f"{method}.yaml"


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    method: str
    iclmsr: bool
    rho: float
    seed: int
    variant: str = "full"  # training images: full or fg
    extra: Tuple[Tuple[str, Any], ...] = ()  # iclmsr option overrides (sensitivity)

    @property
    def name(self) -> str:
        arm = "icl" if self.iclmsr else "base"
        tail = "".join(f"-{k}={v}" for k, v in self.extra)
        return f"{self.method}-{arm}-rho{self.rho:g}-s{self.seed}-{self.variant}{tail}"


def spec_of(scale: Scale, rho: float) -> BuiltinSpec:
    # The dataset seed is fixed: seeds vary the training, not the data.
    return BuiltinSpec(image_size=scale.image_size, num_classes=10, rho=float(rho), seed=0,
                       n_train=scale.n_train, n_test=scale.n_test)


def overrides_of(scale: Scale, run: RunSpec) -> List[str]:
    ov = [f"name={run.name}", f"seed={run.seed}", f"backbone.name={scale.backbone}",
          f"backbone.cifar={str(scale.cifar).lower()}", f"max_epochs={scale.epochs}",
          f"optimizer.batch_size={scale.batch_size}",
          f"scheduler.warmup_epochs={scale.warmup_epochs}", f"accelerator={scale.accelerator}",
          f"data.num_workers={scale.num_workers}", f"+data.kwargs.image_size={scale.image_size}",
          f"+data.kwargs.n_train={scale.n_train}", f"+data.kwargs.n_test={scale.n_test}",
          f"+data.kwargs.rho={run.rho}", "+data.kwargs.seed=0",
          f"+data.kwargs.variant={run.variant}",
          f"iclmsr.enabled={str(run.iclmsr).lower()}"]
    if run.method in scale.lr:
        ov.append(f"optimizer.lr={scale.lr[run.method]}")
    for k, v in scale.method_kwargs.get(run.method, {}).items():
        ov.append(f"method_kwargs.{k}={v}")
    if run.iclmsr:
        options = dict(scale.iclmsr)
        options.update(dict(run.extra))
        ov += [f"+iclmsr.{k}={v}" for k, v in options.items()]
    return ov


def compose(scale: Scale, run: RunSpec):
    raw = cfgmod.compose(config_path(run.method), overrides_of(scale, run))
    for aug in raw.augmentations:
        aug.rrc.crop_min_scale = scale.crop_min_scale
        for key, value in scale.augment.items():
            section, name = key.split(".")
            aug[section][name] = value
    return raw, cfgmod.validate_pretrain(raw)


def train_and_evaluate(scale: Scale, run: RunSpec, out: Path, fresh: bool,
                       log: List[str]) -> Dict[str, Any]:
    folder = out / run.name
    result_path = folder / "result.json"
    if not fresh and result_path.exists() and (folder / "done.json").exists():
        return json.loads(result_path.read_text())
    raw, cfg = compose(scale, run)
    if fresh and folder.exists():
        import shutil
        shutil.rmtree(folder)
    timing = folder / "timing.json"
    if not ((folder / "done.json").exists() and timing.exists()):
        print(f"[evidence] training {run.name}", flush=True)
        start = time.perf_counter()
        pretrain(cfg, out, raw_config=raw, progress_bar=False)
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}) + "\n")
    seconds = json.loads(timing.read_text())["seconds"]
    steps = json.loads((folder / "done.json").read_text())["global_step"]
    result = {"run": run.name, "method": run.method, "iclmsr": run.iclmsr, "rho": run.rho,
              "seed": run.seed, "variant": run.variant, "extra": dict(run.extra),
              "train_seconds": seconds, "steps": steps,
              "seconds_per_step": seconds / max(1, steps)}
    result.update(evaluate(scale, cfg, folder, run))
    result["metrics"] = last_epoch_metrics(folder / "metrics.csv")
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    log.append(run.name)
    return result


def _train_in_worker(scale: Scale, run: RunSpec, out: Path, fresh: bool,
                     threads: int) -> Tuple[Dict[str, Any], bool]:
    torch.set_num_threads(threads)
    log: List[str] = []
    return train_and_evaluate(scale, run, out, fresh, log), bool(log)


def run_parallel(scale: Scale, runs: Sequence[RunSpec], out: Path, fresh: bool, jobs: int,
                 trained: List[str]) -> Dict[str, Dict[str, Any]]:
    """``jobs`` runs at a time, each in its own process (a tiny model does not fill many cores
    alone); the CPU threads are shared out between the processes."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: Dict[str, Dict[str, Any]] = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {run.name: pool.submit(_train_in_worker, scale, run, out, fresh, threads)
                   for run in runs}
        for name, future in futures.items():
            results[name], was_trained = future.result()
            if was_trained:
                trained.append(name)
    return results


def last_epoch_metrics(path: Path) -> Dict[str, float]:
    """The last logged epoch-level value of every ``train_*_epoch`` column of metrics.csv."""
    import csv

    if not path.exists():
        return {}
    out: Dict[str, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.endswith("_epoch") and value not in ("", None):
                    out[key[:-len("_epoch")]] = float(value)
    return out


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
_FEATURE_CACHE: Dict[Tuple[str, str], Any] = {}


def _normalisation(cfg) -> Tuple[Sequence[float], Sequence[float]]:
    aug = cfg.augmentations[0]
    return cfgmod.dataset_mean_std("builtin", aug.mean, aug.std)


def _backbone(cfg, folder: Path):
    return load_backbone(folder / "checkpoints" / "last.ckpt", cfg.backbone, "builtin",
                         cfg.augmentations[0].crop_size)


def evaluate(scale: Scale, cfg, folder: Path, run: RunSpec,
             test_rhos: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """5-NN (cosine, T = 0.07) and linear top-1 on the test sets; the probe's training set is
    the pre-training variant (``bank=train``) and, for the 2x2 table, also the test variant."""
    backbone = _backbone(cfg, folder)
    mean, std = _normalisation(cfg)
    crop = cfg.augmentations[0].crop_size
    feats = lambda ds: extract_features(backbone, ds, mean, std, crop)  # noqa: E731
    rhos = list(test_rhos) if test_rhos is not None else [run.rho]
    train_spec = spec_of(scale, run.rho)
    banks = {v: feats(BuiltinDataset(None, "train", v, train_spec)) for v in ("full", "fg")}
    out: Dict[str, Any] = {"knn": {}, "linear": {}, "knn_matched": {}, "linear_matched": {}}
    for rho in rhos:
        spec = spec_of(scale, rho)
        tests = {t: feats(BuiltinDataset(None, "test", t, spec)) for t in TESTS}
        key = f"{rho:g}"
        bank = banks[run.variant]
        out["knn"][key] = {t: knn_accuracy(*bank, *tests[t], k=KNN_K).top1 for t in TESTS}
        out["linear"][key] = {t: r.top1 for t, r in linear_probe(
            *bank, tests, epochs=scale.linear_epochs, seed=run.seed).items()}
        # probe trained on the test variant (fg for fg, full for full and decorrelated)
        matched = {t: banks["fg" if t == "fg" else "full"] for t in TESTS}
        out["knn_matched"][key] = {t: knn_accuracy(*matched[t], *tests[t], k=KNN_K).top1
                                   for t in TESTS}
        lin_fg = linear_probe(*banks["fg"], {"fg": tests["fg"]}, epochs=scale.linear_epochs,
                              seed=run.seed)
        lin_full = linear_probe(*banks["full"], {t: tests[t] for t in ("full", "decorrelated")},
                                epochs=scale.linear_epochs, seed=run.seed)
        out["linear_matched"][key] = {"fg": lin_fg["fg"].top1, "full": lin_full["full"].top1,
                                      "decorrelated": lin_full["decorrelated"].top1}
    if run.iclmsr:
        out["strata"] = strata_statistics(cfg, folder, backbone, spec_of(scale, run.rho))
    return out


def load_msr(cfg, folder: Path, feature_dim: int) -> MetaSemanticRegularizer:
    options = cfg.iclmsr
    msr = MetaSemanticRegularizer(feature_dim, options.n_strata, options.msr_depth,
                                  options.msr_width)
    state = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    msr.load_state_dict({k[len("msr."):]: v for k, v in state.items() if k.startswith("msr.")})
    return msr.eval()


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    x = images.float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def channel_preference(backbone, spec: BuiltinSpec, mean, std, limit: int = 1000) -> torch.Tensor:
    """Per channel of Z: (r_fg - r_bg) / (r_fg + r_bg), r_fg the mean pooled activation on the
    foreground alone (on gray), r_bg on the background alone (the object painted gray)."""
    data = load_builtin(spec, "test")
    full, mask = data["full"][:limit], data["mask"][:limit]
    fg = foreground_only(full, mask)
    bg = np.where(mask[:, None].astype(bool), np.uint8(NEUTRAL_GRAY), full)
    pooled = lambda a: backbone.forward_head(  # noqa: E731
        backbone.forward_features(_normalise(torch.from_numpy(a), mean, std)))
    r_fg, r_bg = pooled(fg).mean(0), pooled(bg).mean(0)
    return (r_fg - r_bg) / (r_fg.abs() + r_bg.abs() + 1e-8)


@torch.no_grad()
def strata_statistics(cfg, folder: Path, backbone, spec: BuiltinSpec) -> Dict[str, float]:
    """How distinct the strata are and how much of f_msr's weight sits on foreground channels."""
    mean, std = _normalisation(cfg)
    msr = load_msr(cfg, folder, backbone.feature_channels)
    data = load_builtin(spec, "test")
    raw = _normalise(torch.from_numpy(data["full"][:1000]), mean, std)
    a = msr(raw)  # (B, n, c), unit rows
    n = a.shape[1]
    gram = a @ a.transpose(1, 2)
    off = ~torch.eye(n, dtype=torch.bool)
    pref = channel_preference(backbone, spec, mean, std)
    fg_channels = (pref > 0).float()
    share = (a * fg_channels).sum(-1) / a.sum(-1)  # (B, n) L1 share on fg-preferring channels
    mean_a = F.normalize(a.mean(0), dim=-1)  # (n, c) the image-average of each stratum
    return {
        "pairwise_cos": float(gram[:, off].mean()),
        "cross_image_cos": float((F.normalize(a[:, 0], dim=-1) @ F.normalize(a[:, 0], dim=-1).T)
                                 .mean()),
        "fg_channel_fraction": float(fg_channels.mean()),
        "fg_share_mean": float(share.mean()),
        "fg_share_best_stratum": float(share.max(1).values.mean()),
        "pref_weighted": float(((a * pref).sum(-1) / a.sum(-1)).mean()),
        "pref_uniform": float(pref.mean()),
        "max_weight": float((a ** 2).max(-1).values.mean()),
        "entropy_eff_channels": float((1.0 / (a ** 4).sum(-1)).mean()),
        "n_strata": n,
        "strata_vs_mean_cos": float((F.normalize(a, dim=-1) * mean_a).sum(-1).mean()),
    }


# ----------------------------------------------------------------------------------------------
# Strata maps (part 4)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def stratum_maps(backbone, x: torch.Tensor, weights: torch.Tensor, patch: int = 8,
                 stride: int = 4) -> torch.Tensor:
    """Where each weighted feature map sum_c w_tc Z_c is active: (B, n, H, W) in [0, 1].

    With a spatial last map (h, w > 1) it is the map itself, ReLU'd and upsampled. With a 1x1
    last map (the CPU scale's standard stem at 32 px) there is no spatial map to show, so the
    drop of the stratum's pooled score when an 8x8 gray patch hides each position (occlusion
    sensitivity) stands in for it."""
    B, _, H, W = x.shape
    w = channel_weights(weights)  # (B, n, c)
    z = backbone.forward_features(x)
    if z.shape[-1] > 1 and z.shape[-2] > 1:
        maps = torch.einsum("bnc,bchw->bnhw", w, z).relu()
        maps = F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False)
    else:
        score = lambda inp: torch.einsum(  # noqa: E731
            "bnc,bc->bn", w, backbone.forward_head(backbone.forward_features(inp)))
        base = score(x)
        gray = x.new_zeros(())  # normalised gray is close to 0
        maps = x.new_zeros(B, w.shape[1], H, W)
        count = x.new_zeros(1, 1, H, W)
        for i in range(0, H - patch + 1, stride):
            for j in range(0, W - patch + 1, stride):
                occ = x.clone()
                occ[..., i:i + patch, j:j + patch] = gray
                drop = (base - score(occ)).relu()  # (B, n)
                maps[..., i:i + patch, j:j + patch] += drop[..., None, None]
                count[..., i:i + patch, j:j + patch] += 1
        maps = maps / count.clamp_min(1)
    lo = maps.flatten(2).min(-1).values[..., None, None]
    hi = maps.flatten(2).max(-1).values[..., None, None]
    return (maps - lo) / (hi - lo + 1e-8)


def plot_strata(scale: Scale, icl: RunSpec, base: RunSpec, out: Path, path: Path,
                count: int = 4) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, icfg = compose(scale, icl)
    _, bcfg = compose(scale, base)
    ifolder, bfolder = out / icl.name, out / base.name
    if not (ifolder / "done.json").exists() or not (bfolder / "done.json").exists():
        return None
    mean, std = _normalisation(icfg)
    data = load_builtin(spec_of(scale, icl.rho), "test")
    idx = [int(np.nonzero(data["labels"] == k)[0][0]) for k in range(count)]
    images = torch.from_numpy(data["full"][idx])
    masks = data["mask"][idx]
    x = _normalise(images, mean, std)
    ibb, bbb = _backbone(icfg, ifolder), _backbone(bcfg, bfolder)
    msr = load_msr(icfg, ifolder, ibb.feature_channels)
    a = msr(x)
    n = a.shape[1]
    imaps = stratum_maps(ibb, x, a)
    c = bbb.feature_channels
    bmaps = stratum_maps(bbb, x, torch.full((len(idx), 1, c), 1.0 / math.sqrt(c)))
    cols = 2 + n
    fig, axes = plt.subplots(2 * count, cols, figsize=(cols * 0.9, 2 * count * 0.95))
    for r in range(count):
        img = images[r].permute(1, 2, 0).numpy()
        for row, label in ((2 * r, "ICL-MSR"), (2 * r + 1, "base")):
            axes[row, 0].imshow(img)
            axes[row, 0].set_ylabel(label, fontsize=6)
            axes[row, 1].imshow(masks[r], cmap="gray")
            for t in range(n):
                ax = axes[row, 2 + t]
                m = imaps[r, t] if label == "ICL-MSR" else (bmaps[r, 0] if t == 0 else None)
                if m is not None:
                    ax.imshow(img)
                    ax.imshow(m.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                    if r == 0 and label == "ICL-MSR":
                        ax.set_title(f"a_{t + 1}", fontsize=6)
                    if label == "base":
                        ax.set_title("uniform", fontsize=6)
    axes[0, 0].set_title("image", fontsize=6)
    axes[0, 1].set_title("mask", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------
SENSITIVITY = {
    "lambda_msr": [0.3, 3.0],
    "n_strata": [2, 4],
    "meta_grad": ["finite_difference"],
}
DEFAULTS = {"lambda_msr": 1.0, "n_strata": 8, "meta_grad": "second_order"}


def motivation_runs(rhos: Sequence[float]) -> List[RunSpec]:
    return ([RunSpec("simclr", False, max(rhos), 0, "fg")]
            + [RunSpec("simclr", False, r, 0, "full") for r in sorted(rhos, reverse=True)])


def effect_runs(methods, rhos, seeds) -> List[RunSpec]:
    runs = []
    for seed in range(seeds):
        for rho in sorted(rhos, reverse=True):
            for method in methods:
                runs += [RunSpec(method, False, rho, seed), RunSpec(method, True, rho, seed)]
    return runs


def sensitivity_runs(params: Sequence[str]) -> List[RunSpec]:
    runs = [RunSpec("simclr", False, 0.95, 0), RunSpec("simclr", True, 0.95, 0)]
    for key in params:
        runs += [RunSpec("simclr", True, 0.95, 0, "full", ((key, v),)) for v in SENSITIVITY[key]]
    return runs


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def motivation_section(results: Dict[str, Dict], rhos, scale: Scale, out: Path,
                       plots: Path) -> str:
    fg = results.get(motivation_runs(rhos)[0].name)
    lines = ["## 1. Motivation: the 2x2 table (SimCLR, seed 0)", ""]
    if fg is None:
        return "\n".join(lines + ["not run", ""])
    if any(f"{r:g}" not in fg.get("cross_rho", {}).get("knn", {}) for r in rhos):
        _, cfg = compose(scale, motivation_runs(rhos)[0])
        fg["cross_rho"] = evaluate(scale, cfg, out / fg["run"], motivation_runs(rhos)[0],
                                   test_rhos=sorted(rhos))
        (out / fg["run"] / "result.json").write_text(json.dumps(fg, indent=1) + "\n")
    lines += ["Probe / k-NN bank trained on the pre-training variant (the paper's setting: the "
              "whole pipeline sees one kind of image, the test another). 'full' is the test image "
              "with its class-correlated background, 'decorr.' the same object on a background "
              "drawn independently of the class. Chance = 10.", ""]
    rows, verdicts = [], []
    for rho in sorted(rhos):
        full = results.get(RunSpec("simclr", False, rho, 0, "full").name)
        key = f"{rho:g}"
        cr = fg["cross_rho"]
        if full is None or key not in cr["knn"]:
            continue
        for probe in ("knn", "linear"):
            ff, fF = full[probe][key]["full"], full[probe][key]["fg"]
            fd = full[probe][key]["decorrelated"]
            gg, gF, gd = cr[probe][key]["fg"], cr[probe][key]["full"], cr[probe][key]["decorrelated"]
            rows.append([f"{rho:g}", "5-NN" if probe == "knn" else "linear", f"{ff:.1f}",
                         f"{fF:.1f}", f"{fd:.1f}", f"{gF:.1f}", f"{gg:.1f}", f"{gd:.1f}"])
            ok1, ok2, ok3 = ff > fF, gg > gF, gg >= max(ff, fF, gF)
            ok1d, ok2d = ff > fd, gg > gd
            verdicts.append(f"rho {rho:g}, {'5-NN' if probe == 'knn' else 'linear'}: "
                            f"trF/teF > trF/teFG {'yes' if ok1 else 'no'}; "
                            f"trFG/teFG > trFG/teF {'yes' if ok2 else 'no'}; "
                            f"trFG/teFG best {'yes' if ok3 else 'no'} "
                            f"(with the decorrelated test as 'full' for the train-fg model: "
                            f"trFG/teFG > trFG/teDecor {'yes' if ok2d else 'no'}; "
                            f"trF/teF > trF/teDecor {'yes' if ok1d else 'no'}) -> "
                            f"paper ordering {'HOLDS' if ok1 and ok2 and ok3 else 'does not hold'}")
    gg = fg["cross_rho"]["knn"][f"{max(rhos):g}"]["fg"]
    verdicts.insert(0, f"precondition (design notes, section 5): SimCLR trained on foregrounds "
                    f"scores {gg:.1f} 5-NN top-1 on foregrounds (chance {CHANCE:g}); far above "
                    f"chance (>= 2x chance): {'yes' if gg >= 2 * CHANCE else 'NO: the orderings below are at chance level and say little'}")
    lines.append(table(["rho", "probe", "trF/teF", "trF/teFG", "trF/teDecor", "trFG/teF",
                        "trFG/teFG", "trFG/teDecor"], rows))
    lines += ["", *[f"* {v}" for v in verdicts], ""]
    rows = []
    for rho in sorted(rhos):
        full = results.get(RunSpec("simclr", False, rho, 0, "full").name)
        key = f"{rho:g}"
        if full is None or key not in fg["cross_rho"]["knn_matched"]:
            continue
        m, g = full["knn_matched"][key], fg["cross_rho"]["knn_matched"][key]
        rows.append([f"{rho:g}", f"{m['full']:.1f}", f"{m['fg']:.1f}", f"{m['decorrelated']:.1f}",
                     f"{g['full']:.1f}", f"{g['fg']:.1f}", f"{g['decorrelated']:.1f}"])
    lines += ["5-NN with the bank matched to the test variant (fg bank for fg test images, full "
              "bank otherwise): this isolates what the features encode from the probe's shift.",
              "", table(["rho", "trF/teF", "trF/teFG", "trF/teDecor", "trFG/teF", "trFG/teFG",
                         "trFG/teDecor"], rows), ""]
    plot_motivation(results, fg, rhos, plots / "evidence_motivation.png")
    lines += ["![motivation](evidence_motivation.png)", ""]
    return "\n".join(lines)


def plot_motivation(results, fg, rhos, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rhos = [r for r in sorted(rhos) if RunSpec("simclr", False, r, 0, "full").name in results]
    fig, axes = plt.subplots(1, len(rhos), figsize=(3.2 * len(rhos), 2.8), squeeze=False)
    for ax, rho in zip(axes[0], rhos):
        full = results[RunSpec("simclr", False, rho, 0, "full").name]["knn"][f"{rho:g}"]
        g = fg["cross_rho"]["knn"][f"{rho:g}"]
        grid = np.array([[full["full"], full["fg"]], [g["full"], g["fg"]]])
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=100)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=9)
        ax.set_xticks([0, 1], ["test full", "test fg"], fontsize=8)
        ax.set_yticks([0, 1], ["train full", "train fg"], fontsize=8)
        ax.set_title(f"SimCLR 5-NN top-1, rho={rho:g}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _arm(results, method, icl, rho, seeds, extra=()) -> List[Dict]:
    return [results[n] for n in (RunSpec(method, icl, rho, s, "full", extra).name
                                 for s in range(seeds)) if n in results]


def _target_line(method: str, rho: float, key: str, base: List[Dict], icl: List[Dict]) -> str:
    """The issue's targets: at rho >= 0.95 the fg-test 5-NN gain is >= 2 points over 3 seeds and
    larger than the pooled (sample) std of the two arms; at rho 0 no test set loses > 0.5. The
    seed-paired difference (same seed, same data order) is given beside the unpaired one."""
    b = [r["knn"][key]["fg"] for r in base]
    i = [r["knn"][key]["fg"] for r in icl]
    d = statistics.mean(i) - statistics.mean(b)
    pooled = (math.sqrt((statistics.variance(b) + statistics.variance(i)) / 2)
              if len(b) > 1 and len(i) > 1 else None)
    paired = [ri["knn"][key]["fg"] - rb["knn"][key]["fg"] for rb in base for ri in icl
              if rb["seed"] == ri["seed"]]
    seeds = f"seeds {len(b)}/{len(i)}"
    pooled_txt = f"pooled std {pooled:.1f}" if pooled is not None else "pooled std n/a"
    paired_txt = ""
    if paired:
        spread = f" ± {statistics.stdev(paired):.1f}" if len(paired) > 1 else ""
        paired_txt = f"; seed-paired {statistics.mean(paired):+.1f}{spread} over {len(paired)}"
    if rho >= 0.95:
        met = d >= 2.0 and len(b) >= 3 and len(i) >= 3 and pooled is not None and d > pooled
        return (f"{method}, rho {rho:g}: fg-test 5-NN change {d:+.1f} points ({pooled_txt}, "
                f"{seeds}{paired_txt}); target >= +2.0 and > pooled std over 3 seeds: "
                f"{'MET' if met else 'NOT MET'}")
    changes = {t: statistics.mean([r["knn"][key][t] for r in icl])
               - statistics.mean([r["knn"][key][t] for r in base]) for t in TESTS}
    text = (f"{method}, rho {rho:g}: 5-NN change " + ", ".join(f"{t} {v:+.1f}"
                                                              for t, v in changes.items())
            + f" ({seeds}{paired_txt} on fg)")
    if rho == 0.0:
        worst = min(changes.values())
        text += f"; target: no test set below -0.5: {'MET' if worst >= -0.5 else 'NOT MET'}"
    return text


def effect_section(results, methods, rhos, seeds, plots: Path) -> str:
    lines = ["## 2. Effect of ICL-MSR (trained on full images; mean ± std over the seeds run)",
             ""]
    rows, targets = [], []
    for method in methods:
        for rho in sorted(rhos):
            base = _arm(results, method, False, rho, seeds)
            icl = _arm(results, method, True, rho, seeds)
            if not base and not icl:
                continue
            key = f"{rho:g}"
            for name, arm in (("base", base), ("+ICL-MSR", icl)):
                if not arm:
                    continue
                rows.append([method, f"{rho:g}", name, str(len(arm))]
                            + [fmt([r["knn"][key][t] for r in arm]) for t in TESTS]
                            + [fmt([r["linear"][key][t] for r in arm]) for t in TESTS]
                            + [f"{statistics.mean(r['seconds_per_step'] for r in arm):.2f}"])
            if base and icl:
                targets.append(_target_line(method, rho, key, base, icl))
    header = (["method", "rho", "arm", "seeds"] + [f"5-NN {t}" for t in TESTS]
              + [f"linear {t}" for t in TESTS] + ["s/step"])
    lines += [table(header, rows), "", "Targets:", ""] + [f"* {t}" for t in targets] + [""]
    diag = []
    for method in methods:
        for rho in sorted(rhos):
            for r in _arm(results, method, True, rho, seeds):
                st, m = r.get("strata", {}), r.get("metrics", {})
                diag.append([r["run"], f"{m.get('train_msr_loss', float('nan')):.3f}",
                             f"{m.get('train_uni_loss', float('nan')):.3f}",
                             f"{m.get('train_meta_grad_norm', float('nan')):.2e}",
                             f"{st.get('pairwise_cos', float('nan')):.3f}",
                             f"{st.get('cross_image_cos', float('nan')):.3f}",
                             f"{st.get('entropy_eff_channels', float('nan')):.1f}"])
    lines += ["Diagnostics of the ICL-MSR runs (last epoch means from metrics.csv; strata on 1000 "
              "test images): L_msr, L_uni, the meta-gradient norm, the mean pairwise cosine of "
              "one image's a_t (1 = identical strata), the mean cosine of a_1 across images "
              "(1 = f_msr ignores the image), and the effective number of channels of a_t "
              "(1 / sum a^4; c for uniform).", "",
              table(["run", "L_msr", "L_uni", "meta grad norm", "pairwise cos a_t",
                     "cross-image cos", "eff. channels"], diag), ""]
    plot_effect(results, methods, rhos, seeds, plots / "evidence_effect.png")
    lines += ["![effect](evidence_effect.png)", ""]
    return "\n".join(lines)


def plot_effect(results, methods, rhos, seeds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(m, r) for m in methods for r in sorted(rhos)
             if _arm(results, m, False, r, seeds) and _arm(results, m, True, r, seeds)]
    if not cells:
        return
    fig, axes = plt.subplots(1, len(TESTS), figsize=(3.3 * len(TESTS), 3.0), sharey=True)
    xs = np.arange(len(cells))
    for ax, test in zip(axes, TESTS):
        for k, (icl, label) in enumerate(((False, "base"), (True, "+ICL-MSR"))):
            vals = [[r["knn"][f"{rho:g}"][test] for r in _arm(results, m, icl, rho, seeds)]
                    for m, rho in cells]
            ax.bar(xs + (k - 0.5) * 0.38, [np.mean(v) for v in vals], 0.38,
                   yerr=[np.std(v) if len(v) > 1 else 0 for v in vals], label=label, capsize=2)
        ax.axhline(CHANCE, color="gray", lw=0.8, ls="--")
        ax.set_xticks(xs, [f"{m}\nrho={r:g}" for m, r in cells], fontsize=6)
        ax.set_title(f"5-NN top-1, test {test}", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sensitivity_section(results, params) -> str:
    lines = ["## 3. Sensitivity (SimCLR, rho = 0.95, seed 0)", ""]
    base = results.get(RunSpec("simclr", False, 0.95, 0).name)
    rows = []
    if base:
        rows.append(["base (ICL-MSR off)", "-"] + [f"{base['knn']['0.95'][t]:.1f}" for t in TESTS]
                    + [f"{base['train_seconds']:.0f}", f"{base['seconds_per_step']:.2f}", "-"])
    default = results.get(RunSpec("simclr", True, 0.95, 0).name)
    if default:
        rows.append(["ICL-MSR defaults", "lambda 1, n 8, second_order"]
                    + [f"{default['knn']['0.95'][t]:.1f}" for t in TESTS]
                    + [f"{default['train_seconds']:.0f}", f"{default['seconds_per_step']:.2f}",
                       f"{default['strata']['pairwise_cos']:.3f}"])
    for key in params:
        for v in SENSITIVITY[key]:
            r = results.get(RunSpec("simclr", True, 0.95, 0, "full", ((key, v),)).name)
            if r:
                rows.append([key, str(v)] + [f"{r['knn']['0.95'][t]:.1f}" for t in TESTS]
                            + [f"{r['train_seconds']:.0f}", f"{r['seconds_per_step']:.2f}",
                               f"{r['strata']['pairwise_cos']:.3f}"])
    lines += [table(["setting", "value", "5-NN full", "5-NN fg", "5-NN decorr.", "train s",
                     "s/step", "pairwise cos a_t"], rows), ""]
    return "\n".join(lines)


def strata_section(results, scale, out: Path, plots: Path) -> str:
    lines = ["## 4. What the strata learn (SimCLR + ICL-MSR, rho = 0.95, seed 0)", ""]
    icl, base = RunSpec("simclr", True, 0.95, 0), RunSpec("simclr", False, 0.95, 0)
    r = results.get(icl.name)
    if r is None:
        return "\n".join(lines + ["not run", ""])
    st = r["strata"]
    path = plot_strata(scale, icl, base, out, plots / "evidence_strata.png")
    lines += [table(["quantity", "value"], [
        ["channels of Z preferring the foreground (fg-only response > bg-only response)",
         f"{100 * st['fg_channel_fraction']:.1f}% (= the share of a uniform weighting)"],
        ["mean L1 share of a_t on those channels (all strata)", f"{100 * st['fg_share_mean']:.1f}%"],
        ["same, the most foreground-heavy stratum of each image",
         f"{100 * st['fg_share_best_stratum']:.1f}%"],
        ["a_t-weighted mean channel preference (uniform weighting)",
         f"{st['pref_weighted']:+.3f} ({st['pref_uniform']:+.3f})"],
        ["mean pairwise cosine of one image's a_t", f"{st['pairwise_cos']:.3f}"],
        ["effective channels per a_t (of c)", f"{st['entropy_eff_channels']:.1f}"],
    ]), ""]
    if path:
        lines += ["![strata](evidence_strata.png)", "",
                  "Rows: ICL-MSR (one column per a_t) and the base method (uniform weights) on the "
                  "same test images. " + ("The last map is 1x1 at this scale, so each panel is "
                  "the occlusion sensitivity of the stratum's pooled score (8x8 gray patch, "
                  "stride 4)." if scale.name == "cpu" else
                  "Each panel is ReLU(sum_c sqrt(c) a_tc Z_c) upsampled from the 4x4 last map."),
                  ""]
    return "\n".join(lines)


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"{os.cpu_count()}-core CPU, no GPU"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--only", default=",".join(PARTS),
                   help="comma-separated parts: " + ", ".join(PARTS))
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm of the effect grid")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rhos", default=",".join(f"{r:g}" for r in RHOS))
    p.add_argument("--sensitivity", default=",".join(SENSITIVITY),
                   help="which sensitivity axes: " + ", ".join(SENSITIVITY))
    p.add_argument("--epochs", type=int, help="override the scale's pre-training epochs")
    p.add_argument("--n-train", type=int, help="override the scale's training set size")
    p.add_argument("--n-test", type=int, help="override the scale's test set size")
    p.add_argument("--accelerator", help="override the scale's accelerator (cpu, gpu)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at the same time, one process each (for many CPU cores; "
                        "on one GPU the processes time-share it)")
    p.add_argument("--out", default="runs/evidence", help="folder of the runs (checkpoints)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                   help="folder of evidence.md and the PNGs")
    p.add_argument("--report-only", action="store_true", help="no training: tables from --out")
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    args = p.parse_args(argv)
    scale = replace(SCALES[args.scale])  # a copy: the overrides below stay local
    if args.epochs:
        scale.epochs = args.epochs
    if args.n_train:
        scale.n_train = args.n_train
    if args.n_test:
        scale.n_test = args.n_test
    if args.accelerator:
        scale.accelerator = args.accelerator
    parts = [x for x in args.only.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"--only {bad[0]!r}: expected one of {', '.join(PARTS)}")
    methods = [m for m in args.methods.split(",") if m]
    rhos = [float(r) for r in args.rhos.split(",") if r]
    params = [s for s in args.sensitivity.split(",") if s]
    out, plots = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    runs: List[RunSpec] = []
    if "motivation" in parts:
        runs += motivation_runs(rhos)
    if "strata" in parts or "sensitivity" in parts:
        runs += [RunSpec("simclr", False, 0.95, 0), RunSpec("simclr", True, 0.95, 0)]
    if "effect" in parts:
        runs += effect_runs(methods, rhos, args.seeds)
    if "sensitivity" in parts:
        runs += sensitivity_runs(params)
    seen, ordered = set(), []
    for r in runs:
        if r.name not in seen:
            seen.add(r.name)
            ordered.append(r)
    started = datetime.now(timezone.utc)
    command = "python benchmarks/evidence.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} {command}"
    if not args.report_only:
        with open(out / "commands.txt", "a") as f:
            f.write(f"{started.strftime('%Y-%m-%d %H:%M UTC')}\t{command}\n")
    trained: List[str] = []
    results: Dict[str, Dict] = {}
    if args.report_only:
        pass  # the finished runs are read below
    elif args.jobs <= 1:
        for run in ordered:
            results[run.name] = train_and_evaluate(scale, run, out, args.fresh, trained)
    else:
        results.update(run_parallel(scale, ordered, out, args.fresh, args.jobs, trained))
    # every finished run in --out is read (earlier commands with other options included)
    for path in sorted(out.glob("*/result.json")):
        r = json.loads(path.read_text())
        results.setdefault(r["run"], r)

    history = (out / "commands.txt").read_text().splitlines() if (out / "commands.txt").exists() else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    head = [
        "# ICL-MSR evidence on the built-in confounded dataset", "",
        f"* this report: `{command}`",
        *[f"* command, started {line.split(chr(9))[0]}: `{line.split(chr(9))[1]}`"
          for line in history],
        f"* date: {started.strftime('%Y-%m-%d %H:%M UTC')}; hardware: {hardware()}; "
        f"torch {torch.__version__}, Python {platform.python_version()}, commit {commit}",
        f"* scale `{scale.name}`: {scale.backbone} ({'CIFAR' if scale.cifar else 'standard'} stem), "
        f"{scale.image_size} px, {scale.n_train} train / {scale.n_test} test images, 10 classes, "
        f"batch {scale.batch_size}, {scale.epochs} epochs, crops of scale "
        f"{scale.crop_min_scale}-1.0, augmentation changes {scale.augment or 'none'}, learning rates {scale.lr or 'of the configs'}, "
        f"projectors {scale.method_kwargs or 'of the configs'}, ICL-MSR options "
        f"{scale.iclmsr or 'defaults'} (others at their defaults: n_strata 8, lambda_msr 1, "
        f"gamma_uni 0.1, meta_grad second_order, meta_every 1)",
        f"* evaluation: 5-NN (cosine, T = 0.07) and a linear probe ({scale.linear_epochs} epochs, "
        f"SGD) on frozen pooled features; probe trained on the {scale.n_train} training images; "
        f"chance = {CHANCE:g}%. Runs trained by this command: {len(trained)}; results read: "
        f"{len(results)}.", ""]
    sections = []
    if "motivation" in parts:
        sections.append(motivation_section(results, rhos, scale, out, plots))
    if "effect" in parts:
        sections.append(effect_section(results, methods, rhos, args.seeds, plots))
    if "sensitivity" in parts:
        sections.append(sensitivity_section(results, params))
    if "strata" in parts:
        sections.append(strata_section(results, scale, out, plots))
    text = "\n".join(head + sections)
    report = plots / "evidence.md"
    # a hand-written reading of the numbers, headed by NOTES, survives regeneration
    if report.exists() and NOTES in report.read_text():
        text += "\n" + report.read_text()[report.read_text().index(NOTES):].rstrip("\n")
    report.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
