import pytest
import torch
from solo_source import SKIP_REASON, solo_source

import solo_iclmsr.plugin.registry  # noqa: F401  (registers the <name>_iclmsr variants)


def pytest_collection_modifyitems(config, items):
    """The plugin tests build solo's own configs: skip them, with the reason, without its source."""
    if solo_source() is None:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
