"""One shared harness for every registered estimator, then method-specific exact-gradient checks."""

import pytest
import torch

import gumbelkit as gk
from gumbelkit.estimators import conditional_gumbel

NEG_INF = float("-inf")
ALL = list(gk.METHODS)
ONE_HOT = [m for m in ALL if gk.is_one_hot(m)]
# Statistical comparisons use fixed seeds and |z| < Z_CRIT (two-sided level ~1e-4 per coordinate,
# so a correct estimator fails with probability < 1e-3 over random seeds for <= 10 coordinates).
Z_CRIT = 3.9


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registry_lists_the_designed_methods():
    assert set(gk.METHODS) == {
        "softmax",
        "gumbel_softmax",
        "st",
        "st_gumbel",
        "gumbel_rao",
        "reinmax",
        "gapped_st",
        "decoupled_st_gumbel",
    }
    assert set(ONE_HOT) == {"st", "st_gumbel", "gumbel_rao", "reinmax", "gapped_st", "decoupled_st_gumbel"}
    with pytest.raises(ValueError, match="expected method in"):
        gk.sample(torch.zeros(3), "argmax")
    with pytest.raises(ValueError, match="already registered"):
        gk.register("softmax", one_hot=False)(lambda *a, **k: None)


# ------------------------------------------------------------------ the shared harness


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_shape_dtype_finite_and_gradient(method, dtype):
    x = (torch.randn(6, 3, 7, generator=_gen(1)) * 3).to(dtype).requires_grad_()
    y = gk.sample(x, method, 0.5, dim=1, generator=_gen(2))
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all()
    assert torch.allclose(y.float().sum(1), torch.ones(6, 7), atol=1e-2)
    if method in ONE_HOT:
        assert torch.all((y == 0) | (y == 1)) and torch.all(y.sum(1) == 1)
    (y.float() * torch.randn(6, 3, 7, generator=_gen(3))).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ALL)
def test_determinism_under_generator_and_global_rng_untouched(method):
    x = torch.randn(16, 9, generator=_gen(4), requires_grad=True)
    w = torch.randn(16, 9, generator=_gen(5))
    state = torch.get_rng_state()
    outs, grads = [], []
    for _ in range(2):
        y = gk.sample(x, method, 0.7, generator=_gen(6))
        (y * w).sum().backward()
        outs.append(y.detach())
        grads.append(x.grad.clone())
        x.grad = None
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    if method != "softmax":
        other = gk.sample(x, method, 0.7, generator=_gen(7)).detach()
        assert not torch.equal(other, outs[0])


@pytest.mark.parametrize("method", ALL)
def test_masked_classes_never_chosen_zero_gradient(method):
    x = torch.randn(200, 5, generator=_gen(8))
    x[:, 1] = NEG_INF
    x[::2, 3] = NEG_INF
    x.requires_grad_()
    y = gk.sample(x, method, 0.4, generator=_gen(9))
    assert torch.all(y[:, 1] == 0) and torch.all(y[::2, 3] == 0)
    (y * torch.randn(200, 5, generator=_gen(10))).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[:, 1] == 0) and torch.all(x.grad[::2, 3] == 0)


@pytest.mark.parametrize("method", ALL)
def test_bad_input(method):
    with pytest.raises(ValueError, match="NaN"):
        gk.sample(torch.tensor([[0.0, float("nan")]]), method)
    with pytest.raises(ValueError, match="all-masked"):
        gk.sample(torch.tensor([[NEG_INF, NEG_INF]]), method)
    with pytest.raises(ValueError, match="expected tau > 0"):
        gk.sample(torch.zeros(2, 3), method, tau=0.0)
    with pytest.raises(TypeError, match="floating dtype"):
        gk.sample(torch.zeros(2, 3, dtype=torch.int32), method)
    with pytest.raises(IndexError, match="expected dim"):
        gk.sample(torch.zeros(2, 3), method, dim=-3)


@pytest.mark.parametrize("method", ALL)
def test_noncontiguous_any_dim_and_tensor_tau(method):
    x = torch.randn(2, 5, 4, 3, generator=_gen(11)).permute(0, 3, 2, 1)  # (2, 3, 4, 5), non-contiguous
    tau = torch.full((2, 3, 4, 1), 0.8)
    y = gk.sample(x, method, tau, dim=3, generator=_gen(12))
    assert torch.allclose(y.sum(3), torch.ones(2, 3, 4))
    y2 = gk.sample(x.contiguous(), method, tau, dim=3, generator=_gen(12))
    assert torch.allclose(y, y2)


# ------------------------------------------------------------------ exact gradient references


def _grad(method, x, tau, w, seed, **opt):
    x = x.detach().clone().requires_grad_()
    y = gk.sample(x, method, tau, generator=_gen(seed), **opt)
    (y * w).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize(("method", "tau", "seeds"), [("softmax", 0.3, (13, 14, 0)), ("st", 2.0, (20, 21, 22))])
def test_backward_is_the_tempered_softmax_gradient(method, tau, seeds):
    """softmax is the tempered softmax itself; ST's backward is its gradient (whatever the sample)."""
    x = torch.randn(5, 7, dtype=torch.float64, generator=_gen(seeds[0]))
    w = torch.randn(5, 7, dtype=torch.float64, generator=_gen(seeds[1]))
    _, g = _grad(method, x, tau, w, seeds[2])
    xr = x.clone().requires_grad_()
    (torch.softmax(xr / tau, -1) * w).sum().backward()
    assert torch.allclose(g, xr.grad)
    if method == "softmax":
        assert torch.autograd.gradcheck(lambda a: gk.sample(a, "softmax", tau), (x.clone().requires_grad_(),))


def test_gumbel_softmax_gradcheck_float64():
    x = torch.randn(3, 5, dtype=torch.float64, generator=_gen(15), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: gk.sample(a, "gumbel_softmax", 0.6, generator=_gen(16)), (x,))


def test_st_gumbel_backward_is_soft_gradient_with_same_noise():
    x = torch.randn(5, 7, dtype=torch.float64, generator=_gen(17))
    w = torch.randn(5, 7, dtype=torch.float64, generator=_gen(18))
    y, g = _grad("st_gumbel", x, 0.5, w, 19)
    noise = gk.gumbel_noise(x.shape, generator=_gen(19), dtype=torch.float64)
    assert torch.equal(y.argmax(-1), (x + noise).argmax(-1))
    xr = x.clone().requires_grad_()
    (torch.softmax((xr + noise) / 0.5, -1) * w).sum().backward()
    assert torch.allclose(g, xr.grad)


def _jt(p, v):
    pv = p * v
    return pv - p * pv.sum(-1, keepdim=True)


def test_reinmax_matches_published_formula():
    x = torch.randn(6, 5, dtype=torch.float64, generator=_gen(23))
    w = torch.randn(6, 5, dtype=torch.float64, generator=_gen(24))
    y, g = _grad("reinmax", x, 1.5, w, 25)
    pi = torch.softmax(x, -1)
    pi1 = 0.5 * (torch.softmax(x / 1.5, -1) + y)
    assert torch.allclose(g, 2 * _jt(pi1, w) - 0.5 * _jt(pi, w))
    # official implementation additionally centres the gradient; it is already centred
    assert torch.allclose(g.sum(-1), torch.zeros(6, dtype=torch.float64), atol=1e-12)


def _quadratic_setup():
    theta = torch.tensor([0.4, -0.3, 1.0, 0.2], dtype=torch.float64)
    target = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    return theta, target


def _mc_grads(method, theta, target, n, tau, seed, **opt):
    """Per-sample gradients of f(y) = ||y - t||^2 with n independent rows of the same theta."""
    x = theta.expand(n, -1).clone().requires_grad_()
    y = gk.sample(x, method, tau, generator=_gen(seed), **opt)
    ((y - target) ** 2).sum().backward()
    return x.grad


@pytest.mark.parametrize("method", ["st", "reinmax"])
def test_st_and_reinmax_mean_gradient_equals_enumeration(method):
    # The forward sample D ~ Cat(softmax theta) takes K values: the estimator's expectation is an
    # exact K-term sum of its backward formula, which the Monte Carlo mean must match.
    theta, target = _quadratic_setup()
    tau = 1.3
    p = torch.softmax(theta, -1)
    exact = torch.zeros_like(theta)
    for d in range(4):
        D = torch.nn.functional.one_hot(torch.tensor(d), 4).double()
        v = 2 * (D - target)
        if method == "st":
            gd = _jt(torch.softmax(theta / tau, -1), v) / tau  # chain rule through theta / tau
        else:
            gd = 2 * _jt(0.5 * (torch.softmax(theta / tau, -1) + D), v) - 0.5 * _jt(p, v)
        exact += p[d] * gd
    grads = _mc_grads(method, theta, target, 100_000, tau, 26)
    z = (grads.mean(0) - exact) / (grads.std(0) / grads.shape[0] ** 0.5 + 1e-12)
    assert torch.all(z.abs() < Z_CRIT), z


def test_gumbel_rao_same_mean_as_st_gumbel_and_lower_variance():
    theta, target = _quadratic_setup()
    n, tau = 60_000, 0.5
    st = _mc_grads("st_gumbel", theta, target, n, tau, 27)
    gr = _mc_grads("gumbel_rao", theta, target, n, tau, 28, k=10)
    diff = st.mean(0) - gr.mean(0)
    se = (st.var(0) / n + gr.var(0) / n).sqrt()
    assert torch.all((diff / se).abs() < Z_CRIT), diff / se
    assert gr.var(0).sum() < 0.8 * st.var(0).sum()


def test_conditional_gumbel_has_the_conditioned_argmax_and_right_distribution():
    theta = torch.tensor([[0.5, -1.0, 1.5, NEG_INF, 0.0]], dtype=torch.float64)
    index = torch.tensor([[0]])
    c = conditional_gumbel(theta, index, 20_000, dim=1, generator=_gen(29))
    assert c.shape == (20_000, 1, 5)
    assert torch.all(c.argmax(-1) == 0)
    assert torch.all(c[..., 3] == NEG_INF)
    # The maximum of theta + g is Gumbel(log Z) whatever the argmax: check its mean (Euler's gamma).
    log_z = torch.logsumexp(theta[:, [0, 1, 2, 4]], -1)
    top = c[:, 0, 0]
    z = (top.mean() - (log_z + 0.5772156649)) / (top.std() / 20_000**0.5)
    assert abs(float(z)) < Z_CRIT


def test_gumbel_rao_k_option_validated():
    with pytest.raises(ValueError, match="k to be an integer >= 1"):
        gk.sample(torch.zeros(2, 3, requires_grad=True), "gumbel_rao", k=0)
    with pytest.raises(TypeError):
        gk.sample(torch.zeros(2, 3), "st_gumbel", k=3)


def test_no_grad_path_gives_same_forward():
    x = torch.randn(8, 6, generator=_gen(30))
    for method in ONE_HOT:
        a = gk.sample(x, method, 0.5, generator=_gen(31))
        b = gk.sample(x.clone().requires_grad_(), method, 0.5, generator=_gen(31)).detach()
        assert torch.equal(a, b), method
