import pytest
import solo_iclmsr.registry  # noqa: F401  (registers the <name>_iclmsr variants)
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
