"""Evaluation of one finished run of a comparison: the project's ``knn`` and ``linear``
(solo's ``main_knn`` / ``main_linear`` flows) on every test version of the run's data and on the
user's test folders.

Test versions (``data.loaders.evaluation_sets``): the built-in set's full / foreground-only /
background-decorrelated test splits; full / fg / bg of a held-out part of a dataset with masks
(``diagnostics.masks``); otherwise solo's validation set. Test folders (``evaluation["tests"]``,
``--test`` and ``--test-suite`` of compare; ``data/test_sets.py``) are more test sets. Every set
is seen with the run's evaluation transform (``data/eval_transforms.py``). The k-NN bank and the
linear probe's training set are the run's training images (the built-in set's in the variant it
trained on); the probe is trained once per run and evaluated on every test set, and a test set
added later is evaluated with the probe already trained (its checkpoint in
``linear/linear/<version>/``).

The linear config is derived from the pretraining config (``linear_config``) unless one is
given: solo's recipe of ``scripts/linear/**`` (SGD, lr 0.1, no weight decay, step decays at 60%
and 80% of its epochs) with the run's backbone, data, crop size and batch size. Evaluation runs
on one device (a run trained with DDP is evaluated on one of its devices), batched, in
inference mode, on a GPU in the run's precision.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from solo_iclmsr.evaluation import evaluation_device, loader_workers

__all__ = ["evaluate_run", "linear_config", "linear_checkpoint", "EVAL_KINDS"]

EVAL_KINDS = ("knn", "linear")
#: Images per forward pass of the evaluation.
EVAL_BATCH = 256


def evaluate_run(checkpoint: Path, folder: Path, evaluation: Dict[str, Any],
                 missing: Optional[Dict[str, Optional[List[str]]]] = None,
                 done: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Evaluate the pretraining ``checkpoint``; ``folder`` (the run's) receives the linear runs.

    Args:
        checkpoint: the run's final checkpoint.
        folder: the run's folder.
        evaluation: the grid's (``eval``, ``knn_k``, ``tests``, the linear config).
        missing: what to evaluate (``grid.missing_evaluations``): {kind: ``None`` for every
            test set, or the names of the test sets}; default every kind of ``eval`` on every
            test set.
        done: the run's ``eval.json`` so far (where its linear probe is).

    Returns:
        {"knn": {test: {"knn<k>": {"top1", "top5"}}}, "linear": {test: {"top1", "top5"}},
        "complete": the kinds evaluated on every test set, "linear_checkpoint": the probe's
        checkpoint (relative to ``folder``), "seconds", "seconds_by_kind"}.
    """
    from solo_iclmsr.data.test_sets import evaluation_sets_with_tests
    from solo_iclmsr.runs.checkpoints import load_pretrained
    from solo_iclmsr.runs.knn import knn_grid

    if missing is None:
        missing = {kind: None for kind in evaluation.get("eval", EVAL_KINDS)}
    tests = dict(evaluation.get("tests") or {})
    start = time.perf_counter()
    out: Dict[str, Any] = {"knn": {}, "linear": {}, "complete": [], "seconds_by_kind": {}}
    model, cfg = load_pretrained(checkpoint)
    if "knn" in missing:
        model.to(evaluation_device())
        ks: List[int] = list(evaluation.get("knn_k", [5, 20]))
        train_set, sets = evaluation_sets_with_tests(cfg, tests=tests)
        sets = _only(sets, missing["knn"])
        grid = knn_grid(model, train_set, sets, batch_size=EVAL_BATCH, ks=ks,
                        num_workers=loader_workers(OmegaConf.select(cfg, "data.num_workers", default=0)), precision=cfg.get("precision"))
        for test in sets:
            row = grid[f"backbone / {test}"]
            out["knn"][test] = {f"knn{k}": _topk(row[f"k={k},cosine,T=0.07"]) for k in ks}
        out["complete"] += ["knn"] if missing["knn"] is None else []
        out["seconds_by_kind"]["knn"] = time.perf_counter() - start
    del model
    if "linear" in missing:
        begin = time.perf_counter()
        results, probe, complete = _linear(cfg, checkpoint, folder, evaluation,
                                           missing["linear"], done or {})
        out["linear"], out["linear_checkpoint"] = results, probe
        out["complete"] += ["linear"] if complete else []
        out["seconds_by_kind"]["linear"] = time.perf_counter() - begin
    out["seconds"] = time.perf_counter() - start
    return out


def _only(sets: Dict[str, Any], names: Optional[List[str]]) -> Dict[str, Any]:
    """The sets named in ``names`` (all for ``None``)."""
    return dict(sets) if names is None else {n: sets[n] for n in names if n in sets}


def _topk(result: Any) -> Dict[str, float]:
    return {"top1": float(result.top1), "top5": float(result.top5)}


def linear_checkpoint(folder: Path, done: Dict[str, Any]) -> Optional[Path]:
    """The linear probe's checkpoint of a run: the one its ``eval.json`` records, else the
    newest under ``folder/linear`` (a grid evaluated before the record was kept)."""
    recorded = done.get("linear_checkpoint")
    if recorded and (folder / recorded).is_file():
        return folder / recorded
    found = sorted((folder / "linear").rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found and done.get("linear") else None


def _linear(pretrain_cfg: DictConfig, checkpoint: Path, folder: Path,
            evaluation: Dict[str, Any], names: Optional[List[str]], done: Dict[str, Any]
            ) -> Tuple[Dict[str, Dict[str, float]], str, bool]:
    """(results by test set, the probe's checkpoint relative to ``folder``, whether the probe
    was trained now and so evaluated on every test set). With ``names``, the probe already
    trained evaluates those test sets; without it (or without ``names``), it is trained."""
    from solo_iclmsr.config import compose
    from solo_iclmsr.data.test_sets import evaluation_sets_with_tests
    from solo_iclmsr.evaluation import classifier_accuracy
    from solo_iclmsr.runs.linear import linear, linear_entry, load_linear

    probe = linear_checkpoint(folder, done) if names is not None else None
    if probe is not None:
        model, cfg = load_linear(probe)
    else:
        names = None
        # on one device, in this process (as solo's main_knn): Lightning's DDP launcher would
        # start the other ranks by running this job again
        placed = [f"++pretrained_feature_extractor='{checkpoint}'",
                  f"++checkpoint.dir='{folder / 'linear'}'", "++auto_resume.enabled=False",
                  "++wandb.enabled=False", "++devices=1", "++strategy=auto",
                  "++sync_batchnorm=False"]
        if evaluation.get("linear_config_path"):
            cfg = compose(evaluation["linear_config_path"], evaluation["linear_config_name"],
                          [*evaluation.get("linear_overrides", []), *placed])
        else:
            cfg = linear_config(pretrain_cfg, checkpoint, folder / "linear",
                                evaluation.get("linear_epochs"))
        before = set((folder / "linear").rglob("*.ckpt"))
        model = linear(cfg).model
        written = sorted(set((folder / "linear").rglob("*.ckpt")) - before,
                         key=lambda p: p.stat().st_mtime)
        probe = written[-1] if written else None
    model.to(evaluation_device())
    _, sets = evaluation_sets_with_tests(cfg, entry=linear_entry(cfg),
                                         tests=evaluation.get("tests") or {})
    sets = _only(sets, names)
    results = {test: _topk(classifier_accuracy(model, dataset, EVAL_BATCH, loader_workers(OmegaConf.select(cfg, "data.num_workers", default=0)),
                                               cfg.get("precision"), name=f"{test} (linear)"))
               for test, dataset in sets.items()}
    return results, (str(probe.relative_to(folder)) if probe else ""), names is None


def linear_config(pretrain_cfg: DictConfig, checkpoint: Path, folder: Path,
                  epochs: Optional[int] = None) -> DictConfig:
    """A linear config in solo's schema (``scripts/linear/**``) for a pretraining run: its
    backbone, data, batch size and accelerator, on one device; solo's SGD recipe; ``epochs``
    (default 100, solo's) with the learning rate divided by 10 at 60% and 80% of them."""
    from solo_iclmsr.data.augment import mean_std

    p = pretrain_cfg
    epochs = int(epochs or 100)
    entry = p.augmentations[0]
    mean, std = mean_std(p.data.dataset, entry)
    data = {key: OmegaConf.select(p, f"data.{key}", default=None)
            for key in ("dataset", "train_path", "val_path", "format", "num_workers",
                        "image_size", "fraction")}
    data = {k: v for k, v in data.items() if v is not None or k == "val_path"}
    data["augmentations"] = {"crop_size": int(entry.crop_size), "mean": list(mean),
                             "std": list(std)}
    if p.data.dataset == "builtin":
        data["builtin"] = OmegaConf.to_container(p.data.builtin)
    cfg = {
        "name": f"{p.name}-linear",
        "pretrained_feature_extractor": str(checkpoint),
        "backbone": OmegaConf.to_container(p.backbone),
        "pretrain_method": str(p.method),
        "data": data,
        "optimizer": {"name": "sgd", "batch_size": int(p.optimizer.batch_size), "lr": 0.1,
                      "weight_decay": 0.0},
        "scheduler": {"name": "step", "lr_decay_steps": [max(1, int(0.6 * epochs)),
                                                         max(1, int(0.8 * epochs))]},
        "checkpoint": {"enabled": True, "dir": str(folder), "frequency": 1},
        "auto_resume": {"enabled": False},
        "wandb": {"enabled": False},
        "max_epochs": epochs,
        "devices": 1,  # evaluation runs on one device (see _linear)
        "accelerator": p.accelerator,
        "precision": p.precision,
        "strategy": "auto",
        "enable_progress_bar": OmegaConf.select(p, "enable_progress_bar", default=True),
    }
    if OmegaConf.select(p, "diagnostics.masks", default=None) is not None:
        cfg["diagnostics"] = OmegaConf.to_container(p.diagnostics)
    out = OmegaConf.create(cfg)
    OmegaConf.set_struct(out, False)
    return out
