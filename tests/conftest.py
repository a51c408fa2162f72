"""Suite-wide settings. Tests import helpers such as `apphelpers` from this folder (it has no __init__.py)."""

import os

import pytest

# Tiny models gain nothing from intra-op threads; on a shared 2-core machine thread sync stalls cost 10x the
# arithmetic, and one thread also makes results independent of the machine's core count.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses tests start
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the Hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    try:
        import torch
    except ImportError:  # the base install (no [train] extra) still runs the app and data tests
        yield
        return
    torch.set_num_threads(1)
    yield
