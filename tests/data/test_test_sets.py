"""Test folders (``--test NAME=PATH``) and ImageNet-9's variants (``--test-suite in9 ROOT``):
parsed, checked against the training set's classes (a mismatch or an unreadable image is one
line), labelled by the training set's class names."""

from pathlib import Path

import pytest
import torch
from in9_tree import CLASSES, write_classes, write_in9

from solo_iclmsr.config import compose
from solo_iclmsr.data.eval_transforms import recipe_of
from solo_iclmsr.data.test_sets import (IN9_VARIANTS, LabelledFolder, check_test_sets,
                                        collect_tests, evaluation_sets_with_tests,
                                        training_classes)

REPO = Path(__file__).resolve().parents[2]
BUILTIN = str(REPO / "configs" / "pretrain" / "builtin")


def test_in9_variants_present_under_the_root_become_test_sets(tmp_path):
    root = write_in9(tmp_path / "in9", variants=("mixed_rand", "original", "only_fg"),
                     train_per_class=1, test_per_class=1)
    (root / "not_a_variant" / "val").mkdir(parents=True)
    a = write_classes(tmp_path / "a", per_class=1)
    tests = collect_tests([f"mine={a}"], [("in9", str(root))])
    # the paper's order, only the variants present, the user's folder first
    assert list(tests) == ["mine", "original", "only_fg", "mixed_rand"]
    assert tests["mixed_rand"] == str((root / "mixed_rand" / "val").resolve())
    assert all(Path(p).is_absolute() for p in tests.values())
    assert set(IN9_VARIANTS) >= set(tests) - {"mine"}


@pytest.mark.parametrize("tests,suites,message", [
    (["novalue"], [], "expected NAME=PATH"),
    (["a/b=x"], [], "a test set's name is letters"),
    (["val={a}"], [], "one of the runs' own test versions"),
    (["x={a}", "x={a}"], [], "that name is given twice"),
    (["x={missing}"], [], "not a folder"),
    ([], [("in9", "{a}")], "no ImageNet-9 variant there"),
    ([], [("in10", "{a}")], "--test-suite 'in10' is unknown"),
])
def test_bad_test_arguments_are_one_line(tmp_path, tests, suites, message):
    a = write_classes(tmp_path / "a", per_class=1)
    fill = {"a": a, "missing": tmp_path / "missing"}
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        collect_tests([t.format(**fill) for t in tests],
                      [(s, r.format(**fill)) for s, r in suites])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_test_folder_must_name_the_training_classes(tmp_path):
    good = write_classes(tmp_path / "good", classes=CLASSES[:2], per_class=1)
    check_test_sets(CLASSES, {"good": str(good)})  # a folder may lack classes
    bad = write_classes(tmp_path / "bad", classes=("00_dog", "09_cat"), per_class=1)
    with pytest.raises(ValueError) as error:
        check_test_sets(CLASSES, {"bad": str(bad)}, "the training set data.train_path='t'")
    text = str(error.value)
    assert "--test bad=" in text and "'09_cat'" in text and "data.train_path='t'" in text
    assert "\n" not in text and "'00_dog'" not in text.split("are not")[0]


def test_an_unreadable_image_is_named(tmp_path):
    folder = write_classes(tmp_path / "t", per_class=1)
    broken = folder / CLASSES[1] / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(OSError) as error:
        check_test_sets(CLASSES, {"t": str(folder)})
    assert str(broken) in str(error.value) and "--test t=" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_test_folder_is_labelled_by_the_training_class_names(tmp_path):
    folder = write_classes(tmp_path / "t", classes=(CLASSES[3], CLASSES[1]), per_class=2,
                           size=20)
    dataset = LabelledFolder(folder, CLASSES, recipe_of("custom", {"crop_size": 16})
                         .eval_transform(any_size=True))
    assert len(dataset) == 4 and sorted(dataset.targets) == [1, 1, 3, 3]
    x, label = dataset[0]
    assert x.shape == (3, 16, 16) and label == 1


def test_the_evaluation_sets_of_a_custom_run_gain_the_test_folders(tmp_path):
    root = write_in9(tmp_path / "in9", variants=("mixed_same", "mixed_rand"),
                     train_per_class=2, test_per_class=1, size=20)
    cfg = compose(BUILTIN, "simclr", [
        "data.dataset=custom", f"data.train_path='{root / 'in9l' / 'train'}'",
        "++data.val_path=null", "augmentations.0.crop_size=16"])
    assert training_classes(cfg) == list(CLASSES)
    tests = collect_tests([], [("in9", str(root))])
    train, sets = evaluation_sets_with_tests(cfg, tests=tests)
    assert list(sets) == ["mixed_same", "mixed_rand"]  # no val_path: no val
    assert len(train) == 2 * len(CLASSES) and len(sets["mixed_rand"]) == len(CLASSES)
    x, label = sets["mixed_same"][len(CLASSES) - 1]
    assert x.shape == (3, 16, 16) and label == len(CLASSES) - 1
    assert isinstance(x, torch.Tensor)


def test_the_built_in_set_has_no_class_folders_to_match():
    cfg = compose(BUILTIN, "simclr", [])
    with pytest.raises(ValueError, match="the built-in dataset has no class folders"):
        training_classes(cfg)
