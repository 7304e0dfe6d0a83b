"""``solo-iclmsr demo`` (``make demo``): a small ``solo-iclmsr compare`` on the built-in dataset.

SimCLR (``configs/pretrain/builtin/simclr.yaml``) with and without ICL-MSR, one seed, the small
CPU budget of ``DEMO_OVERRIDES``, evaluated by 5-NN (and 20-NN) on the built-in test images in
their three versions: full, foreground only, background decorrelated. Prints the report's
table and writes the report (``report.md``, ``results.csv``, ``report.png``) into the output
folder; run again, it finds its runs done and only prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from solo_iclmsr.cli.compare import CompareResult

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
]


def configs_dir() -> Path:
    """The project's ``configs/`` folder (beside the package in the checkout)."""
    folder = Path(__file__).resolve().parents[2] / "configs"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: the demo runs from a checkout of "
                                f"solo-iclmsr (its configs/ folder).")
    return folder


def demo(output_dir: str, overrides: Sequence[str] = (), quiet: bool = False) -> CompareResult:
    """Run the comparison (or finish it) and print its 5-NN table; returns ``compare``'s
    result."""
    from solo_iclmsr.cli.compare import compare

    config_path = configs_dir() / "pretrain" / "builtin"
    result = compare(str(config_path), "simclr", output_dir, [*DEMO_OVERRIDES, *overrides],
                     seeds=[0], eval=["knn"], quiet=quiet,
                     command=f"solo-iclmsr demo --output-dir {output_dir}")
    text = result["report"].read_text()
    table = text[text.index("## knn5"):text.index("## knn20")].strip()
    print("\nSimCLR with and without ICL-MSR on the built-in dataset (rho = 0.9: the background "
          "predicts the class 90% of the time), trained on full images\n")
    print(table)
    print(f"\nreport: {result['report']}\nfigure: {result.get('figure')}")
    return result
