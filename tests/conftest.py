import pytest
import torch


def gen(seed: int = 0, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.fixture
def make_gen():
    return gen


def assert_rejects_bad_logits(fn) -> None:
    """fn(logits) raises the library's messages for NaN, all-masked rows, +inf and integer dtypes."""
    neg_inf = float("-inf")
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="all-masked"):
        fn(torch.tensor([[0.0, 1.0], [neg_inf, neg_inf]]))
    with pytest.raises(ValueError, match=r"\+inf"):
        fn(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(TypeError, match="floating dtype"):
        fn(torch.tensor([[1, 2]]))


@pytest.fixture
def rejects_bad_logits():
    """The shared bad-logits checks of every sampler (see :func:`assert_rejects_bad_logits`)."""
    return assert_rejects_bad_logits
