"""The tests' fixtures; the plain helpers and constants they share are in helpers.py."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_dataset, make_resnet_teacher, make_vit  # noqa: E402


@pytest.fixture
def student():
    return make_vit()


@pytest.fixture
def teacher():
    return make_resnet_teacher()


@pytest.fixture
def dataset():
    return make_dataset()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, which on a busy shared CPU make each step seconds long. A
    module that wants it for all its tests says ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sleeper():
    """A live process of this host that is not this one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()
