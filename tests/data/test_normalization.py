"""The device augmentation normalises exactly as solo-learn's own pipeline does, for every dataset
solo-learn knows and for datasets it does not (``custom``, the project's ``builtin``), with and
without an explicit ``mean``/``std`` in the entry."""

import ast
import inspect
import textwrap

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from solo_iclmsr.data.augment import build_multiview_augmentation, mean_std

OPS = ("color_jitter", "grayscale", "gaussian_blur", "solarization", "equalization", "horizontal_flip")
SIZE = 16
# the statistics the project's builtin configs give (mean 0.5, std 0.25 per channel)
BUILTIN_STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
OTHER_STATS = {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1]}


def solo_table_datasets():
    """The datasets of solo-learn's ``MEANS_N_STD`` table, read from the source of its
    ``build_transform_pipeline`` (the table is local to that function)."""
    from solo.data.pretrain_dataloader import build_transform_pipeline

    tree = ast.parse(textwrap.dedent(inspect.getsource(build_transform_pipeline)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MEANS_N_STD" for t in node.targets):
            return [key.value for key in node.value.keys]
    raise AssertionError("no MEANS_N_STD table in solo-learn's build_transform_pipeline")


def identity_entry(**stats):
    """An entry whose only effect is the normalisation: no random op, a resize to the image's size."""
    return {"rrc": {"enabled": False}, **{op: {"prob": 0.0} for op in OPS}, "crop_size": SIZE, "num_crops": 1, **stats}


def cases():
    """(dataset, explicit statistics or None) for every dataset solo knows, custom and builtin."""
    datasets = solo_table_datasets() + ["custom", "builtin"]
    out = [(d, None) for d in datasets] + [(d, OTHER_STATS) for d in datasets if d != "builtin"]
    return out + [("builtin", BUILTIN_STATS)]


def test_solo_table_is_found():
    datasets = solo_table_datasets()
    assert {"cifar10", "cifar100", "stl10", "imagenet100", "imagenet"} <= set(datasets)
    assert "custom" not in datasets and "builtin" not in datasets


def test_views_and_raw_view_are_normalised_as_solo_normalises():
    from solo.data.pretrain_dataloader import build_transform_pipeline

    x = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    failures = []
    for dataset, stats in cases():
        entry = identity_entry(**(stats or {}))
        solo = build_transform_pipeline(dataset, OmegaConf.create(entry))
        expected = torch.stack([solo(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in x])
        aug = build_multiview_augmentation([entry], dataset)
        (view,) = aug(x)
        for name, ours in (("views", view), ("raw_view", aug.raw_view(x))):
            if not torch.allclose(ours, expected, atol=1e-5):
                failures.append((dataset, stats, name, (ours - expected).abs().max().item()))
        # mean_std, as evaluation calls it: an entry of the statistics alone
        normalize = solo.transforms[-1]
        solo_stats = tuple(tuple(float(v) for v in s) for s in (normalize.mean, normalize.std))
        if mean_std(dataset, stats) != solo_stats or mean_std(dataset, entry) != solo_stats:
            failures.append((dataset, stats, "mean_std", mean_std(dataset, stats), solo_stats))
    assert not failures, failures


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_solo_table_wins_over_the_entry(dataset):
    assert mean_std(dataset, OTHER_STATS) == mean_std(dataset) != (tuple(OTHER_STATS["mean"]), tuple(OTHER_STATS["std"]))


def test_datasets_solo_does_not_know_use_the_entry_else_imagenet():
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert mean_std("builtin", BUILTIN_STATS) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert mean_std("custom", OTHER_STATS) == ((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    imagenet = (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
    assert mean_std("custom") == mean_std("custom", {"mean": None, "std": None}) == imagenet
    # one statistic given: solo takes it and ImageNet's for the other
    assert mean_std("custom", {"mean": [0.5] * 3}) == ((0.5, 0.5, 0.5), imagenet[1])
    assert np.allclose(mean_std("custom", OmegaConf.create({"std": 0.25}))[1], [0.25] * 3)
