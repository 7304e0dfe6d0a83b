"""``solo-iclmsr demo`` (``make demo``): SimCLR with and without ICL-MSR on the built-in dataset.

Both arms run ``configs/pretrain/builtin/simclr.yaml`` through ``solo-iclmsr pretrain`` with the
same small CPU budget (``DEMO_OVERRIDES``) and differ in ``iclmsr.enabled`` only; each is then
evaluated by 5-NN on the built-in test images in their three versions. Prints a table and writes
``demo_results.json``, ``demo_results.txt`` and ``demo_knn.png`` into the output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Sequence

from solo_iclmsr.evaluation import extract_features, knn_accuracy

__all__ = ["DEMO_OVERRIDES", "demo", "configs_dir"]

# The budget on a 2-core CPU (a few minutes for both arms on an idle machine): timm's narrow
# test_resnet with its ImageNet stem (a 1x1 last map at 32 px; the CIFAR stem's 4x4 map has 16x
# the positions in every stage), 8000 images of the built-in dataset with rho = 0.9, 32 px,
# 5 epochs, batch 128; f_msr of width 32 (the default 64 costs more than this backbone).
DEMO_OVERRIDES = [
    "backbone.name=test_resnet", "++backbone.kwargs.cifar=false", "max_epochs=5",
    "optimizer.batch_size=128", "optimizer.lr=0.3",
    "++scheduler.warmup_epochs=0", "++data.builtin.n_train=8000", "++data.builtin.n_test=2000",
    "data.builtin.rho=0.9", "data.num_workers=0", "method_kwargs.proj_hidden_dim=512",
    "method_kwargs.proj_output_dim=128", "iclmsr.msr_width=32", "accelerator=cpu",
    "auto_resume.enabled=False",
]
TESTS = (("full", "full"), ("fg", "foreground only"), ("decorrelated", "background decorrelated"))


def configs_dir() -> Path:
    """The project's ``configs/`` folder (beside the package in the checkout)."""
    folder = Path(__file__).resolve().parents[2] / "configs"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: the demo runs from a checkout of "
                                f"solo-iclmsr (its configs/ folder).")
    return folder


def _knn5(checkpoint: Path) -> Dict[str, float]:
    from solo_iclmsr.cli.checkpoints import load_pretrained
    from solo_iclmsr.data.loaders import builtin_eval_sets

    model, cfg = load_pretrained(checkpoint)
    train_set, tests = builtin_eval_sets(cfg)
    train, train_labels = extract_features(model.backbone, train_set)
    out = {}
    for name, test_set in tests.items():
        test, test_labels = extract_features(model.backbone, test_set)
        out[name] = knn_accuracy(train["feats"], train_labels, test["feats"], test_labels, 5).top1
    return out


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def demo(output_dir: str, overrides: Sequence[str] = (), quiet: bool = False) -> Dict[str, Dict]:
    """Run both arms and the evaluation; returns {arm: {test set: 5-NN top-1}}."""
    from solo_iclmsr.cli.pretrain import pretrain
    from solo_iclmsr.config import compose

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Dict[str, float]] = {}
    seconds: Dict[str, float] = {}
    for arm, enabled in (("SimCLR", False), ("SimCLR + ICL-MSR", True)):
        name = "demo-simclr-iclmsr" if enabled else "demo-simclr"
        cfg = compose(str(configs_dir() / "pretrain" / "builtin"), "simclr", [
            *DEMO_OVERRIDES, f"iclmsr.enabled={enabled}", f"name={name}",
            f"checkpoint.dir={out / name}", f"++enable_progress_bar={not quiet}", *overrides])
        start = time.perf_counter()
        run = pretrain(cfg)
        seconds[arm] = time.perf_counter() - start
        results[arm] = _knn5(run.last_checkpoint)
    rows = [[arm, *(f"{r[key]:.1f}" for key, _ in TESTS), f"{seconds[arm]:.0f}"]
            for arm, r in results.items()]
    table = _table(rows, ["method", *(label for _, label in TESTS), "train s"])
    print("\n5-NN top-1 (%) on the built-in test set, trained on full images "
          "(rho = 0.9: the background predicts the class 90% of the time)")
    print(table)
    (out / "demo_results.json").write_text(json.dumps({"knn5_top1": results, "seconds": seconds},
                                                      indent=2) + "\n")
    (out / "demo_results.txt").write_text(table + "\n")
    print(f"\nplot: {_plot(results, out / 'demo_knn.png')}\nruns: {out}")
    return results


def _plot(results: Dict[str, Dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(results)
    for i, (arm, r) in enumerate(results.items()):
        bars = ax.bar([j + i * width for j in range(len(TESTS))], [r[k] for k, _ in TESTS],
                      width, label=arm)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(TESTS))])
    ax.set_xticklabels([label.replace(" ", "\n", 1) for _, label in TESTS])
    ax.set_ylabel("5-NN top-1 (%)")
    ax.set_title("Built-in dataset, trained on full images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
