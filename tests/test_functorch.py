"""torch.func.grad, torch.vmap, double backward and gradgradcheck through every sampler."""

import pytest
import torch

import gumbelkit as gk
from gumbelkit.estimators import conditional_gumbel

NEG_INF = float("-inf")
ALL = list(gk.METHODS)
ONE_HOT = [m for m in ALL if gk.is_one_hot(m)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _jt(p, v):
    """J(p)^T v for the softmax Jacobian at probabilities p."""
    pv = p * v
    return pv - p * pv.sum(-1, keepdim=True)


# ------------------------------------------------------------------ torch.func.grad


@pytest.mark.parametrize("method", ALL)
def test_func_grad_equals_autograd_under_the_same_seed(method):
    x = torch.randn(6, 5, generator=_gen(1))
    x[0, 2] = NEG_INF
    w = torch.randn(6, 5, generator=_gen(2))

    def loss(a):
        return (gk.sample(a, method, 0.7, generator=_gen(3)) * w).sum()

    gf = torch.func.grad(loss)(x)
    xr = x.clone().requires_grad_()
    loss(xr).backward()
    assert torch.allclose(gf, xr.grad, rtol=1e-6, atol=1e-7)
    assert gf[0, 2] == 0


def test_func_grad_wrt_tensor_tau_equals_autograd():
    x = torch.randn(4, 5, generator=_gen(4))
    x[1, 0] = NEG_INF
    w = torch.randn(4, 5, generator=_gen(5))

    def loss(t):
        return (gk.gumbel_softmax(x, t, generator=_gen(6)) * w).sum()

    tau = torch.tensor(0.8)
    gf = torch.func.grad(loss)(tau)
    tr = tau.clone().requires_grad_()
    loss(tr).backward()
    assert torch.isfinite(gf) and torch.allclose(gf, tr.grad)


# ------------------------------------------------------------------ torch.vmap


@pytest.mark.parametrize("method", ALL)
def test_vmap_different_randomness_runs_and_one_hot_methods_stay_exactly_one_hot(method):
    x = torch.randn(5, generator=_gen(7)).expand(200, 5)
    y = torch.vmap(lambda row: gk.sample(row, method, 0.7, generator=_gen(8)), randomness="different")(x)
    assert y.shape == (200, 5) and torch.isfinite(y).all()
    assert torch.allclose(y.sum(-1), torch.ones(200))
    if method in ONE_HOT:
        assert torch.all((y == 0) | (y == 1)) and torch.all(y.sum(-1) == 1)
    if method != "softmax":  # independent draws for identical rows: many different samples
        assert len({tuple(r.tolist()) for r in y}) > 2


@pytest.mark.parametrize("method", [m for m in ALL if m != "softmax"])
def test_vmap_same_randomness_repeats_one_sample_and_error_mode_refuses(method):
    x = torch.randn(5, generator=_gen(9)).expand(4, 5)
    y = torch.vmap(lambda row: gk.sample(row, method, 0.7), randomness="same")(x)
    assert torch.all(y == y[0])
    with pytest.raises(RuntimeError, match="randomness"):
        torch.vmap(lambda row: gk.sample(row, method, 0.7))(x)


def test_vmap_gumbel_max_topk_and_conditional_gumbel():
    x = torch.randn(3, 6, generator=_gen(10))
    z = torch.vmap(lambda r: gk.gumbel_max(r), randomness="different")(x)
    assert z.shape == (3,) and z.dtype == torch.int64
    k = torch.vmap(lambda r: gk.gumbel_topk(r, 2), randomness="different")(x)
    assert k.shape == (3, 2) and torch.all(k[:, 0] != k[:, 1])
    c = torch.vmap(lambda r: conditional_gumbel(r, torch.tensor([1]), 4, 0), randomness="different")(x)
    assert c.shape == (3, 4, 6) and torch.all(c.argmax(-1) == 1)


@pytest.mark.parametrize("method", ALL)
def test_per_sample_gradients_with_vmap_of_grad(method):
    x = torch.randn(8, 5, generator=_gen(11))
    w = torch.randn(5, generator=_gen(12))
    grads = torch.vmap(torch.func.grad(lambda r: (gk.sample(r, method, 0.7) * w).sum()), randomness="different")(x)
    assert grads.shape == (8, 5) and torch.isfinite(grads).all()
    assert torch.allclose(grads.sum(-1), torch.zeros(8), atol=1e-5)  # softmax gradients sum to 0


# ------------------------------------------------------------------ double backward


def _second_order(fn, x, w, u):
    """(first gradient, gradient of <first gradient, u>) of <fn(x), w>, both through autograd."""
    x = x.detach().clone().requires_grad_()
    (g1,) = torch.autograd.grad((fn(x) * w).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad((g1 * u).sum(), x)
    return g1.detach(), g2


def _st(hard_index, soft):
    return torch.nn.functional.one_hot(hard_index, soft.shape[-1]).to(soft) - soft.detach() + soft


X64 = torch.randn(5, 6, dtype=torch.float64, generator=_gen(13))
X64[2, 4] = NEG_INF
W64 = torch.randn(5, 6, dtype=torch.float64, generator=_gen(14))
U64 = torch.randn(5, 6, dtype=torch.float64, generator=_gen(15))
NOISE = gk.gumbel_noise(X64.shape, generator=_gen(16), dtype=torch.float64)


def _finite_masked(a):
    # composed references in plain autograd ops cannot take -inf (0 * inf in their backward):
    # a finite logit of -1e4 has weight exactly 0 in float64 as well
    return torch.where(torch.isneginf(a), -1e4, a)


REFERENCES = {
    "softmax": (
        lambda a: gk.sample(a, "softmax", 0.6),
        lambda a: torch.softmax(_finite_masked(a) / 0.6, -1),
    ),
    "gumbel_softmax": (
        lambda a: gk.sample(a, "gumbel_softmax", 0.6, generator=_gen(16)),
        lambda a: torch.softmax((_finite_masked(a) + NOISE) / 0.6, -1),
    ),
    "st_gumbel": (
        lambda a: gk.sample(a, "st_gumbel", 0.6, generator=_gen(16)),
        lambda a: _st((a.detach() + NOISE).argmax(-1), torch.softmax((_finite_masked(a) + NOISE) / 0.6, -1)),
    ),
    "gumbel_softmax_hard": (
        lambda a: gk.gumbel_softmax(a, 0.6, True, generator=_gen(16)),
        lambda a: _st((a.detach() + NOISE).argmax(-1), torch.softmax((_finite_masked(a) + NOISE) / 0.6, -1)),
    ),
    "st": (
        lambda a: gk.sample(a, "st", 0.6, generator=_gen(16)),
        lambda a: _st((a.detach() + NOISE).argmax(-1), torch.softmax(_finite_masked(a) / 0.6, -1)),
    ),
    "reinmax": (
        lambda a: gk.sample(a, "reinmax", 1.5, generator=_gen(16)),
        None,  # checked against its published backward formula below
    ),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_double_backward_matches_float64_autograd_of_the_composed_formula(name):
    ours, ref = REFERENCES[name]
    g1, g2 = _second_order(ours, X64, W64, U64)
    if ref is None:  # ReinMax: g1 = 2 J(pi1)^T w - 1/2 J(pi)^T w, differentiated as a formula
        d = torch.nn.functional.one_hot((X64 + NOISE).argmax(-1), 6).double()

        def ref_grad(a):
            pi = torch.softmax(_finite_masked(a), -1)
            pi1 = 0.5 * (torch.softmax(_finite_masked(a) / 1.5, -1) + d)
            return 2 * _jt(pi1, W64) - 0.5 * _jt(pi, W64)

        xr = X64.clone().requires_grad_()
        r1 = ref_grad(xr)
        (r2,) = torch.autograd.grad((r1 * U64).sum(), xr)
        r1 = r1.detach()
    else:
        r1, r2 = _second_order(ref, X64, W64, U64)
    assert torch.allclose(g1, r1) and torch.allclose(g2, r2)
    assert torch.isfinite(g2).all() and g2[2, 4] == 0


def test_double_backward_of_gumbel_rao_matches_the_composed_formula():
    k, tau = 5, 0.6
    g1, g2 = _second_order(lambda a: gk.sample(a, "gumbel_rao", tau, generator=_gen(17), k=k), X64, W64, U64)
    # the same draws: the forward index, then k conditional draws, from one generator
    gen = _gen(17)
    index = (X64 + gk.gumbel_noise(X64.shape, generator=gen, dtype=torch.float64)).argmax(-1, keepdim=True)
    cond = conditional_gumbel(X64, index, k, 1, generator=gen)
    noise = torch.where(torch.isneginf(cond), 0.0, cond - _finite_masked(X64))

    def ref(a):
        soft = torch.softmax((_finite_masked(a) + noise) / tau, -1).mean(0)
        return _st(index.squeeze(-1), soft)

    r1, r2 = _second_order(ref, X64, W64, U64)
    assert torch.allclose(g1, r1) and torch.allclose(g2, r2)
    assert g1[2, 4] == 0 and g2[2, 4] == 0 and g2.abs().sum() > 0


def test_double_backward_through_a_learnable_tau():
    tau = torch.tensor([[0.5], [0.8], [1.2], [2.0], [0.9]], dtype=torch.float64, requires_grad=True)
    x = X64.clone().requires_grad_()
    y = gk.gumbel_softmax(x, tau, generator=_gen(16))
    gx, gt = torch.autograd.grad((y * W64).sum(), (x, tau), create_graph=True)
    h = torch.autograd.grad((gx * U64).sum() + gt.sum(), (x, tau))
    tr = tau.detach().clone().requires_grad_()
    xr = X64.clone().requires_grad_()
    yr = torch.softmax((_finite_masked(xr) + NOISE) / tr, -1)
    rx, rt = torch.autograd.grad((yr * W64).sum(), (xr, tr), create_graph=True)
    hr = torch.autograd.grad((rx * U64).sum() + rt.sum(), (xr, tr))
    assert torch.allclose(gx, rx) and torch.allclose(gt, rt)
    assert torch.allclose(h[0], hr[0]) and torch.allclose(h[1], hr[1])


# ------------------------------------------------------------------ gradcheck / gradgradcheck


@pytest.mark.parametrize(
    "tau",
    [0.4, torch.tensor([[0.7], [1.3], [0.4]]), torch.tensor([0.5, 0.8, 1.2, 2.0, 0.9])],
    ids=["float_tau", "row_tau", "per_class_tau"],
)
def test_gradcheck_and_gradgradcheck_of_the_soft_samplers(tau):
    x = torch.randn(3, 5, dtype=torch.float64, generator=_gen(18))
    x[1, 3] = NEG_INF  # the masked entry must get exactly zero first and second derivatives
    x.requires_grad_()
    inputs = (x,)
    if isinstance(tau, torch.Tensor):
        inputs = (x, tau.double().requires_grad_())

    def soft(a, t=tau):
        return gk.gumbel_softmax(a, t, generator=_gen(19))

    def tempered(a, t=tau):
        return gk.tempered_softmax(a, t)

    for fn in (soft, tempered):
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


# ------------------------------------------------------------------ memory: the common path saves only y


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: gk.gumbel_softmax(x, 0.5),
        lambda x: gk.gumbel_softmax(x, 0.5, hard=True),
        lambda x: gk.sample(x, "st", 0.5),
        lambda x: gk.tempered_softmax(x, 0.5),
    ],
    ids=["soft", "hard", "st", "tempered"],
)
def test_common_path_saves_a_single_buffer_for_backward(fn):
    x = torch.randn(16, 10, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        fn(x)
    assert saved == [160]
