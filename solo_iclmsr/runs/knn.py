"""``solo-iclmsr knn``: solo-learn's ``main_knn.py`` on a pretraining run's folder.

The arguments are main_knn's (``scripts/knn/imagenet-100/knn.sh`` works as it is, with
``solo-iclmsr knn`` instead of ``python3 main_knn.py``): the checkpoint folder (``args.json`` and
a ``.ckpt``), the dataset and its paths, and the grid of ``--k``, ``--temperature``,
``--distance_function`` and ``--feature_type`` (``backbone``, ``projector``). The model is
rebuilt from ``args.json`` (an ICL-MSR run gives its variant), the checkpoint is read with
``weights_only=True``; features are extracted on the GPU when there is one. The project's
built-in dataset is accepted too (``--dataset builtin``, paths unused): it is evaluated on its
test split in its three versions (full, foreground only, background decorrelated).

A dataset without a fixed recipe of solo's (``custom``, ImageNet at another size) is evaluated
at the run's crop size and with its normalisation (``data/eval_transforms.py``). Test folders of
the training set's classes are added with ``--test NAME=PATH`` (repeatable) and the ImageNet-9
variants with ``--test-suite in9 ROOT`` (``data/test_sets.py``): each is one more test set of
the grid, its bank the training set's features.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from solo_iclmsr.evaluation import (TopK, evaluation_device, extract_features, knn_accuracy,
                                   loader_workers)

__all__ = ["build_knn_parser", "add_test_arguments", "knn_main", "knn", "knn_grid"]

FEATURE_KEYS = {"backbone": "feats", "projector": "z"}


def build_knn_parser() -> argparse.ArgumentParser:
    """main_knn's arguments (``solo.args.knn``), ``--dataset`` also accepting ``builtin``."""
    from solo.args.dataset import custom_dataset_args, dataset_args

    parser = argparse.ArgumentParser(prog="solo-iclmsr knn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained_checkpoint_dir", type=str, required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=10)
    parser.add_argument("--k", type=int, nargs="+", default=[20])
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.07])
    parser.add_argument("--distance_function", type=str, nargs="+", default=["cosine"],
                        choices=["cosine", "euclidean"])
    parser.add_argument("--feature_type", type=str, nargs="+", default=["backbone"],
                        choices=sorted(FEATURE_KEYS))
    dataset_args(parser)
    custom_dataset_args(parser)
    dataset = parser._option_string_actions["--dataset"]
    dataset.choices = list(dataset.choices) + ["builtin"]
    parser._option_string_actions["--train_data_path"].required = False
    add_test_arguments(parser)
    return parser


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    """``--test NAME=PATH`` (repeatable) and ``--test-suite SUITE ROOT`` (``data/test_sets.py``),
    of ``knn``, ``linear`` and ``compare``."""
    parser.add_argument("--test", action="append", default=[], metavar="NAME=PATH",
                        help="a test folder of the training set's classes, evaluated as test "
                             "set NAME (repeatable)")
    parser.add_argument("--test-suite", "--test_suite", nargs=2, action="append", default=[],
                        metavar=("SUITE", "ROOT"), dest="test_suite",
                        help="every test set of a suite present under ROOT: in9 (ImageNet-9's "
                             "variants, ROOT/<variant>/val/<class>/)")


def _checkpoint(folder: Path) -> Path:
    if not (folder / "args.json").is_file():
        raise FileNotFoundError(f"--pretrained_checkpoint_dir {folder}: no args.json there; give "
                                f"the folder of a pretraining run (checkpoint.dir/<method>/<version>).")
    ckpts = sorted(folder.glob("*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"--pretrained_checkpoint_dir {folder}: no .ckpt there.")
    return max(ckpts, key=lambda p: p.stat().st_mtime)


def _eval_sets(args: argparse.Namespace, cfg, tests: Dict[str, str]) -> tuple:
    """The bank and the test sets: the run's config with the dataset and paths of the command
    line (the crop size and normalisation stay the run's)."""
    from omegaconf import OmegaConf

    from solo_iclmsr.data.test_sets import check_test_sets, evaluation_sets_with_tests

    if args.dataset != "builtin":
        cfg = OmegaConf.merge(cfg, {"data": {
            "dataset": args.dataset, "train_path": args.train_data_path,
            "val_path": args.val_data_path, "format": args.data_format, "no_labels": False},
            "diagnostics": {"masks": None}})
    train, sets = evaluation_sets_with_tests(cfg, tests=tests)
    if tests:
        from solo_iclmsr.data.test_sets import class_names

        check_test_sets(class_names(train) or [], tests,
                        f"the training set --train_data_path {args.train_data_path}")
    return train, sets


def knn_grid(model: torch.nn.Module, train_set, tests: Dict[str, object], batch_size: int = 256,
             feature_types: Sequence[str] = ("backbone",), ks: Sequence[int] = (20,),
             temperatures: Sequence[float] = (0.07,), distances: Sequence[str] = ("cosine",),
             num_workers: int = 0, precision: Any = None) -> Dict[str, Dict[str, TopK]]:
    """main_knn's grid on one model: {"<feature type> / <test set>": {"k=..,<distance>,T=..":
    TopK}}, the bank being ``train_set``'s features (extracted once; ``num_workers`` and
    ``precision``: ``extract_features``')."""
    keys = [FEATURE_KEYS[t] for t in feature_types]
    train, train_labels = extract_features(model, train_set, batch_size, keys=keys,
                                           num_workers=num_workers, precision=precision,
                                           name="the k-NN bank (training set)")
    results: Dict[str, Dict[str, TopK]] = {}
    for name, test_set in tests.items():
        test, test_labels = extract_features(model, test_set, batch_size, keys=keys,
                                             num_workers=num_workers, precision=precision,
                                             name=name)
        for feature_type, key in zip(feature_types, keys):
            row = results.setdefault(f"{feature_type} / {name}", {})
            for k in ks:
                for distance in distances:
                    for t in (temperatures if distance == "cosine" else [None]):
                        label = f"k={k},{distance}" + (f",T={t:g}" if t is not None else "")
                        row[label] = knn_accuracy(train[key], train_labels, test[key], test_labels,
                                                  k, t or 0.07, distance)
    return results


def knn(args: argparse.Namespace) -> Dict[str, Dict[str, TopK]]:
    """{feature type / test set: {"k=..,distance,T=..": TopK}} over the grid."""
    from solo_iclmsr.runs.checkpoints import load_pretrained

    from solo_iclmsr.data.test_sets import collect_tests

    tests = collect_tests(getattr(args, "test", []), getattr(args, "test_suite", []))
    folder = Path(args.pretrained_checkpoint_dir)
    model, cfg = load_pretrained(_checkpoint(folder), "--pretrained_checkpoint_dir")
    train_set, sets = _eval_sets(args, cfg, tests)
    model.to(evaluation_device())
    return knn_grid(model, train_set, sets, args.batch_size, args.feature_type, args.k,
                    args.temperature, args.distance_function, loader_workers(args.num_workers),
                    cfg.get("precision"))


def knn_main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse main_knn's arguments, run the grid, print one line per result."""
    args = build_knn_parser().parse_args(argv)
    if args.dataset != "builtin" and args.train_data_path is None:
        raise ValueError("--train_data_path is required for --dataset " + args.dataset)
    for where, row in knn(args).items():
        print(f"\n### {where.upper()} ###")
        for label, result in row.items():
            print(f"Result {label}: acc@1={result.top1:.2f}, acc@5={result.top5:.2f}")
    return 0
