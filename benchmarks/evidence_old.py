"""Evidence for ICL-MSR: one command regenerates every table and plot of
``benchmarks/results/evidence.md``.

    python benchmarks/evidence.py --scale cpu --out runs/evidence --jobs 2
    python benchmarks/evidence.py --scale cpu --only options --methods simclr --rhos 0.95
    python benchmarks/evidence.py --scale cpu --only motivation,strata --masks coco \\
        --annotations coco/annotations/instances_val2017.json --image-root coco/val2017
    python benchmarks/evidence.py --scale gpu --out runs/evidence-gpu --jobs 4

Parts (``--only`` picks some, comma-separated; default all but ``options``):

* ``motivation``: the paper's 2x2 table. SimCLR pre-trained on full images and on
  foreground-only images, each tested on full, foreground-only and decorrelated-background test
  images (5-NN top-1 and a linear probe trained on the pre-training variant; also 5-NN with the
  bank matched to the test variant). On the built-in set the train-fg model is tested against
  the test sets of every rho. With ``--masks`` the table is made on a dataset with real
  segmentation masks instead (test variants full / fg / bg, see below).
* ``effect``: SimCLR, BYOL, Barlow Twins, each with and without ICL-MSR (the arms differ in
  ``iclmsr.enabled`` only, plus ``--iclmsr`` options of the ICL-MSR arm), ``--seeds`` seeds,
  rho in ``--rhos``: 5-NN and linear top-1 on full / fg / decorrelated test images, the targets,
  and the strata diagnostics of every ICL-MSR run.
* ``sensitivity``: SimCLR at rho = 0.95, seed 0: lambda_msr, n_strata, meta_grad.
* ``strata``: what f_msr's strata pick (SimCLR + ICL-MSR, rho 0.95, seed 0): the strata
  statistics and the stratum maps (``solo_iclmsr.cli.strata.render_strata``). With ``--masks``
  also an ICL-MSR run on the masked set, with the foreground statistics on its held-out images.
* ``options``: the ICL-MSR options of the failure analysis (design notes, section 7), each an
  ``iclmsr.*`` key with the paper's reading as one value (``OPTION_SETS``): the paper reading,
  one factor at a time, and the combinations that address more than one cause. Per run: the
  strata criteria (``criteria``), the foreground share against a uniform weighting, the
  meta-gradient norm of the L_ct(theta') part and of the L_uni part, 5-NN top-1 on full / fg /
  decorrelated test images and the time per step; over several seeds, the seed-paired
  difference of each combination to the paper reading. ``--combinations`` picks some.

Every run goes through the project's pipeline: ``solo_iclmsr.config.compose`` of
``configs/pretrain/builtin/<method>.yaml`` with Hydra overrides (``overrides_of``), then
``solo_iclmsr.cli.pretrain.pretrain``, which writes solo's checkpoint folder
``<out>/<run>/<method>/<version>/`` (checkpoint, ``args.json``, ``metrics.csv``). Evaluation
loads the checkpoint with ``load_pretrained`` and uses ``solo_iclmsr.evaluation`` (solo's
weighted k-NN, a linear probe) on ``builtin_eval_sets``; the strata statistics are
``strata_probe_stats`` on ``probe_set``. A run whose folder holds ``done.json`` is not trained
again and one that also holds ``result.json`` is not evaluated again, so an interrupted command
resumes where it stopped; ``--fresh`` redoes everything; ``--report-only`` reads every finished
run of ``--out``.

Masked datasets (``--masks coco --annotations FILE --image-root DIR``, or ``--masks folder
--image-root DIR [--masks-root DIR]``; ``solo_iclmsr.data.masks``): the set is split into
training and test images (``--test-fraction``, fixed seed), the chosen variant of its training
images (full or fg) is written once as an ImageFolder tree of PNGs under ``--out`` and trained
on with ``data.dataset=custom``; evaluation extracts features of the masked datasets' variants
(full, fg, bg) directly.

Scales (``SCALES``; ``--epochs``, ``--n-train``, ``--n-test``, ``--batch-size`` override them):

* ``cpu``: 2 CPU cores. timm ``test_resnet`` with the CIFAR stem (a 4x4 last map at 32 px),
  narrowed (stem width 8, stage widths 16/32/48/96) so that the grid fits the budget; sizes,
  learning rates and the measured times are given at ``SCALES``.
* ``gpu``: ResNet-18 with the CIFAR stem, 50 000 / 10 000 images, batch 256, 200 epochs, the
  methods' default projectors, f_msr at its defaults. Not run; its time is not measured.

``--jobs N`` trains N runs at a time, one process each, the CPU threads shared out
(``OMP_NUM_THREADS`` divided by N); processes on one GPU time-share it, so per-run times are
then no speed figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "configs" / "pretrain" / "builtin"
NOTES = "## Reading"
PARTS = ("motivation", "effect", "sensitivity", "strata", "options")
DEFAULT_PARTS = ("motivation", "effect", "sensitivity", "strata")
METHODS = ("simclr", "byol", "barlow_twins")
RHOS = (0.0, 0.95)
TESTS = ("full", "fg", "decorrelated")
MASK_TESTS = ("full", "fg", "bg")
KNN_K = 5
CHANCE = 10.0  # the built-in set has 10 classes
#: Strata criteria (design notes, section 7): image-dependent (every a_t's cross-image cosine
#: at most this), distinct (within-image pairwise cosine at most this), content-aligned (the
#: share of A's across-image variation explained by the class or the background type at least
#: this multiple of its chance level).
MAX_CROSS_IMAGE_COS = 0.5
MAX_WITHIN_IMAGE_COS = 0.3
MIN_EXPLAINED_OVER_CHANCE = 3.0


# ----------------------------------------------------------------------------------------------
# Scales
# ----------------------------------------------------------------------------------------------
@dataclass
class Scale:
    """Sizes and settings shared by every run of a scale."""

    name: str
    backbone: str
    backbone_kwargs: Dict[str, Any]
    image_size: int
    n_train: int
    n_test: int
    batch_size: int
    epochs: int
    crop_min_scale: float
    linear_epochs: int
    accelerator: str
    num_workers: int
    warmup_epochs: int = 0
    probe_images: int = 1000
    lr: Dict[str, float] = field(default_factory=dict)
    method_kwargs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: further Hydra overrides of one method (e.g. BYOL's momentum)
    method_overrides: Dict[str, List[str]] = field(default_factory=dict)
    #: ICL-MSR options of every ICL-MSR run of this scale (f_msr's size)
    iclmsr: Dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        kwargs = ", ".join(f"{k}={v}" for k, v in self.backbone_kwargs.items())
        return (f"{self.backbone} ({kwargs}), {self.image_size} px, {self.n_train} train / "
                f"{self.n_test} test images, batch {self.batch_size}, {self.epochs} epochs, crops "
                f"of scale {self.crop_min_scale}-1.0, learning rates {self.lr or 'of the configs'} "
                f"(before solo's batch/256 scaling), projectors {self.method_kwargs or 'of the configs'}"
                f", method settings {self.method_overrides or 'of the configs'}, f_msr "
                f"{self.iclmsr or 'at its defaults'}")


SCALES: Dict[str, Scale] = {
    "cpu": Scale(
        name="cpu", backbone="test_resnet",
        backbone_kwargs={"cifar": True, "stem_width": 8, "channels": [16, 32, 48, 96]},
        image_size=32, n_train=3584, n_test=1000, batch_size=112, epochs=4, crop_min_scale=0.2,
        linear_epochs=30, accelerator="cpu", num_workers=0, probe_images=1000,
        lr={"simclr": 0.4, "byol": 1.0, "barlow_twins": 0.3},
        method_kwargs={"simclr": {"proj_hidden_dim": 512, "proj_output_dim": 128},
                       "byol": {"proj_hidden_dim": 512, "proj_output_dim": 128,
                                "pred_hidden_dim": 512},
                       "barlow_twins": {"proj_hidden_dim": 512, "proj_output_dim": 512,
                                        "scale_loss": 1.0}},
        iclmsr={"msr_width": 32, "msr_depth": 3}),
    "gpu": Scale(
        name="gpu", backbone="resnet18", backbone_kwargs={"cifar": True}, image_size=32,
        n_train=50000, n_test=10000, batch_size=256, epochs=200, crop_min_scale=0.2,
        linear_epochs=100, accelerator="gpu", num_workers=4, warmup_epochs=10,
        probe_images=1000),
}


# ----------------------------------------------------------------------------------------------
# ICL-MSR options (design notes, section 7): name -> iclmsr overrides; () is the paper reading
# ----------------------------------------------------------------------------------------------
OPTION_SETS: Dict[str, Tuple[Tuple[str, Any], ...]] = {
    "paper": (),
    "uni=batch": (("uni_over", "batch"),),
    "input=features": (("msr_input", "features"),),
    "input=both": (("msr_input", "both"),),
    "head=softmax": (("weight_head", "softmax"),),
    "bias=false": (("weight_bias", False),),
    "vstep=optimizer": (("virtual_step", "optimizer"),),
    "batch+nobias": (("uni_over", "batch"), ("weight_bias", False)),
    "batch+features": (("msr_input", "features"), ("uni_over", "batch")),
    "batch+features+softmax+nobias": (("msr_input", "features"), ("uni_over", "batch"),
                                      ("weight_bias", False), ("weight_head", "softmax")),
    "all": (("msr_input", "features"), ("uni_over", "batch"), ("virtual_step", "optimizer"),
            ("weight_bias", False), ("weight_head", "softmax")),
}

SENSITIVITY: Dict[str, List[Any]] = {
    "lambda_msr": [0.3, 3.0],
    "n_strata": [2, 4],
    "meta_grad": ["finite_difference"],
}


def _value(v: Any) -> str:
    """A Hydra override value (and the spelling in run names)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def parse_options(items: Iterable[str]) -> Tuple[Tuple[str, Any], ...]:
    """``key=value`` strings (``iclmsr.`` optional) -> sorted ((key, typed value), ...)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--iclmsr {item!r}: expected key=value")
        out[key.strip().removeprefix("iclmsr.")] = yaml.safe_load(value)
    return tuple(sorted(out.items()))


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One pretraining run: method, arm, data and seed, and its ICL-MSR options."""

    method: str
    iclmsr: bool
    rho: float
    seed: int
    variant: str = "full"  # training images: full or fg
    options: Tuple[Tuple[str, Any], ...] = ()  # iclmsr overrides, sorted by key
    masked: str = ""  # tag of a masked dataset (then rho is unused)

    @property
    def name(self) -> str:
        arm = "icl" if self.iclmsr else "base"
        data = self.masked if self.masked else f"rho{self.rho:g}"
        tail = "".join(f"-{k}={_value(v)}" for k, v in self.options)
        return f"{self.method}-{arm}-{data}-s{self.seed}-{self.variant}{tail}"

    @property
    def key(self) -> str:
        """The key of this run's own test sets in its result (``knn[key]``)."""
        return "masked" if self.masked else f"{self.rho:g}"


def icl_run(method: str, rho: float, seed: int, options: Sequence[Tuple[str, Any]] = (),
            **kwargs: Any) -> RunSpec:
    return RunSpec(method, True, rho, seed, options=tuple(sorted(options)), **kwargs)


@dataclass
class MaskSource:
    """A dataset with segmentation masks (``solo_iclmsr.data.masks``) and its train/test split."""

    kind: str  # coco or folder
    image_root: str
    annotations: Optional[str] = None
    masks_root: Optional[str] = None
    test_fraction: float = 0.2
    image_size: int = 32

    @property
    def tag(self) -> str:
        stem = Path(self.annotations).stem if self.kind == "coco" else Path(self.image_root).name
        return f"{self.kind}_{stem}".replace("-", "_")

    def dataset(self, variant: str = "full"):
        from solo_iclmsr.data.masks import CocoMaskDataset, MaskFolderDataset

        if self.kind == "coco":
            return CocoMaskDataset(self.annotations, self.image_root, image_size=self.image_size,
                                   variant=variant)
        return MaskFolderDataset(self.image_root, image_size=self.image_size, variant=variant,
                                 masks_root=self.masks_root)

    def split(self) -> Tuple[List[int], List[int]]:
        """Training and test indices: a fixed random ``test_fraction`` of each label is held out
        (at least one image per label with two or more images)."""
        labels = np.asarray(self.dataset().labels)
        rng = np.random.default_rng(0)
        train, test = [], []
        for label in np.unique(labels):
            idx = rng.permutation(np.nonzero(labels == label)[0]).tolist()
            k = int(round(self.test_fraction * len(idx)))
            k = max(k, 1) if len(idx) > 1 else 0
            test += idx[:k]
            train += idx[k:]
        return sorted(train), sorted(test)

    def diagnostics_overrides(self) -> List[str]:
        """``diagnostics.*`` keys that make ``probe_set`` read this set."""
        out = [f"diagnostics.masks={self.kind}", f"diagnostics.image_root={self.image_root}"]
        if self.annotations:
            out.append(f"diagnostics.annotations={self.annotations}")
        if self.masks_root:
            out.append(f"diagnostics.masks_root={self.masks_root}")
        return out


def materialise(source: MaskSource, variant: str, indices: Sequence[int], folder: Path) -> Path:
    """The ``variant`` of the masked set's images ``indices`` as an ImageFolder tree of PNGs
    (``folder/<label>/<index>.png``, labels zero-padded so that folder order is label order);
    written once (a ``complete`` marker), then reused."""
    from PIL import Image

    if (folder / "complete").exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    dataset = source.dataset(variant)
    for i in indices:
        _, image, label = dataset[i]
        target = folder / f"{int(label):04d}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(target / f"{int(i):06d}.png")
    (folder / "complete").write_text(f"{len(indices)}\n")
    return folder


def overrides_of(scale: Scale, run: RunSpec, folder: Path,
                 train_path: Optional[Path] = None) -> List[str]:
    """The Hydra overrides of one run (on ``configs/pretrain/builtin/<method>.yaml``)."""
    # quoted: run names and folders may hold '=' (the options of a run)
    ov = [f"name='{run.name}'", f"++seed={run.seed}", f"backbone.name={scale.backbone}",
          *[f"++backbone.kwargs.{k}={_value(v)}" for k, v in scale.backbone_kwargs.items()],
          f"max_epochs={scale.epochs}", f"optimizer.batch_size={scale.batch_size}",
          f"++scheduler.warmup_epochs={scale.warmup_epochs}", f"accelerator={scale.accelerator}",
          f"data.num_workers={scale.num_workers}",
          f"augmentations.0.rrc.crop_min_scale={scale.crop_min_scale}",
          f"augmentations.0.crop_size={scale.image_size}",
          f"iclmsr.enabled={_value(run.iclmsr)}", f"checkpoint.dir='{folder}'",
          "auto_resume.enabled=False", "++enable_progress_bar=False", "++limit_val_batches=0",
          # the strata are probed once, after training, by the evaluation
          "++diagnostics.enabled=false"]
    if run.masked:
        ov += ["data.dataset=custom", f"data.train_path='{train_path}'", "++data.val_path=null",
               f"++data.image_size={scale.image_size}"]
    else:
        ov += [f"++data.builtin.image_size={scale.image_size}",
               f"++data.builtin.n_train={scale.n_train}", f"++data.builtin.n_test={scale.n_test}",
               f"++data.builtin.rho={run.rho:g}", "++data.builtin.seed=0",
               f"++data.builtin.variant={run.variant}"]
    if run.method in scale.lr:
        ov.append(f"optimizer.lr={scale.lr[run.method]}")
    ov += [f"++method_kwargs.{k}={_value(v)}"
           for k, v in scale.method_kwargs.get(run.method, {}).items()]
    ov += scale.method_overrides.get(run.method, [])
    if run.iclmsr:
        options = dict(scale.iclmsr)
        options.update(dict(run.options))
        ov += [f"++iclmsr.{k}={_value(v)}" for k, v in sorted(options.items())]
    return ov


def compose_run(scale: Scale, run: RunSpec, folder: Path, train_path: Optional[Path] = None):
    from solo_iclmsr.config import compose

    return compose(str(CONFIGS), run.method, overrides_of(scale, run, folder, train_path))


def last_metrics(path: Path) -> Dict[str, float]:
    """The last logged value of every column of solo's ``metrics.csv`` (``_epoch`` dropped)."""
    out: Dict[str, float] = {}
    if not path.exists():
        return out
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key not in ("epoch", "step") and value not in ("", None):
                    out[key.removesuffix("_epoch")] = float(value)
    return out


def train(scale: Scale, run: RunSpec, out: Path, masks: Optional[MaskSource] = None
          ) -> Dict[str, Any]:
    """Pretrain one run (unless ``<out>/<run>/done.json`` exists); returns ``done.json``."""
    from solo_iclmsr.cli.pretrain import pretrain

    folder = out / run.name
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    if folder.exists():  # an interrupted run starts over
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    train_path = None
    if run.masked:
        train_idx, _ = masks.split()
        train_path = materialise(masks, run.variant, train_idx,
                                 out / "_masked" / f"{masks.tag}-{run.variant}")
    cfg = compose_run(scale, run, folder, train_path)
    print(f"[evidence] training {run.name}", flush=True)
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = pretrain(cfg)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    record = {"checkpoint": str(result.last_checkpoint), "folder": str(result.folder),
              "steps": result.global_step, "seconds": wall, "cpu_seconds": cpu,
              "threads": torch.get_num_threads(), "load_start": load,
              "load_end": os.getloadavg()[0]}
    done.write_text(json.dumps(record, indent=1) + "\n")
    return record


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def _device(scale: Scale) -> torch.device:
    return torch.device("cuda" if scale.accelerator == "gpu" and torch.cuda.is_available()
                        else "cpu")


def _features(model, dataset) -> Tuple[torch.Tensor, torch.Tensor]:
    from solo_iclmsr.evaluation import extract_features

    feats, labels = extract_features(model.backbone, dataset)
    return feats["feats"], labels


def probe_scores(scale: Scale, seed: int, bank: Tuple[torch.Tensor, torch.Tensor],
                 tests: Dict[str, Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[Dict, Dict]:
    """5-NN and linear top-1 of every test set, with ``bank`` as the training set."""
    from solo_iclmsr.evaluation import knn_accuracy, linear_probe

    knn = {t: knn_accuracy(*bank, *xy, k=KNN_K).top1 for t, xy in tests.items()}
    linear = {t: r.top1 for t, r in linear_probe(*bank, tests, epochs=scale.linear_epochs,
                                                  seed=seed).items()}
    return knn, linear


def evaluate_builtin(scale: Scale, run: RunSpec, model, cfg, rhos: Sequence[float],
                     matched: bool) -> Dict[str, Any]:
    """5-NN (cosine, T = 0.07) and linear top-1 on the built-in test sets of each rho; the
    bank is the run's training split in its own variant; with ``matched`` also 5-NN with the
    bank in the test's variant (fg bank for fg test images, full bank otherwise)."""
    from omegaconf import OmegaConf

    from solo_iclmsr.data.loaders import builtin_eval_sets

    out: Dict[str, Any] = {"knn": {}, "linear": {}, "knn_matched": {}}
    for rho in rhos:
        c = OmegaConf.create(OmegaConf.to_container(cfg))
        c.data.builtin.rho = float(rho)
        key = f"{rho:g}"
        own, tests = builtin_eval_sets(c, run.variant)
        bank = _features(model, own)
        feats = {t: _features(model, ds) for t, ds in tests.items()}
        out["knn"][key], out["linear"][key] = probe_scores(scale, run.seed, bank, feats)
        if matched:
            from solo_iclmsr.evaluation import knn_accuracy

            other = "full" if run.variant == "fg" else "fg"
            banks = {run.variant: bank, other: _features(model, builtin_eval_sets(c, other)[0])}
            out["knn_matched"][key] = {
                t: knn_accuracy(*banks["fg" if t == "fg" else "full"], *feats[t], k=KNN_K).top1
                for t in TESTS}
    return out


def evaluate_masked(scale: Scale, run: RunSpec, model, cfg, masks: MaskSource) -> Dict[str, Any]:
    """5-NN and linear top-1 on the held-out images of the masked set in its variants full,
    fg and bg; the bank is the training images in the run's variant (and, matched, in the
    test's variant)."""
    from torch.utils.data import Subset

    from solo_iclmsr.data.augment import mean_std
    from solo_iclmsr.data.loaders import EvalImages
    from solo_iclmsr.evaluation import knn_accuracy

    entry = cfg.augmentations[0]
    stats = (int(entry.crop_size), *mean_std(cfg.data.dataset, entry))
    train_idx, test_idx = masks.split()
    sets = {v: masks.dataset(v) for v in MASK_TESTS}
    banks = {v: _features(model, EvalImages(Subset(sets[v], train_idx), *stats))
             for v in ("full", "fg")}
    tests = {v: _features(model, EvalImages(Subset(sets[v], test_idx), *stats)) for v in MASK_TESTS}
    knn, linear = probe_scores(scale, run.seed, banks[run.variant], tests)
    matched = {t: knn_accuracy(*banks["fg" if t == "fg" else "full"], *tests[t], k=KNN_K).top1
               for t in MASK_TESTS}
    labels = np.asarray(sets["full"].labels)
    return {"knn": {"masked": knn}, "linear": {"masked": linear},
            "knn_matched": {"masked": matched}, "n_train": len(train_idx), "n_test": len(test_idx),
            "num_classes": int(labels.max()) + 1,
            "majority": 100.0 * float(np.bincount(labels[test_idx]).max()) / max(1, len(test_idx))}


def masked_probe(masks: MaskSource, limit: int):
    """The held-out images of a masked set as a probe set (images, masks, class groups)."""
    from solo_iclmsr.data.probe import ProbeSet

    _, test_idx = masks.split()
    dataset = masks.dataset("full")
    idx = test_idx[:limit]
    items = [dataset[i] for i in idx]
    return ProbeSet(torch.stack([image for _, image, _ in items]),
                    torch.stack([dataset.mask(i) for i in idx]),
                    {"class": torch.as_tensor([int(label) for _, _, label in items])})


@torch.no_grad()
def strata_statistics(scale: Scale, model, cfg, masks: Optional[MaskSource] = None
                      ) -> Dict[str, float]:
    """``strata_probe_stats`` on the probe images (the built-in test images, or the held-out
    images of a masked set), plus the largest per-stratum cross-image cosine and the criteria."""
    from omegaconf import OmegaConf

    from solo_iclmsr.core import strata_diagnostics
    from solo_iclmsr.data.augment import build_multiview_augmentation
    from solo_iclmsr.data.probe import probe_set
    from solo_iclmsr.plugin.callbacks import strata_probe_stats

    model.set_device_augmentation(build_multiview_augmentation(cfg.augmentations,
                                                               cfg.data.dataset))
    model.to(_device(scale))
    if masks is not None:
        probe = masked_probe(masks, scale.probe_images)
    else:
        OmegaConf.update(cfg, "diagnostics.images", scale.probe_images, force_add=True)
        probe = probe_set(cfg)
    stats = strata_probe_stats(model, probe)
    device = next(model.parameters()).device
    weights = torch.cat([model._proposals(model.device_augmentation.raw_view(
        probe.images[i:i + 256].to(device))).float().cpu() for i in range(0, len(probe), 256)])
    stats["cross_image_cos_max"] = float(strata_diagnostics(weights).cross_image_cosine.max())
    stats["probe_images"] = len(probe)
    dependent, aligned = criteria(stats)
    stats.update(image_dependent=dependent, content_aligned=aligned)
    return stats


def criteria(st: Dict[str, Any]) -> Tuple[bool, bool]:
    """(image-dependent and distinct, content-aligned): every a_t's cross-image cosine <= 0.5
    and the within-image pairwise cosine <= 0.3; the variation across images explained by the
    class or by the background type >= 3x its chance level."""
    dependent = (st.get("cross_image_cos_max", 1.0) <= MAX_CROSS_IMAGE_COS
                 and st.get("within_image_cos", 1.0) <= MAX_WITHIN_IMAGE_COS)
    explained = max(st.get("explained_by_class_over_chance", 0.0) or 0.0,
                    st.get("explained_by_background_over_chance", 0.0) or 0.0)
    return bool(dependent), bool(explained >= MIN_EXPLAINED_OVER_CHANCE)


def evaluate(scale: Scale, run: RunSpec, record: Dict[str, Any], rhos: Sequence[float] = (),
             matched: bool = False, masks: Optional[MaskSource] = None) -> Dict[str, Any]:
    """The result of a trained run: its scores, strata statistics (ICL-MSR) and last metrics."""
    from solo_iclmsr.cli.checkpoints import load_pretrained

    model, cfg = load_pretrained(record["checkpoint"])
    model.to(_device(scale))
    steps = max(1, int(record["steps"]))
    result = {"run": run.name, "method": run.method, "iclmsr": run.iclmsr, "rho": run.rho,
              "seed": run.seed, "variant": run.variant, "options": dict(run.options),
              "data": run.masked or "builtin", "steps": record["steps"],
              "train_seconds": record["seconds"], "cpu_seconds": record["cpu_seconds"],
              "seconds_per_step": record["seconds"] / steps,
              "cpu_seconds_per_step": record["cpu_seconds"] / steps}
    if run.masked:
        result.update(evaluate_masked(scale, run, model, cfg, masks))
    else:
        result.update(evaluate_builtin(scale, run, model, cfg, sorted(set(rhos) | {run.rho}),
                                       matched))
    if run.iclmsr:
        result["strata"] = strata_statistics(scale, model, cfg, masks if run.masked else None)
    metrics = last_metrics(Path(record["folder"]) / "metrics.csv")
    result["metrics"] = {k: v for k, v in metrics.items()
                         if k.startswith(("train_msr", "train_uni", "train_meta", "strata/",
                                          "train_nce", "train_neg", "train_barlow"))}
    return result


def run_one(scale: Scale, run: RunSpec, out: Path, rhos: Sequence[float] = (),
            matched: bool = False, masks: Optional[MaskSource] = None) -> Tuple[Dict, bool]:
    """Train (if needed) and evaluate (if needed) one run; returns (result, trained now)."""
    path = out / run.name / "result.json"
    trained = not (out / run.name / "done.json").exists()
    record = train(scale, run, out, masks)
    if path.exists() and not trained:
        return json.loads(path.read_text()), False
    wall, cpu = time.perf_counter(), time.process_time()
    result = evaluate(scale, run, record, rhos, matched, masks)
    result.update(eval_seconds=time.perf_counter() - wall,
                  eval_cpu_seconds=time.process_time() - cpu)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result, trained


def _worker(scale: Scale, run: RunSpec, out: Path, rhos, matched: bool,
            masks: Optional[MaskSource], threads: int) -> Tuple[Dict, bool]:
    torch.set_num_threads(threads)
    return run_one(scale, run, out, rhos, matched, masks)


@dataclass
class Job:
    run: RunSpec
    rhos: Tuple[float, ...] = ()
    matched: bool = False


def run_jobs(scale: Scale, jobs: Sequence[Job], out: Path, n_jobs: int,
             masks: Optional[MaskSource]) -> Tuple[Dict[str, Dict], List[str]]:
    """Every job, ``n_jobs`` at a time (one process each, the threads shared out)."""
    results: Dict[str, Dict] = {}
    trained: List[str] = []
    if n_jobs <= 1:
        for job in jobs:
            results[job.run.name], now = run_one(scale, job.run, out, job.rhos, job.matched, masks)
            if now:
                trained.append(job.run.name)
        return results, trained
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if masks is not None:  # the PNG trees are written once, before the workers start
        train_idx, _ = masks.split()
        for variant in {j.run.variant for j in jobs if j.run.masked}:
            materialise(masks, variant, train_idx, out / "_masked" / f"{masks.tag}-{variant}")
    threads = max(1, torch.get_num_threads() // n_jobs)
    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job.run.name: pool.submit(_worker, scale, job.run, out, job.rhos, job.matched,
                                             masks, threads) for job in jobs}
        for name, future in futures.items():
            results[name], now = future.result()
            if now:
                trained.append(name)
    return results, trained


# ----------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------
def motivation_jobs(rhos: Sequence[float], masks: Optional[MaskSource]) -> List[Job]:
    if masks is not None:
        return [Job(RunSpec("simclr", False, 0.0, 0, v, masked=masks.tag)) for v in ("full", "fg")]
    top = max(rhos)
    return ([Job(RunSpec("simclr", False, top, 0, "fg"), tuple(sorted(rhos)), True)]
            + [Job(RunSpec("simclr", False, r, 0), (), True) for r in sorted(rhos, reverse=True)])


def effect_jobs(methods: Sequence[str], rhos: Sequence[float], seeds: int,
                options: Tuple) -> List[Job]:
    jobs = []
    for seed in range(seeds):
        for rho in sorted(rhos, reverse=True):
            for method in methods:
                jobs += [Job(RunSpec(method, False, rho, seed)),
                         Job(icl_run(method, rho, seed, options))]
    return jobs


def sensitivity_jobs(params: Sequence[str], options: Tuple) -> List[Job]:
    jobs = [Job(RunSpec("simclr", False, 0.95, 0)), Job(icl_run("simclr", 0.95, 0, options))]
    for key in params:
        for v in SENSITIVITY[key]:
            jobs.append(Job(icl_run("simclr", 0.95, 0, dict(options, **{key: v}).items())))
    return jobs


def options_jobs(methods: Sequence[str], rhos: Sequence[float], seeds: int,
                 combos: Sequence[str]) -> List[Job]:
    jobs = []
    for seed in range(seeds):
        for method in methods:
            for rho in sorted(rhos, reverse=True):
                jobs.append(Job(RunSpec(method, False, rho, seed)))
                jobs += [Job(icl_run(method, rho, seed, OPTION_SETS[c])) for c in combos]
    return jobs


def strata_jobs(options: Tuple, masks: Optional[MaskSource]) -> List[Job]:
    jobs = [Job(RunSpec("simclr", False, 0.95, 0)), Job(icl_run("simclr", 0.95, 0, options))]
    if masks is not None:
        jobs += [Job(RunSpec("simclr", False, 0.0, 0, masked=masks.tag)),
                 Job(icl_run("simclr", 0.0, 0, options, masked=masks.tag))]
    return jobs


def merge_jobs(jobs: Iterable[Job]) -> List[Job]:
    """One job per run (the union of the test rhos; matched if any asks for it), in order."""
    merged: Dict[str, Job] = {}
    for job in jobs:
        if job.run.name in merged:
            old = merged[job.run.name]
            merged[job.run.name] = Job(job.run, tuple(sorted(set(old.rhos) | set(job.rhos))),
                                       old.matched or job.matched)
        else:
            merged[job.run.name] = job
    return list(merged.values())


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def fmt(values: Sequence[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _arm(results: Dict[str, Dict], method: str, icl: bool, rho: float, seeds: int,
         options: Tuple = ()) -> List[Dict]:
    names = [(icl_run(method, rho, s, options) if icl else RunSpec(method, False, rho, s)).name
             for s in range(seeds)]
    return [results[n] for n in names if n in results]


def _target_line(method: str, rho: float, key: str, base: List[Dict], icl: List[Dict]) -> str:
    """The targets: at rho >= 0.95 the fg-test 5-NN gain is >= 2 points over 3 seeds and larger
    than the pooled (sample) std of the two arms; at rho 0 no test set loses > 0.5. The
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
    text = (f"{method}, rho {rho:g}: 5-NN change "
            + ", ".join(f"{t} {v:+.1f}" for t, v in changes.items())
            + f" ({seeds}{paired_txt} on fg)")
    if rho == 0.0:
        worst = min(changes.values())
        text += f"; target: no test set below -0.5: {'MET' if worst >= -0.5 else 'NOT MET'}"
    return text


def _plot_setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _verdict(ff: float, fF: float, fd: float, gF: float, gg: float, gd: float,
             other: str) -> str:
    ok1, ok2, ok3 = ff > fF, gg > gF, gg >= max(ff, fF, gF)
    return (f"trF/teF > trF/teFG {'yes' if ok1 else 'no'}; trFG/teFG > trFG/teF "
            f"{'yes' if ok2 else 'no'}; trFG/teFG best {'yes' if ok3 else 'no'} (with the "
            f"{other} test: trFG/teFG > trFG/te{other[:5].title()} {'yes' if gg > gd else 'no'}; "
            f"trF/teF > trF/te{other[:5].title()} {'yes' if ff > fd else 'no'}) -> paper ordering "
            f"{'HOLDS' if ok1 and ok2 and ok3 else 'does not hold'}")


def motivation_section(results: Dict[str, Dict], rhos: Sequence[float], scale: Scale, out: Path,
                       plots: Path) -> str:
    fg_run = RunSpec("simclr", False, max(rhos), 0, "fg")
    fg = results.get(fg_run.name)
    lines = ["## 1. Motivation: the 2x2 table (SimCLR, built-in set, seed 0)", ""]
    if fg is None:
        return "\n".join(lines + ["not run", ""])
    missing = [r for r in rhos if f"{r:g}" not in fg["knn"]]
    if missing and (out / fg_run.name / "done.json").exists():  # rhos added later
        record = json.loads((out / fg_run.name / "done.json").read_text())
        fg = evaluate(scale, fg_run, record, sorted(rhos), matched=True)
        (out / fg_run.name / "result.json").write_text(json.dumps(fg, indent=1) + "\n")
        results[fg_run.name] = fg
    lines += ["Probe / k-NN bank trained on the pre-training variant (the paper's setting: the "
              "whole pipeline sees one kind of image, the test another). 'full' is the test image "
              "with its class-correlated background, 'decorr.' the same object on a background "
              "drawn independently of the class. Chance = 10.", ""]
    rows, verdicts, matched_rows, cells = [], [], [], []
    for rho in sorted(rhos):
        full, key = results.get(RunSpec("simclr", False, rho, 0).name), f"{rho:g}"
        if full is None or key not in fg["knn"]:
            continue
        cells.append((rho, full["knn"][key], fg["knn"][key]))
        for probe in ("knn", "linear"):
            f, g = full[probe][key], fg[probe][key]
            label = "5-NN" if probe == "knn" else "linear"
            rows.append([f"{rho:g}", label] + [f"{f[t]:.1f}" for t in TESTS]
                        + [f"{g[t]:.1f}" for t in TESTS])
            verdicts.append(f"rho {rho:g}, {label}: " + _verdict(
                f["full"], f["fg"], f["decorrelated"], g["full"], g["fg"], g["decorrelated"],
                "decorrelated"))
        if key in full.get("knn_matched", {}) and key in fg.get("knn_matched", {}):
            m, g = full["knn_matched"][key], fg["knn_matched"][key]
            matched_rows.append([f"{rho:g}"] + [f"{m[t]:.1f}" for t in TESTS]
                                + [f"{g[t]:.1f}" for t in TESTS])
    gg = fg["knn"][f"{max(rhos):g}"]["fg"]
    verdicts.insert(0, f"precondition (design notes, section 5): SimCLR trained on foregrounds "
                    f"scores {gg:.1f} 5-NN top-1 on foregrounds (chance {CHANCE:g}); >= 2x "
                    f"chance: {'yes' if gg >= 2 * CHANCE else 'NO: the orderings below say little'}")
    header = ["rho", "probe", "trF/teF", "trF/teFG", "trF/teDecor", "trFG/teF", "trFG/teFG",
              "trFG/teDecor"]
    lines += [table(header, rows), "", *[f"* {v}" for v in verdicts], "",
              "5-NN with the bank matched to the test variant (fg bank for fg test images, full "
              "bank otherwise): what the features encode, without the probe's shift.", "",
              table([h for h in header if h != "probe"], matched_rows), ""]
    if cells:
        plt = _plot_setup()
        fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 2.8), squeeze=False)
        for ax, (rho, f, g) in zip(axes[0], cells):
            grid = np.array([[f["full"], f["fg"]], [g["full"], g["fg"]]])
            ax.imshow(grid, cmap="viridis", vmin=0, vmax=100)
            for i in range(2):
                for j in range(2):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w")
            ax.set_xticks([0, 1], ["test full", "test fg"], fontsize=8)
            ax.set_yticks([0, 1], ["train full", "train fg"], fontsize=8)
            ax.set_title(f"SimCLR 5-NN top-1, rho={rho:g}", fontsize=8)
        fig.tight_layout()
        fig.savefig(plots / "evidence_motivation.png", dpi=100)
        plt.close(fig)
        lines += ["![motivation](evidence_motivation.png)", ""]
    return "\n".join(lines)


def masked_motivation_section(results: Dict[str, Dict], masks: MaskSource) -> str:
    lines = [f"## 1b. Motivation on real masks: {masks.kind} set `{masks.tag}` (SimCLR, seed 0)",
             ""]
    full = results.get(RunSpec("simclr", False, 0.0, 0, "full", masked=masks.tag).name)
    fg = results.get(RunSpec("simclr", False, 0.0, 0, "fg", masked=masks.tag).name)
    if full is None or fg is None:
        return "\n".join(lines + ["not run", ""])
    chance = 100.0 / full["num_classes"]
    lines += [f"{full['n_train']} training / {full['n_test']} held-out images at "
              f"{masks.image_size} px, {full['num_classes']} labels (chance {chance:.1f}, "
              f"majority label of the test images {full['majority']:.1f}%). Training images of "
              f"the variant written as PNGs and trained on as a custom ImageFolder set; 'bg' is "
              f"the background alone (the foreground painted gray).", ""]
    rows, verdicts = [], []
    for probe, label in (("knn", "5-NN"), ("linear", "linear")):
        f, g = full[probe]["masked"], fg[probe]["masked"]
        rows.append([label] + [f"{f[t]:.1f}" for t in MASK_TESTS]
                    + [f"{g[t]:.1f}" for t in MASK_TESTS])
        verdicts.append(f"{label}: " + _verdict(f["full"], f["fg"], f["bg"], g["full"], g["fg"],
                                                g["bg"], "background-only"))
    m, g = full["knn_matched"]["masked"], fg["knn_matched"]["masked"]
    rows.append(["5-NN, matched bank"] + [f"{m[t]:.1f}" for t in MASK_TESTS]
                + [f"{g[t]:.1f}" for t in MASK_TESTS])
    lines += [table(["probe", "trF/teF", "trF/teFG", "trF/teBG", "trFG/teF", "trFG/teFG",
                     "trFG/teBG"], rows), "", *[f"* {v}" for v in verdicts], ""]
    return "\n".join(lines)


def strata_cells(st: Dict[str, Any]) -> List[str]:
    """max cross-image cos, within cos, class/chance, bg/chance, criteria, fg share (uniform)."""
    dependent, aligned = criteria(st)
    bg = st.get("explained_by_background_over_chance")
    fg = st.get("fg_share")
    return [f"{st.get('cross_image_cos_max', float('nan')):.2f}",
            f"{st.get('within_image_cos', float('nan')):.2f}",
            f"{st.get('explained_by_class_over_chance', float('nan')):.1f}",
            "-" if bg is None else f"{bg:.1f}",
            f"{'yes' if dependent else 'no'} / {'yes' if aligned else 'no'}",
            "-" if fg is None else f"{100 * fg:.1f} ({100 * st['fg_share_uniform']:.1f})"]


STRATA_HEADER = ["max cross-img cos", "within cos", "class/chance", "bg/chance",
                 "criteria dep. / aligned", "fg share % (uniform)"]


def effect_section(results: Dict[str, Dict], methods, rhos, seeds: int, options: Tuple,
                   plots: Path) -> str:
    lines = ["## 2. Effect of ICL-MSR (trained on full images; mean ± std over the seeds run)",
             ""]
    if options:
        lines += ["ICL-MSR options of this arm: " + ", ".join(f"`iclmsr.{k}={_value(v)}`"
                                                              for k, v in options), ""]
    rows, targets, cells, diag = [], [], [], []
    for method in methods:
        for rho in sorted(rhos):
            base = _arm(results, method, False, rho, seeds)
            icl = _arm(results, method, True, rho, seeds, options)
            key = f"{rho:g}"
            for name, arm in (("base", base), ("+ICL-MSR", icl)):
                if arm:
                    rows.append([method, key, name, str(len(arm))]
                                + [fmt([r["knn"][key][t] for r in arm]) for t in TESTS]
                                + [fmt([r["linear"][key][t] for r in arm]) for t in TESTS]
                                + [f"{statistics.mean(r['seconds_per_step'] for r in arm):.2f}",
                                   f"{statistics.mean(r['cpu_seconds_per_step'] for r in arm):.2f}"])
            if base and icl:
                targets.append(_target_line(method, rho, key, base, icl))
                cells.append((method, rho, base, icl))
            for r in icl:
                m = r.get("metrics", {})
                diag.append([r["run"], f"{m.get('train_msr_loss', float('nan')):.3f}",
                             f"{m.get('train_meta_grad_norm_ct', float('nan')):.1e}",
                             f"{m.get('train_meta_grad_norm_uni', float('nan')):.1e}"]
                            + strata_cells(r.get("strata", {}))
                            + [f"{r.get('strata', {}).get('effective_channels', float('nan')):.1f}"])
    header = (["method", "rho", "arm", "seeds"] + [f"5-NN {t}" for t in TESTS]
              + [f"linear {t}" for t in TESTS] + ["s/step", "CPU s/step"])
    lines += [table(header, rows), "", "Targets:", "", *[f"* {t}" for t in targets], "",
              "Diagnostics of the ICL-MSR runs (strata on the held-out probe images, after "
              "training; losses and meta-gradient norms of the last epoch from metrics.csv): "
              "L_msr; the meta-gradient norm of the L_ct(theta') part and of the gamma * L_uni "
              "part; the largest cross-image cosine of one a_t (1 = f_msr ignores the image); the "
              "within-image pairwise cosine (1 = identical strata); the share of A's variation "
              "across images explained by the class and by the background type, over its chance "
              "level; the criteria (image-dependent and distinct / content-aligned); the share "
              "of a_t's weight on foreground-preferring channels (a uniform weighting's); the "
              "effective channels of a_t (of 96).", "",
              table(["run", "L_msr", "meta grad ct", "meta grad uni"] + STRATA_HEADER
                    + ["eff. channels"], diag), ""]
    if cells:
        plt = _plot_setup()
        fig, axes = plt.subplots(1, len(TESTS), figsize=(3.3 * len(TESTS), 3.0), sharey=True)
        xs = np.arange(len(cells))
        for ax, test in zip(axes, TESTS):
            for k, label in enumerate(("base", "+ICL-MSR")):
                vals = [[r["knn"][f"{rho:g}"][test] for r in (base if k == 0 else icl)]
                        for _, rho, base, icl in cells]
                ax.bar(xs + (k - 0.5) * 0.38, [np.mean(v) for v in vals], 0.38, label=label,
                       yerr=[np.std(v) if len(v) > 1 else 0 for v in vals], capsize=2)
            ax.axhline(CHANCE, color="gray", lw=0.8, ls="--")
            ax.set_xticks(xs, [f"{m}\nrho={r:g}" for m, r, _, _ in cells], fontsize=6)
            ax.set_title(f"5-NN top-1, test {test}", fontsize=8)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / "evidence_effect.png", dpi=100)
        plt.close(fig)
        lines += ["![effect](evidence_effect.png)", ""]
    return "\n".join(lines)


def sensitivity_section(results: Dict[str, Dict], params: Sequence[str], options: Tuple) -> str:
    lines = ["## 3. Sensitivity (SimCLR, rho = 0.95, seed 0)", ""]
    rows = []
    settings = [("base (ICL-MSR off)", "-", RunSpec("simclr", False, 0.95, 0)),
                ("ICL-MSR", "as in section 2", icl_run("simclr", 0.95, 0, options))]
    settings += [(key, str(v), icl_run("simclr", 0.95, 0, dict(options, **{key: v}).items()))
                 for key in params for v in SENSITIVITY[key]]
    for label, value, spec in settings:
        r = results.get(spec.name)
        if r is None:
            continue
        st = r.get("strata", {})
        rows.append([label, value] + [f"{r['knn']['0.95'][t]:.1f}" for t in TESTS]
                    + [f"{r['train_seconds']:.0f}", f"{r['cpu_seconds_per_step']:.2f}",
                       f"{st['cross_image_cos_max']:.2f}" if st else "-",
                       f"{st['within_image_cos']:.2f}" if st else "-"])
    lines += [table(["setting", "value", "5-NN full", "5-NN fg", "5-NN decorr.", "train s",
                     "CPU s/step", "max cross-img cos", "within cos"], rows), ""]
    return "\n".join(lines)


def strata_section(results: Dict[str, Dict], scale: Scale, options: Tuple, out: Path,
                   plots: Path, masks: Optional[MaskSource]) -> str:
    from solo_iclmsr.cli.strata import render_strata

    lines = ["## 4. What the strata learn (SimCLR + ICL-MSR, rho = 0.95, seed 0)", ""]
    spec = icl_run("simclr", 0.95, 0, options)
    r = results.get(spec.name)
    if r is None:
        return "\n".join(lines + ["not run", ""])
    st = r["strata"]
    dependent, aligned = criteria(st)
    lines += [table(["quantity", "value"], [
        ["cross-image cosine of a_t: mean / largest", f"{st['cross_image_cos']:.3f} / "
                                                     f"{st['cross_image_cos_max']:.3f}"],
        ["within-image pairwise cosine", f"{st['within_image_cos']:.3f}"],
        ["variation of A explained by the class (x chance)",
         f"{st['explained_by_class']:.3f} ({st['explained_by_class_over_chance']:.1f}x)"],
        ["variation of A explained by the background type (x chance)",
         f"{st['explained_by_background']:.3f} ({st['explained_by_background_over_chance']:.1f}x)"],
        ["share of a_t's weight on foreground-preferring channels (uniform weighting)",
         f"{100 * st['fg_share']:.1f}% ({100 * st['fg_share_uniform']:.1f}%)"],
        ["same, the most foreground-heavy stratum of each image",
         f"{100 * st['fg_share_best_stratum']:.1f}%"],
        ["effective channels per a_t (of 96)", f"{st['effective_channels']:.1f}"],
        ["criteria: image-dependent and distinct / content-aligned",
         f"{'yes' if dependent else 'no'} / {'yes' if aligned else 'no'}"],
    ]), ""]
    done = out / spec.name / "done.json"
    if done.exists():
        checkpoint = json.loads(done.read_text())["checkpoint"]
        render_strata(checkpoint, str(plots / "evidence_strata.png"), images=6,
                      title=f"{spec.name}: stratum maps on test images")
        lines += ["![strata](evidence_strata.png)", "",
                  "Each row: a test image, its mask, and per stratum a_t the map "
                  "ReLU(sum_r a_{t,r} Z_r) of the 4x4 last feature map, upsampled "
                  "(`solo_iclmsr.cli.strata.render_strata`).", ""]
    if masks is not None:
        base = results.get(RunSpec("simclr", False, 0.0, 0, masked=masks.tag).name)
        icl = results.get(icl_run("simclr", 0.0, 0, options, masked=masks.tag).name)
        if base and icl:
            ms = icl["strata"]
            lines += [f"On the masked set `{masks.tag}` (trained on its full images; strata on "
                      f"{ms['probe_images']} held-out images with their masks):", "",
                      table(["arm"] + [f"5-NN {t}" for t in MASK_TESTS] + STRATA_HEADER,
                            [["base"] + [f"{base['knn']['masked'][t]:.1f}" for t in MASK_TESTS]
                             + ["-"] * len(STRATA_HEADER),
                             ["+ICL-MSR"] + [f"{icl['knn']['masked'][t]:.1f}" for t in MASK_TESTS]
                             + strata_cells(ms)]), ""]
    return "\n".join(lines)


def _combo_of(options: Dict[str, Any]) -> str:
    key = tuple(sorted(options.items()))
    for name, combo in OPTION_SETS.items():
        if tuple(sorted(combo)) == key:
            return name
    return ",".join(f"{k}={_value(v)}" for k, v in key) or "paper"


def options_section(results: Dict[str, Dict], methods, rhos, seeds: int,
                    combos: Sequence[str]) -> str:
    lines = ["## 5. ICL-MSR options (design notes, section 7)", "",
             "Combinations: " + "; ".join(
                 f"**{c}** = " + (", ".join(f"`{k}={_value(v)}`" for k, v in OPTION_SETS[c])
                                  or "the paper reading") for c in combos) + ".", "",
             f"Criteria: image-dependent and distinct = every a_t's cross-image cosine <= "
             f"{MAX_CROSS_IMAGE_COS} and within-image pairwise cosine <= {MAX_WITHIN_IMAGE_COS}; "
             f"content-aligned = the variation of A across images explained by the class or the "
             f"background type >= {MIN_EXPLAINED_OVER_CHANCE:g}x chance. 'meta grad ct / uni': "
             f"norm of the meta-gradient of the L_ct(theta') part / of the gamma * L_uni part "
             f"(last epoch). Mean ± std over the seeds run.", ""]
    header = (["combination", "seeds"] + STRATA_HEADER[:4] + ["criteria met (dep. / aligned)",
              "fg share % (uniform)", "meta grad ct", "meta grad uni"]
              + [f"5-NN {t}" for t in TESTS] + ["CPU s/step"])
    for method in methods:
        for rho in sorted(rhos):
            key = f"{rho:g}"
            base = _arm(results, method, False, rho, seeds)
            arms = {c: _arm(results, method, True, rho, seeds, OPTION_SETS[c]) for c in combos}
            if not any(arms.values()):
                continue
            rows = []
            if base:
                rows.append(["base (ICL-MSR off)", str(len(base))] + ["-"] * 8
                            + [fmt([r["knn"][key][t] for r in base]) for t in TESTS]
                            + [fmt([r["cpu_seconds_per_step"] for r in base], 2)])
            for c, arm in arms.items():
                if not arm:
                    continue
                st = [r["strata"] for r in arm]
                met = [criteria(s) for s in st]
                rows.append([c, str(len(arm)),
                             fmt([s["cross_image_cos_max"] for s in st], 2),
                             fmt([s["within_image_cos"] for s in st], 2),
                             fmt([s["explained_by_class_over_chance"] for s in st]),
                             fmt([s.get("explained_by_background_over_chance") for s in st]),
                             f"{sum(m[0] for m in met)}/{len(met)} / {sum(m[1] for m in met)}/{len(met)}",
                             fmt([100 * s["fg_share"] for s in st]) + " ("
                             + fmt([100 * s["fg_share_uniform"] for s in st]) + ")",
                             fmt([r["metrics"].get("train_meta_grad_norm_ct") for r in arm], 4),
                             fmt([r["metrics"].get("train_meta_grad_norm_uni") for r in arm], 4)]
                            + [fmt([r["knn"][key][t] for r in arm]) for t in TESTS]
                            + [fmt([r["cpu_seconds_per_step"] for r in arm], 2)])
            lines += [f"### {method}, rho {key}", "", table(header, rows), ""]
            paper = {r["seed"]: r for r in arms.get("paper", [])}
            paired = []
            for c, arm in arms.items():
                pairs = [(paper[r["seed"]], r) for r in arm if r["seed"] in paper and c != "paper"]
                if len(pairs) < 2:
                    continue
                d = lambda f: [f(b) - f(a) for a, b in pairs]  # noqa: E731
                paired.append([c, str(len(pairs)),
                               fmt(d(lambda r: r["strata"]["cross_image_cos_max"]), 2),
                               fmt(d(lambda r: r["strata"]["within_image_cos"]), 2),
                               fmt(d(lambda r: r["strata"]["explained_by_class_over_chance"])),
                               fmt(d(lambda r: 100 * (r["strata"]["fg_share"]
                                                      - r["strata"]["fg_share_uniform"])))]
                              + [fmt(d(lambda r, t=t: r["knn"][key][t])) for t in TESTS])
            if paired:
                lines += ["Seed-paired difference to the paper reading (combination - paper, "
                          "mean ± std over seeds):", "",
                          table(["combination", "pairs", "max cross-img cos", "within cos",
                                 "class/chance", "fg share - uniform (points)"]
                                + [f"5-NN {t}" for t in TESTS], paired), ""]
    return "\n".join(lines)


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"{os.cpu_count()}-core CPU, no GPU"


def compact(result: Dict[str, Any]) -> Dict[str, Any]:
    """What ``evidence_runs.json`` keeps of a result."""
    keep = ("run", "method", "iclmsr", "rho", "seed", "variant", "options", "data", "steps",
            "train_seconds", "cpu_seconds", "cpu_seconds_per_step", "eval_cpu_seconds", "knn",
            "linear")
    out = {k: result[k] for k in keep if k in result}
    if "strata" in result:
        out["strata"] = {k: (round(v, 4) if isinstance(v, float) else v)
                         for k, v in result["strata"].items()}
    if result.get("metrics"):
        out["metrics"] = {k: round(v, 5) for k, v in result["metrics"].items()
                          if k.startswith(("train_meta_grad_norm", "train_msr", "train_uni"))}
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--only", default=",".join(DEFAULT_PARTS),
                   help="comma-separated parts: " + ", ".join(PARTS))
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (effect, options)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rhos", default=",".join(f"{r:g}" for r in RHOS))
    p.add_argument("--sensitivity", default=",".join(SENSITIVITY),
                   help="sensitivity axes: " + ", ".join(SENSITIVITY))
    p.add_argument("--combinations", default=",".join(OPTION_SETS),
                   help="option sets of the options part: " + ", ".join(OPTION_SETS))
    p.add_argument("--iclmsr", action="append", default=[], metavar="KEY=VALUE",
                   help="an ICL-MSR option of every ICL-MSR run outside the options part")
    p.add_argument("--epochs", type=int, help="override the scale's pre-training epochs")
    p.add_argument("--n-train", type=int, help="override the scale's training set size")
    p.add_argument("--n-test", type=int, help="override the scale's test set size")
    p.add_argument("--batch-size", type=int, help="override the scale's batch size")
    p.add_argument("--probe-images", type=int, help="override the number of strata probe images")
    p.add_argument("--accelerator", help="override the scale's accelerator (cpu, gpu)")
    p.add_argument("--masks", choices=("coco", "folder"),
                   help="a dataset with segmentation masks for motivation and strata")
    p.add_argument("--annotations", help="COCO instances JSON (--masks coco)")
    p.add_argument("--image-root", help="images of the masked set")
    p.add_argument("--masks-root", help="mask PNG tree parallel to --image-root (--masks folder)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of the masked set held out for testing")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--out", default="runs/evidence", help="folder of the runs")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                   help="folder of evidence.md, its PNGs and evidence_runs.json")
    p.add_argument("--report-only", action="store_true", help="no training: tables from --out")
    p.add_argument("--fresh", action="store_true", help="redo runs that already finished")
    args = p.parse_args(argv)

    scale = replace(SCALES[args.scale])
    for name, attr in (("epochs", "epochs"), ("n_train", "n_train"), ("n_test", "n_test"),
                       ("batch_size", "batch_size"), ("probe_images", "probe_images"),
                       ("accelerator", "accelerator")):
        if getattr(args, name):
            setattr(scale, attr, getattr(args, name))
    scale.probe_images = min(scale.probe_images, scale.n_test)
    parts = [x for x in args.only.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"--only {bad[0]!r}: expected one of {', '.join(PARTS)}")
    combos = [c for c in args.combinations.split(",") if c]
    if any(c not in OPTION_SETS for c in combos):
        p.error(f"--combinations: expected names among {', '.join(OPTION_SETS)}")
    masks = None
    if args.masks:
        if not args.image_root or (args.masks == "coco" and not args.annotations):
            p.error("--masks coco needs --annotations and --image-root; folder --image-root")
        masks = MaskSource(args.masks, args.image_root, args.annotations, args.masks_root,
                           args.test_fraction, scale.image_size)
    methods = [m for m in args.methods.split(",") if m]
    rhos = [float(r) for r in args.rhos.split(",") if r]
    params = [s for s in args.sensitivity.split(",") if s]
    options = parse_options(args.iclmsr)
    out, plots = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    jobs: List[Job] = []
    if "motivation" in parts:
        jobs += motivation_jobs(rhos, masks)
    if "strata" in parts:
        jobs += strata_jobs(options, masks)
    if "effect" in parts:
        jobs += effect_jobs(methods, rhos, args.seeds, options)
    if "sensitivity" in parts:
        jobs += sensitivity_jobs(params, options)
    if "options" in parts:
        jobs += options_jobs(methods, rhos, args.seeds, combos)
    jobs = merge_jobs(jobs)
    if args.fresh and not args.report_only:
        for job in jobs:
            shutil.rmtree(out / job.run.name, ignore_errors=True)

    started = datetime.now(timezone.utc)
    command = "python benchmarks/evidence.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} {command}"
    trained: List[str] = []
    results: Dict[str, Dict] = {}
    if not args.report_only:
        with open(out / "commands.txt", "a") as f:
            f.write(f"{started.strftime('%Y-%m-%d %H:%M UTC')}\t{command}\n")
        results, trained = run_jobs(scale, jobs, out, args.jobs, masks)
        with open(out / "commands.txt", "a") as f:
            f.write(f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\t(finished: "
                    f"{len(trained)} runs trained)\n")
    # every finished run in --out is read (earlier commands with other options included)
    for path in sorted(out.glob("*/result.json")):
        r = json.loads(path.read_text())
        results.setdefault(r["run"], r)

    history = []
    if (out / "commands.txt").exists():
        history = [line.split("\t", 1) for line in (out / "commands.txt").read_text().splitlines()
                   if "\t" in line]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    head = ["# ICL-MSR evidence", "",
            f"* this report: `{command}`",
            *[f"* {when}: `{what}`" if not what.startswith("(") else f"* {when}: {what}"
              for when, what in history],
            f"* date: {started.strftime('%Y-%m-%d %H:%M UTC')}; hardware: {hardware()}; torch "
            f"{torch.__version__}, Python {platform.python_version()}, commit {commit} (with the "
            f"working tree's changes)",
            f"* scale `{scale.name}`: {scale.describe()}",
            f"* evaluation: 5-NN (solo's weighted k-NN, cosine, T = 0.07) and a linear probe "
            f"({scale.linear_epochs} epochs, SGD) on frozen pooled features, bank / probe trained "
            f"on the {scale.n_train} training images; strata statistics on "
            f"{scale.probe_images} held-out images. Chance = {CHANCE:g}%. Runs trained by this "
            f"command: {len(trained)}; results read: {len(results)}.", ""]
    mine = [results[j.run.name] for j in jobs if j.run.name in results]
    train_cpu = sum(r.get("cpu_seconds", 0.0) for r in mine)
    eval_cpu = sum(r.get("eval_cpu_seconds", 0.0) for r in mine)
    head.insert(-1, f"* compute of the {len(mine)} runs of these parts: {train_cpu / 60:.0f} CPU "
                    f"minutes of training + {eval_cpu / 60:.0f} of evaluation, i.e. "
                    f"{(train_cpu + eval_cpu) / 120:.0f} minutes on 2 cores at one thread per run "
                    f"(process CPU time, which on a shared machine stands for the time on idle "
                    f"cores better than the wall clock)")
    sections = []
    if "motivation" in parts:
        fg_run = RunSpec("simclr", False, max(rhos), 0, "fg").name
        if masks is None or fg_run in results:  # the built-in table, when its runs are there
            sections.append(motivation_section(results, rhos, scale, out, plots))
        if masks is not None:
            sections.append(masked_motivation_section(results, masks))
    if "effect" in parts:
        sections.append(effect_section(results, methods, rhos, args.seeds, options, plots))
    if "sensitivity" in parts:
        sections.append(sensitivity_section(results, params, options))
    if "strata" in parts:
        sections.append(strata_section(results, scale, options, out, plots, masks))
    if "options" in parts:
        sections.append(options_section(results, methods, rhos, args.seeds, combos))
    text = "\n".join(head + sections)
    report = plots / "evidence.md"
    # a hand-written reading of the numbers, headed by NOTES, survives regeneration
    if report.exists() and NOTES in report.read_text():
        old = report.read_text()
        text += "\n" + old[old.index(NOTES):].rstrip("\n")
    report.write_text(text + "\n")
    (plots / "evidence_runs.json").write_text(json.dumps(
        [compact(r) for _, r in sorted(results.items())], indent=0) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
