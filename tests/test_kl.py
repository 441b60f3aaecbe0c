import math

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


NINF = float("-inf")


@pytest.mark.parametrize(
    "q_row,p_row",
    [
        ([0.0, NINF, 1.0], [0.3, NINF, 0.5]),  # masked in both: finite KL
        ([0.0, NINF, 1.0, 2.0], [0.3, 1.0, 0.5, NINF]),  # masked in p where q > 0: KL = inf
        ([0.0, NINF, 1.0], [NINF, NINF, 0.5]),  # masked in both, and p masked where q > 0
        ([0.0, 0.0, 0.0], [0.0, NINF, NINF]),  # p masked where q > 0, twice
        ([NINF, 2.0, 1.0], [NINF, NINF, 0.5]),  # masked in p where q = 0, and where q > 0
    ],
)
def test_masked_classes_give_finite_gradients_to_both_logits(q_row, p_row):
    for dtype in (torch.float32, torch.float64):
        q = torch.tensor([q_row], dtype=dtype, requires_grad=True)
        p = torch.tensor([p_row], dtype=dtype, requires_grad=True)
        kl = gk.kl_categorical(q, p)
        kl.sum().backward()
        assert torch.isfinite(q.grad).all() and torch.isfinite(p.grad).all()
        q_masked = torch.isneginf(q.detach())
        p_masked = torch.isneginf(p.detach())
        assert torch.all(q.grad[q_masked] == 0) and torch.all(p.grad[p_masked] == 0)
        # the value stays exact: +inf exactly when q puts mass where p has none
        inf_expected = bool((p_masked & ~q_masked).any())
        assert (kl.item() == float("inf")) == inf_expected
        if not inf_expected:
            keep = ~(q_masked | p_masked)[0]
            ref = kl_divergence(
                Categorical(logits=q.detach()[:, keep].double()), Categorical(logits=p.detach()[:, keep].double())
            )
            assert torch.allclose(kl.double(), ref, atol=1e-6)


def test_finite_rows_keep_their_exact_gradients_next_to_masked_rows():
    # masking must not change anything for the other rows (values and gradients bit-identical)
    q = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    p = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    p_masked = p.clone()
    p_masked[1, 2] = NINF
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    kl1, kl2 = gk.kl_categorical(q1, p), gk.kl_categorical(q2, p_masked)
    kl1[[0, 2]].sum().backward()
    kl2[[0, 2]].sum().backward()
    assert torch.equal(kl1[[0, 2]], kl2[[0, 2]]) and torch.equal(q1.grad, q2.grad)
    assert kl2[1] == float("inf")


@pytest.mark.parametrize(
    ("q_shape", "p_shape", "dim"), [((6, 5), (5,), -1), ((3, 5, 4, 2), (5, 1, 1), 1), ((4, 5), (1, 1), 1)]
)
def test_a_broadcast_prior_equals_its_materialised_copy_in_value_and_gradient(q_shape, p_shape, dim):
    # p is normalised on its own shape and broadcast in the arithmetic: nothing may change against
    # a p materialised at q's shape (also a p of size 1 along dim, which is K equal logits)
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(q_shape, dtype=torch.float64, generator=gen)
    p = torch.randn(p_shape, dtype=torch.float64, generator=gen)
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    p1, p2 = p.clone().requires_grad_(), p.expand(q_shape).clone().requires_grad_()
    w = torch.randn(torch.Size(s for i, s in enumerate(q_shape) if i != dim % len(q_shape)), dtype=torch.float64)
    kl1, kl2 = gk.kl_categorical(q1, p1, dim), gk.kl_categorical(q2, p2, dim)
    assert torch.allclose(kl1, kl2, rtol=1e-12, atol=1e-14)
    (kl1 * w).sum().backward()
    (kl2 * w).sum().backward()
    assert torch.allclose(q1.grad, q2.grad, rtol=1e-12, atol=1e-14)
    assert torch.allclose(p1.grad, p2.grad.sum_to_size(p_shape), rtol=1e-10, atol=1e-12)
    aligned = (1,) * (len(q_shape) - len(p_shape)) + p_shape
    if aligned[dim] == 1:  # K equal prior logits: the uniform prior
        logq = torch.log_softmax(q, dim)
        expected = (logq.exp() * (logq + math.log(q_shape[dim]))).sum(dim)
        assert torch.allclose(kl1, expected, rtol=1e-12, atol=1e-14)


def test_the_masked_path_and_the_plain_path_agree_bit_for_bit_on_finite_rows():
    q = torch.randn(6, 7, generator=torch.Generator().manual_seed(5))
    p = torch.randn(7, generator=torch.Generator().manual_seed(6))
    plain = gk.kl_categorical(q, p)  # no -inf anywhere: the plain formula
    masked_q = q.clone()
    masked_q[0, 3] = NINF  # one masked class sends the call through the general path
    general = gk.kl_categorical(masked_q, p)
    assert torch.equal(plain[1:], general[1:]) and torch.isfinite(general[0])
