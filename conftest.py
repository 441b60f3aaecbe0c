"""pytest configuration shared by the tests and the docstring examples.

``python -m pytest`` collects ``tests/`` and the docstring examples of ``src/gumbelkit``
(``--doctest-modules``). Every example may use ``torch`` and ``gk`` (``import gumbelkit as gk``)
without importing them, and starts from the same global RNG state, so examples are independent
of their order.
"""

import importlib.util

import pytest
import torch

import gumbelkit

# The Triton kernel modules import triton (an optional dependency): without it their docstrings
# are not collected (gumbelkit itself never imports them then).
if importlib.util.find_spec("triton") is None:
    collect_ignore = [
        "src/gumbelkit/kernels/_triton.py",
        "src/gumbelkit/kernels/_triton_noise.py",
        "src/gumbelkit/kernels/_triton_decoding_kernels.py",
    ]


@pytest.fixture(autouse=True)
def _doctest_setup(request):
    if isinstance(request.node, pytest.DoctestItem):
        ns = request.getfixturevalue("doctest_namespace")
        ns["torch"] = torch
        ns["gk"] = gumbelkit
        torch.manual_seed(0)
    yield
