"""Datasets written by the tests, in the layouts solo-learn reads: CIFAR's pickled batches
(torchvision's files, without the download) and image folders."""

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar(root: Path, n_train: int = 40, n_test: int = 16, seed: int = 0) -> Path:
    """torchvision's CIFAR-10 (``cifar-10-batches-py``) and CIFAR-100 (``cifar-100-python``)
    layouts with random images; returns ``root``. torchvision checks the files' md5 sums: tests
    patch its integrity checks."""
    rng = np.random.default_rng(seed)

    def dump(path: Path, n: int, label_key: str, classes: int) -> None:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: [int(x) for x in rng.integers(0, classes, n)]}
        with open(path, "wb") as f:
            pickle.dump(batch, f)

    c10 = Path(root) / "cifar-10-batches-py"
    c10.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        dump(c10 / f"data_batch_{i}", n_train // 5, "labels", 10)
    dump(c10 / "test_batch", n_test, "labels", 10)
    with open(c10 / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    c100 = Path(root) / "cifar-100-python"
    c100.mkdir(parents=True, exist_ok=True)
    dump(c100 / "train", n_train, "fine_labels", 100)
    dump(c100 / "test", n_test, "fine_labels", 100)
    with open(c100 / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)
    return Path(root)


def write_image_folder(root: Path, classes: int = 2, per_class: int = 8, size: int = 24,
                       seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.png`` of random RGB images; returns ``root``."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = Path(root) / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return Path(root)
