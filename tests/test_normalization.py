"""Training views, f_msr's input and evaluation normalise with the same statistics."""

import pytest
import torch

from solo_iclmsr import config as cfgmod
from solo_iclmsr.augment import build_multiview_augmentation
from solo_iclmsr.normalization import DATASET_MEAN_STD, IMAGENET_MEAN_STD


@pytest.mark.parametrize("dataset", sorted(DATASET_MEAN_STD) + ["custom"])
def test_evaluation_uses_the_training_statistics(dataset):
    aug = build_multiview_augmentation([{"crop_size": 8, "num_crops": 1}], dataset)
    mean, std = cfgmod.dataset_mean_std(dataset)
    assert torch.allclose(aug.raw_mean.flatten(), torch.tensor(mean))
    assert torch.allclose(aug.raw_std.flatten(), torch.tensor(std))
    expected = DATASET_MEAN_STD.get(dataset, IMAGENET_MEAN_STD)
    assert (mean, std) == expected
