"""Test sets a user adds to an evaluation: folders of class sub-folders (``--test NAME=PATH``) and
the ImageNet-9 variants of the Backgrounds Challenge (``--test-suite in9 ROOT``).

A test folder holds one sub-folder per class, named as the training set's classes (the sorted
sub-folders of ``data.train_path``, or torchvision's class names of CIFAR / STL-10); its images
are labelled by those names, so a folder may lack a class's images but not name a class the
training set does not have. Every image is opened before anything is trained; a mismatch or an
unreadable image is one line. Images are evaluated with the run's transform
(``data/eval_transforms.py``), whatever their size.

ImageNet-9 (Xiao et al. 2020, "Noise or Signal: The Role of Image Backgrounds in Object
Recognition"): ``ROOT/<variant>/val/<class>/`` for the variants of ``IN9_VARIANTS``; IN-9L
(``ROOT/in9l/train/<class>/``) is the training set. Its headline number, the BG-Gap, is the
accuracy on ``mixed_same`` (the foreground on a background of its own class) minus that on
``mixed_rand`` (on the background of a random class).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from solo_iclmsr.data.datasets import IMAGE_EXTENSIONS
from solo_iclmsr.data.eval_transforms import run_recipe
from solo_iclmsr.data.loaders import TEST_VERSIONS, check_images_readable, evaluation_sets

__all__ = ["IN9_VARIANTS", "IN9_TRAIN", "SUITES", "BG_GAP", "LabelledFolder", "parse_test",
           "suite_tests", "collect_tests", "folder_classes", "class_names", "training_classes",
           "check_test_sets", "test_folder_sets", "evaluation_sets_with_tests"]

#: The evaluation variants of ImageNet-9, in the paper's order.
IN9_VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same",
                "mixed_rand", "mixed_next")
#: IN-9L, the training images of the challenge, under its root.
IN9_TRAIN = "in9l/train"
#: The suites of ``--test-suite``.
SUITES = ("in9",)
#: The two test sets of the BG-Gap (accuracy on the first minus that on the second).
BG_GAP = ("mixed_same", "mixed_rand")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RESERVED = sorted({name for names in TEST_VERSIONS.values() for name in names})


class LabelledFolder(Dataset):
    """A test folder as solo's evaluation items ``(x, label)``: the label of an image is the
    index of its sub-folder's name among ``classes`` (the training set's)."""

    def __init__(self, root: Path, classes: Sequence[str], transform: Callable) -> None:
        from torchvision.datasets.folder import default_loader, make_dataset

        self.root, self.classes, self.transform = Path(root), list(classes), transform
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples = make_dataset(str(self.root), index, IMAGE_EXTENSIONS, allow_empty=True)
        self.targets = [label for _, label in self.samples]
        self._load = default_loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(self._load(path)), label


def parse_test(text: str, flag: str = "--test") -> Tuple[str, Path]:
    """``NAME=PATH`` -> (name, path).

    Raises:
        ValueError: no ``=``, or a name that is not letters, digits, ``_``, ``.``, ``-``.
    """
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"{flag} {text!r}: expected NAME=PATH (a name for the test set, then "
                         f"its folder of class sub-folders).")
    if not _NAME.match(name):
        raise ValueError(f"{flag} {text!r}: a test set's name is letters, digits, '_', '.' and "
                         f"'-'.")
    return name, Path(os.path.expanduser(path))


def suite_tests(suite: str, root: str) -> Dict[str, Path]:
    """The test sets of a suite under ``root``: for ``in9``, every variant present
    (``root/<variant>/val``), in the paper's order.

    Raises:
        ValueError: an unknown suite.
        FileNotFoundError: no variant under ``root``.
    """
    if suite not in SUITES:
        raise ValueError(f"--test-suite {suite!r} is unknown: expected one of {', '.join(SUITES)}.")
    base = Path(os.path.expanduser(root))
    found = {v: base / v / "val" for v in IN9_VARIANTS if (base / v / "val").is_dir()}
    if not found:
        raise FileNotFoundError(f"--test-suite in9 {root}: no ImageNet-9 variant there; expected "
                                f"{root}/<variant>/val/<class>/ for variants among "
                                f"{', '.join(IN9_VARIANTS)}.")
    return found


def collect_tests(tests: Sequence[str] = (), suites: Sequence[Sequence[str]] = ()
                  ) -> Dict[str, str]:
    """{name: absolute folder} of ``--test NAME=PATH`` and ``--test-suite SUITE ROOT`` values.

    Raises:
        ValueError: a bad value, a name given twice, or the name of a test version every run
            has already (``full``, ``fg``, ``decorrelated``, ``bg``, ``val``).
        FileNotFoundError: a folder that is not there.
    """
    out: Dict[str, str] = {}
    named = [parse_test(t) for t in tests]
    for suite, root in suites:
        named += list(suite_tests(suite, root).items())
    for name, path in named:
        if name in _RESERVED:
            raise ValueError(f"--test {name}: that name is one of the runs' own test versions "
                             f"({', '.join(_RESERVED)}); give the test set another name.")
        if name in out:
            raise ValueError(f"--test {name}: that name is given twice; give each test set a "
                             f"name of its own.")
        if not path.is_dir():
            raise FileNotFoundError(f"--test {name}={path}: not a folder; expected "
                                    f"{path}/<class>/<image>.")
        out[name] = str(path.resolve())
    return out


def folder_classes(root: Path) -> List[str]:
    """The class names of an image folder: its sub-folders, sorted (torchvision's rule)."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def class_names(dataset: Dataset) -> Optional[List[str]]:
    """The class names of an evaluation set (``classes`` of it or of the dataset it wraps)."""
    while dataset is not None:
        classes = getattr(dataset, "classes", None)
        if classes:
            return [str(c) for c in classes]
        dataset = getattr(dataset, "dataset", None)
    return None


def training_classes(cfg: DictConfig) -> List[str]:
    """The class names of a run's training set: the sub-folders of ``data.train_path`` for a
    folder dataset, torchvision's names for CIFAR and STL-10.

    Raises:
        ValueError: a training set without class names (the built-in set, unlabelled or h5
            data).
    """
    data = cfg.data
    if data.dataset == "builtin":
        raise ValueError("--test: the built-in dataset has no class folders to match a test "
                         "folder's; its own test versions (full, fg, decorrelated) are evaluated "
                         "already.")
    if data.dataset in ("cifar10", "cifar100", "stl10"):
        names = class_names(evaluation_sets(cfg, val_required=False)[0])
        if names:
            return names
    elif not OmegaConf.select(cfg, "data.no_labels", default=False) and data.format != "h5":
        root = Path(str(data.train_path))
        if root.is_dir() and folder_classes(root):
            return folder_classes(root)
    raise ValueError(f"--test: the training set ({data.dataset}, data.train_path="
                     f"{str(data.train_path)!r}) has no class sub-folders to match a test "
                     f"folder's; test folders need a labelled image folder (or CIFAR / STL-10).")


def check_test_sets(classes: Sequence[str], tests: Mapping[str, str],
                    where: str = "the training set") -> None:
    """Every test folder names the training set's classes and every image of it opens.

    Raises:
        ValueError: a sub-folder that is not one of ``classes``, or no class sub-folder.
        OSError: an unreadable image (named).
    """
    layout = "a test folder holds <class>/<image> with the training set's class names"
    for name, path in tests.items():
        found = folder_classes(Path(path))
        extra = [c for c in found if c not in classes]
        if not found:
            raise ValueError(f"--test {name}={path}: no class sub-folders; {layout}.")
        if extra:
            shown = ", ".join(repr(c) for c in extra[:3]) + (" ..." if len(extra) > 3 else "")
            listed = ", ".join(list(classes)[:4]) + (" ..." if len(classes) > 4 else "")
            raise ValueError(f"--test {name}={path}: its class folders {shown} are not classes "
                             f"of {where} ({len(classes)}: {listed}); {layout}.")
        if check_images_readable(Path(path), what=f"--test {name}") == 0:
            raise ValueError(f"--test {name}={path}: holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}).")


def test_folder_sets(tests: Mapping[str, str], classes: Sequence[str], transform: Callable
                     ) -> Dict[str, Dataset]:
    """{name: ``LabelledFolder``} of the test folders, labelled by ``classes``."""
    return {name: LabelledFolder(Path(path), classes, transform) for name, path in tests.items()}


def evaluation_sets_with_tests(cfg: DictConfig, entry: Optional[Any] = None,
                               tests: Optional[Mapping[str, str]] = None
                               ) -> Tuple[Dataset, Dict[str, Dataset]]:
    """``loaders.evaluation_sets`` (the training set and the run's own test versions; no
    ``val`` without a ``data.val_path`` when there are test folders) and the test folders
    ``tests`` ({name: folder}), labelled by the training set's class names, with the run's
    evaluation transform (``entry``: as ``evaluation_sets``)."""
    tests = dict(tests or {})
    train, sets = evaluation_sets(cfg, entry, val_required=not tests)
    if tests:
        classes = class_names(train) or training_classes(cfg)
        transform = run_recipe(cfg, entry).eval_transform(any_size=True)
        sets.update(test_folder_sets(tests, classes, transform))
    return train, sets
