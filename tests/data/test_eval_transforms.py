"""The evaluation transform follows the run: a custom folder (or ImageNet at another size) is
evaluated at the run's crop size with its normalisation; CIFAR, STL-10 and ImageNet at 224 keep
solo's recipes; the linear probe reads the run's crop size from its config or the pretraining
run's ``args.json``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_image_folder
from omegaconf import OmegaConf
from PIL import Image

from solo_iclmsr.config import compose
from solo_iclmsr.data.eval_transforms import recipe_of, run_recipe
from solo_iclmsr.data.loaders import evaluation_sets, validation_loader

REPO = Path(__file__).resolve().parents[2]
BUILTIN = str(REPO / "configs" / "pretrain" / "builtin")
STATS = {"mean": [0.4, 0.3, 0.2], "std": [0.2, 0.25, 0.3]}
COLOUR = (200, 100, 50)


def _flat(size, colour=COLOUR):
    return Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8))


def _random(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _expected_flat(stats):
    colour = torch.tensor(COLOUR, dtype=torch.float32) / 255.0
    return (colour - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])


def _custom_cfg(tmp_path, crop):
    train = tmp_path / "train"
    write_image_folder(train, classes=2, per_class=3, size=40)
    val = tmp_path / "val"
    for c in range(2):
        (val / f"class{c}").mkdir(parents=True)
        _flat(40).save(val / f"class{c}" / "0.png")
    return compose(BUILTIN, "simclr", [
        "data.dataset=custom", f"data.train_path='{train}'", f"++data.val_path='{val}'",
        f"augmentations.0.crop_size={crop}", f"augmentations.0.mean={STATS['mean']}",
        f"augmentations.0.std={STATS['std']}", "data.num_workers=0", "optimizer.batch_size=4",
        "++data.no_labels=false"])


def test_a_custom_run_is_evaluated_at_its_crop_with_its_normalisation(tmp_path):
    cfg = _custom_cfg(tmp_path, crop=32)
    recipe = run_recipe(cfg)
    assert not recipe.fixed and recipe.resize == 37 and recipe.crop_size == 32
    train, tests = evaluation_sets(cfg)
    assert set(tests) == {"val"} and len(train) == 6
    x, label = tests["val"][1]
    assert x.shape == (3, 32, 32) and label == 1
    # a flat image stays flat through resize and crop: each pixel is (colour - mean) / std
    expected = _expected_flat(STATS)[:, None, None].expand(3, 32, 32)
    assert torch.allclose(x, expected, atol=1e-5)
    assert train[0][0].shape == (3, 32, 32)
    # the pretraining run's online validation too
    batch, labels = next(iter(validation_loader(cfg)))
    assert batch.shape == (2, 3, 32, 32) and labels.tolist() == [0, 1]


def test_a_224_custom_run_with_imagenet_statistics_is_evaluated_as_solo_does():
    from solo.data.classification_dataloader import prepare_transforms

    _, solo_val = prepare_transforms("custom")
    ours = recipe_of("custom", {"crop_size": 224}).eval_transform()
    image = _random(300, 260)
    assert torch.equal(ours(image), solo_val(image))


@pytest.mark.parametrize("dataset,crop,size", [("cifar10", 32, 32), ("cifar100", 32, 32),
                                               ("stl10", 96, 120), ("imagenet", 224, 300),
                                               ("imagenet100", 224, 300)])
def test_solo_recipes_stay_for_their_datasets(dataset, crop, size):
    from solo.data.classification_dataloader import prepare_transforms

    _, solo_val = prepare_transforms(dataset)
    recipe = recipe_of(dataset, {"crop_size": crop, **STATS})
    assert recipe.fixed
    image = _random(size, size)
    assert torch.equal(recipe.eval_transform()(image), solo_val(image))


def test_an_imagenet_folder_at_another_size_follows_the_run():
    recipe = recipe_of("imagenet100", {"crop_size": 64})
    assert not recipe.fixed and recipe.resize == 73
    assert recipe.eval_transform()(_random(300, 200)).shape == (3, 64, 64)


def test_test_folders_of_any_size_reach_the_run_s_crop():
    cifar = recipe_of("cifar10", {"crop_size": 32}).eval_transform(any_size=True)
    assert cifar(_random(48, 40)).shape == (3, 32, 32)
    custom = recipe_of("custom", {"crop_size": 24, **STATS}).eval_transform(any_size=True)
    x = custom(_flat(100))
    assert x.shape == (3, 24, 24)
    assert torch.allclose(x, _expected_flat(STATS)[:, None, None].expand(3, 24, 24), atol=1e-5)


def test_the_linear_probe_trains_at_the_run_s_crop():
    recipe = recipe_of("custom", {"crop_size": 24, **STATS})
    torch.manual_seed(0)
    x = recipe.train_transform()(_flat(60))
    assert x.shape == (3, 24, 24)
    assert torch.allclose(x, _expected_flat(STATS)[:, None, None].expand(3, 24, 24), atol=1e-5)
    assert recipe.train_transform(auto_augment=True)(_random(60, 60)).shape == (3, 24, 24)


def test_a_bad_crop_size_is_one_line():
    with pytest.raises(ValueError, match=r"crop_size=0 is invalid"):
        recipe_of("custom", {"crop_size": 0})


def test_the_linear_config_takes_the_crop_of_the_pretraining_run(tmp_path):
    from solo_iclmsr.runs.linear import linear_entry

    run = tmp_path / "simclr" / "abc"
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({
        "data": {"dataset": "custom"}, "augmentations": [{"crop_size": 32, **STATS}]}))
    checkpoint = run / "simclr-ep=0.ckpt"
    cfg = OmegaConf.create({"pretrained_feature_extractor": str(checkpoint),
                            "data": {"dataset": "custom"}})
    entry = linear_entry(cfg)
    assert entry.crop_size == 32 and list(entry.mean) == pytest.approx(STATS["mean"])
    assert list(entry.std) == pytest.approx(STATS["std"])
    # a crop size the linear config gives wins
    cfg.data.augmentations = {"crop_size": 48}
    assert linear_entry(cfg).crop_size == 48
    # no args.json beside the checkpoint, no crop in the config: solo's own default
    assert linear_entry(OmegaConf.create({"pretrained_feature_extractor": str(tmp_path / "x"),
                                          "data": {"dataset": "custom"}})) is None
