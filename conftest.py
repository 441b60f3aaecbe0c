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


# The process-wide defaults every test starts from, read before any test module is imported.
# torch.distributions' default validate_args is a global that the first torch.compile of a process
# turns off (Dynamo's one-time patching), so a test that compiles -- or a module-scoped fixture
# that does, before any per-test fixture runs -- would otherwise change what every later test
# sees; gumbelkit's validation switch is process-wide too.
_TORCH_VALIDATE_ARGS = torch.distributions.Distribution._validate_args
_GUMBELKIT_VALIDATION = gumbelkit.get_validation()


@pytest.fixture(autouse=True)
def _process_wide_defaults():
    """Each test (and docstring example) runs with the session's initial torch.distributions
    validation default and gumbelkit validation mode, and leaves them so, whatever it changed."""
    torch.distributions.Distribution.set_default_validate_args(_TORCH_VALIDATE_ARGS)
    gumbelkit.set_validation(_GUMBELKIT_VALIDATION)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(_TORCH_VALIDATE_ARGS)
        gumbelkit.set_validation(_GUMBELKIT_VALIDATION)


@pytest.fixture(autouse=True)
def _doctest_setup(request):
    if isinstance(request.node, pytest.DoctestItem):
        ns = request.getfixturevalue("doctest_namespace")
        ns["torch"] = torch
        ns["gk"] = gumbelkit
        torch.manual_seed(0)
    yield
