"""Tests of the raw-image datasets, the factory, stratified subsets and missing-data errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import FakeData

from solo_iclmsr.data import (
    ArrayImageDataset,
    BuiltinSpec,
    build_dataset,
    make_dataloader,
    stratified_indices,
)

SPEC = BuiltinSpec(n_train=400, n_test=200, seed=2)
COLOURS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}


@pytest.mark.parametrize(
    "name, sub, layout",
    [
        ("cifar10", "cifar-10-batches-py", "torchvision's cifar10 files.*download=True"),
        ("stl10", "stl10_binary", "torchvision's stl10 files.*download=True"),
        ("imagenet", "train", r"ImageFolder tree .*/train/<class>/<image> and .*/val/<class>/<image>"),
        ("tinyimagenet", "train", r"ImageFolder tree"),
        ("custom", "", r"ImageFolder tree .*<class>/<image> or a flat folder"),
    ],
)
def test_missing_dataset_fails_at_once_with_one_line(tmp_path, name, sub, layout):
    root = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=f"{name} not found at .*nothing.*{sub}.*: expected .*{layout}") as err:
        build_dataset(name, root, "train")
    assert "\n" not in str(err.value)


def _save(path, colour, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_custom_labelled_folder(tmp_path):
    for c, colour in COLOURS.items():
        for i in range(3):
            _save(tmp_path / "train" / c / f"{i}.png", colour, (40 + 7 * i, 30))
    ds = build_dataset("custom", tmp_path, "train", image_size=16)
    assert len(ds) == 9 and ds.classes == ["ant", "bee", "cat"]
    for k in range(len(ds)):
        index, img, label = ds[k]
        assert index == k and img.dtype == torch.uint8 and img.shape == (3, 16, 16)
        assert img[:, 8, 8].tolist() == list(COLOURS[ds.classes[label]])
    assert np.bincount(ds.labels).tolist() == [3, 3, 3]


def test_custom_flat_folder_has_label_minus_one(tmp_path):
    for i in range(5):
        _save(tmp_path / f"img{i}.jpg", (10 * i, 20, 30), (20, 28))
    ds = build_dataset("custom", tmp_path, "train", image_size=12)
    labels = [ds[k][2] for k in range(len(ds))]
    assert labels == [-1] * 5 and ds[0][1].shape == (3, 12, 12)


def test_imagefolder_dataset_from_fakedata(tmp_path):
    fake = FakeData(size=12, image_size=(3, 40, 60), num_classes=3, random_offset=0)
    for i in range(len(fake)):
        img, label = fake[i]
        for split in ("train", "val"):
            folder = tmp_path / split / f"c{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i}.png")
    ds = build_dataset("imagenet100", tmp_path, "val", image_size=20)
    _, img, label = ds[0]
    assert img.shape == (3, 20, 20) and img.dtype == torch.uint8 and 0 <= label < 3
    # shorter side resized to 20 (40x60 -> 20x30), then the centre 20x20 crop
    src = np.asarray(Image.open(ds.samples[0][0]).convert("RGB").resize((30, 20), Image.BILINEAR))
    assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - src[:, 5:25].astype(int)).mean() < 3.0


def test_stratified_fraction_keeps_class_proportions():
    labels = np.repeat([0, 1, 2, -1], [100, 50, 10, 40])
    idx = stratified_indices(labels, 0.2, seed=0)
    kept = labels[idx]
    assert [(kept == c).sum() for c in (0, 1, 2, -1)] == [20, 10, 2, 8]
    assert np.array_equal(idx, stratified_indices(labels, 0.2, seed=0))
    assert not np.array_equal(idx, stratified_indices(labels, 0.2, seed=1))
    images = np.zeros((200, 3, 4, 4), np.uint8)
    ds = ArrayImageDataset(images, labels, fraction=0.2, seed=0)
    assert len(ds) == 40 and np.array_equal(ds.labels, kept)
    with pytest.raises(ValueError, match=r"fraction=1\.5 is invalid: expected a value in \(0, 1\]"):
        stratified_indices(labels, 1.5)


def test_builtin_variants_and_dataloader(tmp_path):
    full = build_dataset("builtin", tmp_path, "test", builtin=SPEC)
    fg = build_dataset("builtin", tmp_path, "test", variant="fg", builtin=SPEC)
    dec = build_dataset("builtin", tmp_path, "test", variant="decorrelated", builtin=SPEC)
    _, a, la = full[5]
    _, b, lb = fg[5]
    _, c, lc = dec[5]
    m = torch.from_numpy(full.mask[5]).bool()
    assert la == lb == lc and torch.equal(a[:, m], b[:, m]) and torch.equal(a[:, m], c[:, m])
    assert (b[:, ~m] == 128).all()
    half = build_dataset("builtin", tmp_path, "pretrain", builtin=SPEC, fraction=0.5)
    assert len(half) == 200 and np.bincount(half.labels).tolist() == [20] * 10
    loader = make_dataloader(half, batch_size=64)
    batches = list(loader)
    index, images, labels = batches[0]
    assert len(batches) == 3 and images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and index.shape == (64,)
    again = next(iter(make_dataloader(half, batch_size=64)))
    assert torch.equal(again[0], index)  # same seed, same order
    with pytest.raises(ValueError, match=r"variant='decorrelated' is invalid for split='train'"):
        build_dataset("builtin", tmp_path, "train", variant="decorrelated", builtin=SPEC)
    with pytest.raises(ValueError, match=r"dataset name='cifar' is invalid: did you mean 'cifar10'\?"):
        build_dataset("cifar", tmp_path)
