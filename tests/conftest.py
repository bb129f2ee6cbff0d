"""Shared test setup: offline environment, paths to ../shared/data, small helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# No telemetry, update checks or downloads from any library during tests.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("RERUN_ANALYTICS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
REFERENCE = SHARED / "reference"


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; skips the test with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real public data not found at {SHARED_DATA} (the ../shared checkout is absent)")
    return SHARED_DATA


@pytest.fixture
def reference_dir() -> Path:
    """Path of ../shared/reference; skips the test with a reason when it is absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference documents not found at {REFERENCE} (the ../shared checkout is absent)")
    return REFERENCE


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a test module, restored after it: deterministic float sums (exact
    resumes compared bit for bit), and no OpenMP barriers spinning on a 2-core machine that other
    test processes share (they made these small networks many times slower). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` or as an argument of a module fixture."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
