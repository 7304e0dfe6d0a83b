"""``solo-iclmsr knn``: solo-learn's ``main_knn.py`` on a pretraining run's folder.

The arguments are main_knn's (``scripts/knn/imagenet-100/knn.sh`` works as it is, with
``solo-iclmsr knn`` instead of ``python3 main_knn.py``): the checkpoint folder (``args.json`` and
a ``.ckpt``), the dataset and its paths, and the grid of ``--k``, ``--temperature``,
``--distance_function`` and ``--feature_type`` (``backbone``, ``projector``). The model is
rebuilt from ``args.json`` (an ICL-MSR run gives its variant), the checkpoint is read with
``weights_only=True``; features are extracted on the GPU when there is one. The project's
built-in dataset is accepted too (``--dataset builtin``, paths unused): it is evaluated on its
test split in its three versions (full, foreground only, background decorrelated).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from solo_iclmsr.evaluation import TopK, extract_features, knn_accuracy

__all__ = ["build_knn_parser", "knn_main", "knn", "knn_grid"]

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
    return parser


def _checkpoint(folder: Path) -> Path:
    if not (folder / "args.json").is_file():
        raise FileNotFoundError(f"--pretrained_checkpoint_dir {folder}: no args.json there; give "
                                f"the folder of a pretraining run (checkpoint.dir/<method>/<version>).")
    ckpts = sorted(folder.glob("*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"--pretrained_checkpoint_dir {folder}: no .ckpt there.")
    return max(ckpts, key=lambda p: p.stat().st_mtime)


def _eval_sets(args: argparse.Namespace, cfg) -> tuple:
    if args.dataset == "builtin":
        from solo_iclmsr.data.loaders import evaluation_sets

        return evaluation_sets(cfg)
    from solo.data.classification_dataloader import prepare_datasets, prepare_transforms

    _, transform = prepare_transforms(args.dataset)
    train, val = prepare_datasets(args.dataset, T_train=transform, T_val=transform,
                                  train_data_path=args.train_data_path,
                                  val_data_path=args.val_data_path, data_format=args.data_format)
    return train, {"val": val}


def knn_grid(model: torch.nn.Module, train_set, tests: Dict[str, object], batch_size: int = 256,
             feature_types: Sequence[str] = ("backbone",), ks: Sequence[int] = (20,),
             temperatures: Sequence[float] = (0.07,), distances: Sequence[str] = ("cosine",)
             ) -> Dict[str, Dict[str, TopK]]:
    """main_knn's grid on one model: {"<feature type> / <test set>": {"k=..,<distance>,T=..":
    TopK}}, the bank being ``train_set``'s features."""
    keys = [FEATURE_KEYS[t] for t in feature_types]
    train, train_labels = extract_features(model, train_set, batch_size, keys=keys)
    results: Dict[str, Dict[str, TopK]] = {}
    for name, test_set in tests.items():
        test, test_labels = extract_features(model, test_set, batch_size, keys=keys)
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

    folder = Path(args.pretrained_checkpoint_dir)
    model, cfg = load_pretrained(_checkpoint(folder), "--pretrained_checkpoint_dir")
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    train_set, tests = _eval_sets(args, cfg)
    return knn_grid(model, train_set, tests, args.batch_size, args.feature_type, args.k,
                    args.temperature, args.distance_function)


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
