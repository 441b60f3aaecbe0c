"""Fixtures of the lab's tests (the shared helpers are in lab_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_helpers import write_idx


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    """A tiny MNIST-layout folder: 60 training and 20 test 8x8 images with labels."""
    return write_idx(tmp_path / "idx")
