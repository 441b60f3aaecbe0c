"""gumbelkit.structured: checks for several category dims, exact k-hot / permutation straight-through."""

import pytest
import torch

import gumbelkit as gk
from gumbelkit.errors import GumbelkitDimError, GumbelkitTypeError, GumbelkitValueError
from gumbelkit.structured import (
    check_iterations,
    check_square,
    check_structured,
    check_subset_size,
    khot,
    khot_straight_through,
    permutation_matrix,
    permutation_straight_through,
    topk_indices,
)

NAN, INF = float("nan"), float("inf")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- checks


def test_check_structured_normalises_dims_in_order():
    x = torch.zeros(2, 3, 4)
    assert check_structured(x) == (1, 2)
    assert check_structured(x, (-1, 0)) == (2, 0)
    assert check_structured(x, -1) == (2,)
    assert check_structured(x, [1]) == (1,)


def test_check_structured_rejects_bad_dims_and_values():
    x = torch.zeros(3, 3)
    with pytest.raises(GumbelkitDimError, match=r"^f: expected distinct dims, got \(1, -1\)"):
        check_structured(x, (1, -1), fn="f")
    with pytest.raises(GumbelkitDimError, match=r"dim in \[-2, 1\] for logits of shape \(3, 3\), got 2"):
        check_structured(x, (0, 2))
    with pytest.raises(GumbelkitValueError, match="at least one dim"):
        check_structured(x, ())
    with pytest.raises(GumbelkitTypeError, match="dims to be an int or a sequence"):
        check_structured(x, 1.5)
    with pytest.raises(GumbelkitTypeError, match="floating dtype"):
        check_structured(x.long())
    with pytest.raises(GumbelkitValueError, match="at least one category"):
        check_structured(torch.zeros(3, 0))
    with pytest.raises(GumbelkitValueError, match="NaN"):
        check_structured(torch.tensor([[0.0, NAN], [0.0, 0.0]]))
    with pytest.raises(GumbelkitValueError, match=r"\+inf"):
        check_structured(torch.tensor([[0.0, INF], [0.0, 0.0]]))
    # a fully masked row and a fully masked column are both refused; values=False skips the data
    row = torch.zeros(3, 3)
    row[1] = -INF
    col = torch.zeros(3, 3)
    col[:, 2] = -INF
    for bad in (row, col):
        with pytest.raises(GumbelkitValueError, match="all-masked"):
            check_structured(bad, (-2, -1), fn="sinkhorn")
        assert check_structured(bad, (-2, -1), values=False) == (0, 1)
    # masking single entries is fine
    one = torch.zeros(3, 3)
    one[0, 0] = -INF
    assert check_structured(one) == (0, 1)


def test_check_square():
    assert check_square(torch.zeros(2, 4, 4)) == (1, 2)
    assert check_square(torch.zeros(4, 2, 4), dims=(0, 2)) == (0, 2)
    with pytest.raises(GumbelkitValueError, match=r"^p: expected a square matrix along dims \(0, 1\), got sizes 4 x 3"):
        check_square(torch.zeros(4, 3), fn="p")
    with pytest.raises(GumbelkitValueError, match="exactly two dims"):
        check_square(torch.zeros(4, 4, 4), dims=(0, 1, 2))


def test_check_subset_size():
    x = torch.zeros(2, 5)
    assert check_subset_size(5, x) == 5 and check_subset_size(1, x, 1) == 1
    for bad in (0, 6, 2.0, True, "2"):
        with pytest.raises(GumbelkitValueError, match=r"expected k to be an integer in \[1, 5\]"):
            check_subset_size(bad, x)
    x[1, :3] = -INF
    with pytest.raises(
        GumbelkitValueError, match=r"^t: expected k <= 2 \(the fewest unmasked entries.*shape \(2, 5\)\), got 3"
    ):
        check_subset_size(3, x, fn="t")
    assert check_subset_size(3, x, values=False) == 3
    assert check_subset_size(2, torch.zeros(0, 5)) == 2  # no rows to count


def test_check_iterations():
    assert check_iterations(1) == 1 and check_iterations(7, max=7) == 7
    for bad in (0, -1, 1.0, None, True):
        with pytest.raises(GumbelkitValueError, match="n_iters to be an integer"):
            check_iterations(bad)
    with pytest.raises(GumbelkitValueError, match=r"^s: expected iters to be an integer in \[1, 5\], got 6"):
        check_iterations(6, fn="s", name="iters", max=5)


# --------------------------------------------------------------------------- index / mask builders


def test_topk_indices_matches_torch_topk_and_respects_masks():
    x = torch.randn(5, 7, generator=_gen(1))
    assert torch.equal(topk_indices(x, 3), x.topk(3, -1).indices)
    assert torch.equal(topk_indices(x, 2, dim=0), x.topk(2, 0).indices)
    x[:, 0] = -INF
    idx = topk_indices(x, 6)
    assert not (idx == 0).any()
    with pytest.raises(GumbelkitValueError, match="k <= 6"):
        topk_indices(x, 7)
    # no gradient flows through indices
    assert not topk_indices(x.requires_grad_(), 2).requires_grad


def test_khot_is_exact_and_matches_gumbel_topk():
    logits = torch.randn(6, 9, generator=_gen(2))
    idx = gk.gumbel_topk(logits, 4, generator=_gen(3))
    z = khot(idx, logits)
    assert z.dtype == logits.dtype and z.shape == logits.shape
    assert torch.equal(z.sum(-1), torch.full((6,), 4.0))
    assert torch.equal(z.gather(-1, idx), torch.ones(6, 4))
    # dim other than the last, half precision
    zt = khot(idx.t(), logits.t().half(), dim=0)
    assert zt.dtype == torch.float16 and torch.equal(zt.float(), z.t())
    # int32 indices are accepted
    assert torch.equal(khot(idx.int(), logits), z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_khot_straight_through_forward_exact_and_gradient_is_the_softs(dtype):
    x = torch.randn(5, 8, generator=_gen(4), dtype=dtype, requires_grad=True)
    k = 3
    soft = torch.softmax(x / 0.5, -1) * k
    idx = gk.gumbel_topk(x, k, generator=_gen(5))
    y = khot_straight_through(soft, idx, -1)
    assert y.dtype == dtype and torch.equal(y.detach(), khot(idx, x))
    w = torch.randn(5, 8, generator=_gen(6), dtype=dtype)
    (g,) = torch.autograd.grad((y * w).sum(), x, retain_graph=True)
    (g_ref,) = torch.autograd.grad((soft * w).sum(), x)
    assert torch.equal(g, g_ref)
    # the gradient reaching soft is the upstream gradient itself
    s = soft.detach().requires_grad_()
    (khot_straight_through(s, idx) * w).sum().backward()
    assert torch.equal(s.grad, w)


def _grads_through(x, w, f, power):
    """The gradient of sum(f(softmax(x)) * w) and the gradient of sum(g ** power) (a double backward)."""
    (g,) = torch.autograd.grad((f(torch.softmax(x, -1)) * w).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad((g**power).sum(), x)
    return g, gg


def test_khot_straight_through_double_backward():
    x = torch.randn(4, 6, generator=_gen(7), dtype=torch.float64, requires_grad=True)
    idx = x.detach().topk(2, -1).indices
    w = torch.randn(4, 6, generator=_gen(8), dtype=torch.float64)

    g, gg = _grads_through(x, w, lambda s: khot_straight_through(s, idx), power=2)
    g_ref, gg_ref = _grads_through(x, w, lambda s: s, power=2)
    assert torch.allclose(g, g_ref, rtol=0, atol=0) and torch.allclose(gg, gg_ref, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradgradcheck(
        lambda s: khot_straight_through(s, idx), (torch.softmax(x, -1).detach().requires_grad_(),)
    )


def test_khot_straight_through_under_vmap_and_func_grad():
    x = torch.randn(3, 4, 6, generator=_gen(9))
    idx = x.topk(2, -1).indices
    direct = khot_straight_through(x, idx)
    assert torch.equal(torch.vmap(khot_straight_through)(x, idx), direct)
    w = torch.randn(4, 6, generator=_gen(10))
    g = torch.vmap(torch.func.grad(lambda s, i: (khot_straight_through(torch.softmax(s, -1), i) * w).sum()))(x, idx)
    g_ref = torch.vmap(torch.func.grad(lambda s: (torch.softmax(s, -1) * w).sum()))(x)
    assert torch.equal(g, g_ref)


def test_khot_index_errors():
    soft = torch.zeros(2, 4)
    with pytest.raises(GumbelkitValueError, match=r"^khot_straight_through: expected distinct indices along dim=1"):
        khot_straight_through(soft, torch.tensor([[0, 1], [2, 2]]))
    with pytest.raises(GumbelkitValueError, match=r"expected index entries in \[0, 3\], got values in \[-1, 1\]"):
        khot_straight_through(soft, torch.tensor([[0, 1], [-1, 1]]))
    with pytest.raises(
        GumbelkitValueError, match=r"expected index of soft's shape \(2, 4\) with 1 <= k <= 4 along dim=1"
    ):
        khot_straight_through(soft, torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(GumbelkitValueError, match="got index of shape"):
        khot_straight_through(soft, torch.zeros(2, dtype=torch.long))
    with pytest.raises(GumbelkitTypeError, match="integer dtype"):
        khot_straight_through(soft, torch.zeros(2, 1, dtype=torch.bool))
    with pytest.raises(GumbelkitTypeError, match="to be a torch.Tensor"):
        khot_straight_through(soft, [[0], [1]])
    with pytest.raises(GumbelkitDimError):
        khot_straight_through(soft, torch.zeros(2, 1, dtype=torch.long), dim=2)


# --------------------------------------------------------------------------- permutations


def test_permutation_matrix_permutes():
    perm = torch.stack([torch.randperm(5, generator=_gen(i)) for i in range(3)])
    P = permutation_matrix(perm, dtype=torch.float64)
    assert P.shape == (3, 5, 5) and P.dtype == torch.float64
    assert torch.equal(P.sum(-1), torch.ones(3, 5)) and torch.equal(P.sum(-2), torch.ones(3, 5))
    x = torch.randn(3, 5, 2, generator=_gen(11), dtype=torch.float64)
    assert torch.equal(P @ x, torch.stack([x[b, perm[b]] for b in range(3)]))
    with pytest.raises(GumbelkitValueError, match=r"1 row\(s\) that are not"):
        permutation_matrix(torch.tensor([[0, 1, 2], [0, 1, 1]]))
    with pytest.raises(GumbelkitValueError, match="0-d"):
        permutation_matrix(torch.tensor(0))


def _sinkhorn(log_alpha, n_iters=20):
    for _ in range(n_iters):
        log_alpha = log_alpha - log_alpha.logsumexp(-1, keepdim=True)
        log_alpha = log_alpha - log_alpha.logsumexp(-2, keepdim=True)
    return log_alpha.exp()


def test_permutation_straight_through_forward_exact_and_gradient_is_the_softs():
    scores = torch.randn(4, 5, 5, generator=_gen(12), dtype=torch.float64, requires_grad=True)
    soft = _sinkhorn(scores / 0.3)
    perm = soft.detach().argmax(-1)
    perm = torch.stack([p if len(set(p.tolist())) == 5 else torch.arange(5) for p in perm])
    y = permutation_straight_through(soft, perm)
    assert torch.equal(y.detach(), permutation_matrix(perm, dtype=torch.float64))
    w = torch.randn(4, 5, 5, generator=_gen(13), dtype=torch.float64)
    (g,) = torch.autograd.grad((y * w).sum(), scores, retain_graph=True)
    (g_ref,) = torch.autograd.grad((soft * w).sum(), scores)
    assert torch.equal(g, g_ref)


def test_permutation_straight_through_double_backward_and_vmap():
    x = torch.randn(3, 4, 4, generator=_gen(14), dtype=torch.float64, requires_grad=True)
    perm = torch.stack([torch.randperm(4, generator=_gen(20 + i)) for i in range(3)])
    w = torch.randn(3, 4, 4, generator=_gen(15), dtype=torch.float64)

    g, gg = _grads_through(x, w, lambda s: permutation_straight_through(s, perm), power=3)
    g_ref, gg_ref = _grads_through(x, w, lambda s: s, power=3)
    assert torch.equal(g, g_ref) and torch.allclose(gg, gg_ref, rtol=1e-12, atol=1e-14)
    xd = x.detach()
    assert torch.equal(torch.vmap(permutation_straight_through)(xd, perm), permutation_straight_through(xd, perm))
    gv = torch.vmap(torch.func.grad(lambda s, p, v: (permutation_straight_through(torch.softmax(s, -1), p) * v).sum()))(
        xd, perm, w
    )
    gv_ref = torch.vmap(torch.func.grad(lambda s, v: (torch.softmax(s, -1) * v).sum()))(xd, w)
    assert torch.equal(gv, gv_ref)


def test_permutation_straight_through_errors():
    with pytest.raises(GumbelkitValueError, match=r"^permutation_straight_through: expected soft square.*\(3, 4\)"):
        permutation_straight_through(torch.zeros(3, 4), torch.arange(3))
    with pytest.raises(GumbelkitValueError, match=r"expected perm of shape \(2, 3\).*got perm of shape \(3\)"):
        permutation_straight_through(torch.zeros(2, 3, 3), torch.arange(3))
    with pytest.raises(GumbelkitValueError, match=r"permutation of 0\.\.2"):
        permutation_straight_through(torch.zeros(3, 3), torch.tensor([0, 2, 2]))
    with pytest.raises(GumbelkitTypeError, match="integer dtype"):
        permutation_straight_through(torch.zeros(3, 3), torch.arange(3.0))
    with pytest.raises(GumbelkitTypeError, match="floating dtype"):
        permutation_straight_through(torch.zeros(3, 3, dtype=torch.long), torch.arange(3))
    with pytest.raises(GumbelkitValueError, match="at least two dims"):
        permutation_straight_through(torch.zeros(3), torch.arange(3))
