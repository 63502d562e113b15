import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionstart(session):
    # Build (once per torch installation, cached) or load the compiled kernels before any
    # test, so that tests running carousel in a subprocess find them built instead of building
    # them under their own timeouts. A no-op with CAROUSEL_NO_COMPILE=1; falls back when it
    # cannot build.
    from carousel import kernels

    kernels.load()
