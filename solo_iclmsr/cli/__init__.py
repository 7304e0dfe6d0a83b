"""The ``solo-iclmsr`` command: solo-learn's entry points with ICL-MSR, and the demo.

    solo-iclmsr pretrain --config-path scripts/pretrain/cifar/ --config-name simclr \\
        ++iclmsr.enabled=true [hydra overrides]           # main_pretrain.py
    solo-iclmsr linear --config-path scripts/linear/imagenet-100/ --config-name simclr \\
        pretrained_feature_extractor=PATH [--test NAME=PATH] [--test-suite in9 ROOT]
    solo-iclmsr knn --pretrained_checkpoint_dir DIR --dataset cifar10 ... \\
        [--test NAME=PATH] [--test-suite in9 ROOT]                     # main_knn.py
    solo-iclmsr strata --checkpoint PATH --out strata.png              # stratum maps
    solo-iclmsr compare --config-path scripts/pretrain/cifar/ --config-name simclr \
        --seeds 0 1 2 --out runs/simclr [--arm NAME "OVERRIDES"] [--equal-time]  # paired reruns
    solo-iclmsr demo                                                   # README's main job

A bad config, a missing dataset, an unusable checkpoint or a non-finite loss ends with one line
on stderr and exit code 2; what was already written stays as it is.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, Optional, Sequence

__all__ = ["main", "build_parser"]

from solo_iclmsr.errors import USER_ERRORS, one_line


def _hydra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-path", required=True, help="folder of the config (as Hydra's)")
    parser.add_argument("--config-name", required=True, help="config name, without .yaml")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from solo_iclmsr.runs.pretrain import pretrain
    from solo_iclmsr.config import compose

    result = pretrain(compose(args.config_path, args.config_name, args.overrides))
    if result.already_complete:
        print(f"run folder: {result.folder} (already complete: its checkpoint has reached "
              f"max_epochs after {result.global_step} optimizer steps; nothing was trained)")
    else:
        print(f"run folder: {result.folder} ({result.global_step} optimizer steps)")
    if result.last_checkpoint is not None:
        print(f"last checkpoint: {result.last_checkpoint}")
    return 0


def _cmd_linear(args: argparse.Namespace) -> int:
    from solo_iclmsr.config import compose
    from solo_iclmsr.data.test_sets import collect_tests
    from solo_iclmsr.runs.linear import linear

    tests = collect_tests(args.test, args.test_suite)
    result = linear(compose(args.config_path, args.config_name, args.overrides), tests)
    for name, topk in result.tests.items():
        print(f"linear / {name}: acc@1={topk.top1:.2f}, acc@5={topk.top5:.2f}")
    return 0


def _cmd_knn(args: argparse.Namespace) -> int:
    from solo_iclmsr.runs.knn import knn_main

    return knn_main(args.overrides)


def _cmd_strata(args: argparse.Namespace) -> int:
    from solo_iclmsr.cli.strata import render_strata

    print(f"stratum maps: {render_strata(args.checkpoint, args.out, args.images, args.overrides)}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from solo_iclmsr.cli.compare import compare

    result = compare(args.config_path, args.config_name, args.out, args.overrides, args.seeds,
                     [tuple(a) for a in args.arm], args.equal_time, args.eval, args.knn_k,
                     args.linear_config_path, args.linear_config_name, args.linear_epochs,
                     args.jobs, args.launcher, args.launcher_override, args.force,
                     args.report_only, args.quiet, command=_command_line(), tests=args.test,
                     test_suites=args.test_suite)
    print((result["report"]).read_text())
    print(f"report: {result['report']}\nresults: {result['results']}"
          + (f"\nfigure: {result['figure']}" if "figure" in result else ""))
    for run, why in result["failed"].items():
        print(f"error: run {run} did not finish: {why}", file=sys.stderr)
    return 2 if result["failed"] else 0


def _command_line() -> str:
    import shlex

    return "solo-iclmsr " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _cmd_demo(args: argparse.Namespace) -> int:
    from solo_iclmsr.cli.demo import demo

    demo(args.output_dir, args.overrides, quiet=args.quiet)
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "pretrain": _cmd_pretrain, "linear": _cmd_linear, "knn": _cmd_knn, "strata": _cmd_strata,
    "compare": _cmd_compare, "demo": _cmd_demo,
}
HELP = {
    "pretrain": "pretrain a method (main_pretrain.py), with ICL-MSR when iclmsr.enabled",
    "linear": "linear evaluation of a pretrained backbone (main_linear.py)",
    "knn": "k-NN evaluation of a pretrained checkpoint folder (main_knn.py's arguments)",
    "strata": "render f_msr's strata of a checkpoint as maps over images (a PNG)",
    "compare": "paired reruns of a pretraining config with and without ICL-MSR, over seeds, "
               "resumable, with a report",
    "demo": "a small compare on the built-in dataset: SimCLR with and without ICL-MSR",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solo-iclmsr", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        if name in ("pretrain", "linear"):
            _hydra(p)
        if name == "linear":
            from solo_iclmsr.runs.knn import add_test_arguments

            add_test_arguments(p)
        if name == "strata":
            p.add_argument("--checkpoint", required=True, help="a pretraining checkpoint (.ckpt)")
            p.add_argument("--out", default="strata.png", help="the PNG to write")
            p.add_argument("--images", type=int, default=6, help="images to show")
        if name == "compare":
            from solo_iclmsr.cli.compare import add_arguments

            add_arguments(p)
        if name == "demo":
            p.add_argument("--output-dir", default="runs/demo", help="where the runs go")
            p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(fn=COMMANDS[name])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a command; user errors print one line on stderr and return 2."""
    from solo_iclmsr.plugin.callbacks import NonFiniteLossError

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "knn":  # Hydra overrides: key=value, +key=value, ++key=value, ~key
        stray = [w for w in rest if "=" not in w and not w.startswith("~")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)} (overrides look like key=value)")
    args.overrides = list(rest)
    try:
        return args.fn(args)
    except (*USER_ERRORS, NonFiniteLossError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2


def entry_point() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
