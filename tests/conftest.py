import os

import torch

# The Triton interpreter must be chosen before any @triton.jit kernel is launched (TOOLCHAIN.md). It is used
# only where a test forces the triton backend; automatic dispatch never picks the interpreter. With a GPU the
# kernels compile for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
