"""The ``solo-iclmsr`` command: pretrain, linear, knn, and the demo (README's main job).

    solo-iclmsr pretrain --config configs/pretrain/cifar10/simclr.yaml data.train_path=./data
    solo-iclmsr knn --config configs/knn/knn.yaml pretrained_feature_extractor=runs/.../last.ckpt
    solo-iclmsr linear --config configs/linear/builtin/linear.yaml pretrained_feature_extractor=...
    solo-iclmsr demo

Overrides are Hydra-style ``key=value`` (``+key=value`` adds, ``~key`` removes). A bad config, a
missing dataset or a non-finite loss ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

DEMO_CONFIG = "configs/pretrain/builtin/simclr.yaml"
# The demo's budget on a 2-core CPU (about 3 minutes for both arms on an idle machine): timm's
# narrow test_resnet, 8000 images of the built-in dataset with rho = 0.9, 32 px, 5 epochs, crops
# of at least 40% of the image (smaller ones often miss the object), and an f_msr of width 32 (the
# default 64 costs more than this backbone at 32 px).
DEMO_OVERRIDES = [
    "backbone.name=test_resnet", "max_epochs=5", "optimizer.batch_size=128", "optimizer.lr=0.3",
    "scheduler.warmup_epochs=0", "+data.kwargs.n_train=8000", "+data.kwargs.n_test=2000",
    "+data.kwargs.rho=0.9", "data.num_workers=0", "method_kwargs.proj_hidden_dim=512",
    "method_kwargs.proj_output_dim=128", "augmentations.0.rrc.crop_min_scale=0.4",
    "iclmsr.msr_width=32",
]


def _repo_file(relative: str) -> Path:
    """A file of the checkout (configs live beside the package)."""
    path = Path(relative)
    if path.exists():
        return path
    return Path(__file__).resolve().parents[1] / relative


def _print_table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    text = "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
    print(text)
    return text


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pre-train a method from a config (resumes its run folder if it exists)."""
    from solo_iclmsr import config as cfgmod
    from solo_iclmsr.train import pretrain

    raw = cfgmod.compose(args.config, args.overrides)
    cfg = cfgmod.validate_pretrain(raw)
    run = pretrain(cfg, args.output_dir, raw_config=raw)
    print(f"run folder: {run}")
    return 0


def cmd_knn(args: argparse.Namespace) -> int:
    """k-NN top-1/top-5 of a frozen pre-trained backbone."""
    from solo_iclmsr import config as cfgmod
    from solo_iclmsr.train import knn

    results = knn(cfgmod.load_knn_config(args.config, args.overrides))
    rows = [[test, key, f"{r.top1:.2f}", f"{r.top5:.2f}"]
            for test, per in results.items() for key, r in per.items()]
    _print_table(rows, ["test set", "k-NN", "top-1", "top-5"])
    return 0


def cmd_linear(args: argparse.Namespace) -> int:
    """Linear probe on frozen features of a pre-trained backbone."""
    from solo_iclmsr import config as cfgmod
    from solo_iclmsr.train import linear

    results = linear(cfgmod.load_linear_config(args.config, args.overrides))
    _print_table([[name, f"{r.top1:.2f}", f"{r.top5:.2f}"] for name, r in results.items()],
                 ["test set", "top-1", "top-5"])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """SimCLR with and without ICL-MSR on the built-in dataset; k-NN table and a plot."""
    from solo_iclmsr import config as cfgmod
    from solo_iclmsr.train import knn, pretrain

    out = Path(args.output_dir)
    config = _repo_file(DEMO_CONFIG)
    results: Dict[str, Dict[str, float]] = {}
    seconds: Dict[str, float] = {}
    for arm, enabled in (("SimCLR", "false"), ("SimCLR + ICL-MSR", "true")):
        name = "demo-simclr-iclmsr" if enabled == "true" else "demo-simclr"
        overrides = DEMO_OVERRIDES + [f"iclmsr.enabled={enabled}", f"name={name}"] + args.overrides
        raw = cfgmod.compose(config, overrides)
        cfg = cfgmod.validate_pretrain(raw)
        start = time.perf_counter()
        run = pretrain(cfg, out, raw_config=raw, progress_bar=not args.quiet)
        seconds[arm] = time.perf_counter() - start
        knn_cfg = cfgmod.load_knn_config(_repo_file("configs/knn/knn.yaml"), [
            f"pretrained_feature_extractor={run / 'checkpoints' / 'last.ckpt'}",
            f"backbone.name={cfg.backbone.name}", "knn.k=[5]", "knn.distance_function=[cosine]",
            "accelerator=cpu", *[f"+data.kwargs.{k}={v}" for k, v in cfg.data.kwargs.items()]])
        results[arm] = {test: per["k=5,cosine,T=0.07"].top1 for test, per in knn(knn_cfg).items()}
    rows = [[arm, f"{r['full']:.1f}", f"{r['fg']:.1f}", f"{r['decorrelated']:.1f}", f"{seconds[arm]:.0f}"]
            for arm, r in results.items()]
    print("\n5-NN top-1 (%) on the built-in test set, trained on full images "
          "(rho = 0.9: the background predicts the class 90% of the time)")
    table = _print_table(rows, ["method", "full", "foreground only", "background decorrelated",
                                "train s"])
    (out / "demo_results.json").write_text(json.dumps({"knn5_top1": results, "seconds": seconds},
                                                      indent=2) + "\n")
    (out / "demo_results.txt").write_text(table + "\n")
    plot = _plot_demo(results, out / "demo_knn.png")
    print(f"\nplot: {plot}\nruns: {out}")
    return 0


def _plot_demo(results: Dict[str, Dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = [("full", "full"), ("fg", "foreground only"), ("decorrelated", "background\ndecorrelated")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(results)
    for i, (arm, r) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(tests))]
        bars = ax.bar(xs, [r[key] for key, _ in tests], width, label=arm)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(tests))])
    ax.set_xticklabels([label for _, label in tests])
    ax.set_ylabel("5-NN top-1 (%)")
    ax.set_title("Built-in dataset, trained on full images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solo-iclmsr", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, needs_config in (("pretrain", cmd_pretrain, True), ("knn", cmd_knn, True),
                                   ("linear", cmd_linear, True), ("demo", cmd_demo, False)):
        p = sub.add_parser(name, help=(fn.__doc__ or name).split("\n")[0])
        if needs_config:
            p.add_argument("--config", required=True, help="YAML config in solo-learn's schema")
        if name in ("pretrain", "demo"):
            p.add_argument("--output-dir", default="runs", help="parent of the run folders")
        if name == "demo":
            p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.set_defaults(fn=fn)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # Overrides may come before or after the options: collect the stray key=value / ~key words.
    args, extra = parser.parse_known_args(argv)
    stray = [word for word in extra if "=" not in word and not word.startswith("~")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = list(args.overrides) + extra
    from solo_iclmsr.train import NonFiniteLossError

    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
