import pytest
import torchvision
from fake_data import write_cifar
from solo_source import SKIP_REASON, solo_source


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """CIFAR-10 and CIFAR-100 folders of random images that torchvision accepts without a
    download."""
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    return write_cifar(tmp_path / "datasets")


@pytest.fixture
def solo_scripts():
    source = solo_source()
    if source is None:
        pytest.skip(SKIP_REASON)
    return source / "scripts"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """The built-in dataset's cache and every run folder inside the test's folder."""
    monkeypatch.setenv("SOLO_ICLMSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
