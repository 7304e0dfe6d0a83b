"""A tiny tree in the layout of the Backgrounds Challenge (ImageNet-9): ``ROOT/<variant>/val/
<class>/<image>`` for the test variants and ``ROOT/in9l/train/<class>/<image>`` to train on, with
the challenge's class-folder names (five of its nine classes, a space in one as in the real
``02_wheeled vehicle``; solo's linear model needs five classes for its top-5)."""

from pathlib import Path
from typing import Sequence

from fake_data import write_image_folder

from solo_iclmsr.data.test_sets import IN9_VARIANTS

CLASSES = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore")


def write_classes(root: Path, classes: Sequence[str] = CLASSES, per_class: int = 4,
                  size: int = 16, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` of random images, one folder per name of ``classes``."""
    for i, name in enumerate(classes):
        write_image_folder(root / "_tmp", classes=1, per_class=per_class, size=size,
                           seed=seed * 100 + i)
        (root / "_tmp" / "class0").rename(root / name)
        (root / "_tmp").rmdir()
    return root


def write_in9(root: Path, variants: Sequence[str] = IN9_VARIANTS, train_per_class: int = 10,
              test_per_class: int = 2, size: int = 16) -> Path:
    """The tree: ``in9l/train`` with ``train_per_class`` images a class, each of ``variants``
    with ``test_per_class``; returns ``root``."""
    write_classes(root / "in9l" / "train", per_class=train_per_class, size=size)
    for j, variant in enumerate(variants):
        write_classes(root / variant / "val", per_class=test_per_class, size=size, seed=j + 1)
    return root
