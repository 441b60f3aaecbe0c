import pytest
import torch
from torch.distributions import Categorical, kl_divergence

import gumbelkit as gk


def test_matches_torch_and_is_nonnegative():
    q = torch.randn(50, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    p = torch.randn(50, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kl = gk.kl_categorical(q, p)
    assert kl.shape == (50,)
    assert torch.allclose(kl, kl_divergence(Categorical(logits=q), Categorical(logits=p)))
    assert torch.all(kl >= 0)


def test_exactly_zero_when_equal_and_broadcast_uniform_prior():
    q = torch.randn(4, 30, 10)
    assert torch.all(gk.kl_categorical(q, q) == 0)
    kl = gk.kl_categorical(q, torch.zeros(10))
    assert kl.shape == (4, 30)
    expected = (torch.softmax(q, -1) * (torch.log_softmax(q, -1) + torch.log(torch.tensor(10.0)))).sum(-1)
    assert torch.allclose(kl, expected, atol=1e-5)


def test_masked_classes():
    q = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    p = torch.tensor([[0.5, 0.2, float("-inf")]])
    kl = gk.kl_categorical(q, torch.zeros(1, 3))
    assert torch.isfinite(kl).all()
    kl.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[0, 1] == 0
    # q puts mass where p is masked: the true KL is +inf
    assert gk.kl_categorical(q.detach(), p).item() == float("inf")


def test_errors():
    with pytest.raises(ValueError, match="broadcast"):
        gk.kl_categorical(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating"):
        gk.kl_categorical(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))


def test_nan_and_all_masked_rows_raise():
    ninf = float("-inf")
    with pytest.raises(ValueError, match="q_logits without NaN"):
        gk.kl_categorical(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="all-masked"):
        gk.kl_categorical(torch.zeros(2, 2), torch.tensor([[0.0, 0.0], [ninf, ninf]]))
    with pytest.raises(IndexError, match="expected dim"):
        gk.kl_categorical(torch.zeros(2, 2), torch.zeros(2, 2), dim=2)
