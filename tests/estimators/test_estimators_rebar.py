"""REBAR and RELAX (Bernoulli and one-of-K): unbiased against exact gradients by enumeration, lower
variance than REINFORCE once tuned, the learnable-control protocol of the registry, bad input.

Statistical tests: each compares a mean of independent estimates with its exact value at
4.5 standard errors per coordinate (two-sided false-failure rate 6.8e-6 per coordinate, below
1e-4 for every test here), with fixed seeds.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import re
from pathlib import Path

import pytest
import torch

import gumbelkit as gk
from gumbelkit import binary
from gumbelkit.binary._rebar import conditional_logistic
from gumbelkit.errors import GumbelkitError
from gumbelkit.estimators._gumbel_rao import _condition
from gumbelkit.estimators._rebar import conditional_gumbel_vjp

Z_MAX = 4.5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stateful(family: str) -> list[str]:
    """The methods of ``family`` that own a learnable control, from the registry (never by name)."""
    return [s.name for s in gk.estimators.specs(family, kind="score_function") if s.has_control]


BERNOULLI = stateful("bernoulli")
CATEGORICAL = stateful("categorical")


def random_control(family: str, method: str, event_shape, seed: int) -> torch.nn.Module:
    """The method's default control with every parameter drawn at random (a far-from-optimal c)."""
    spec = gk.get_spec(method, family=family)
    control = spec.new_control(event_shape)
    g = gen(seed)
    with torch.no_grad():
        for p in control.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7 + (0.3 if p.dim() == 0 else 0.0))
    return control


def test_the_stateful_methods_are_declared_with_their_control():
    assert BERNOULLI == ["rebar", "relax"] and CATEGORICAL == ["rebar", "relax"]
    for family in ("bernoulli", "categorical"):
        for name in stateful(family):
            spec = gk.get_spec(name, family=family)
            assert spec.kind == "score_function" and spec.one_hot and not spec.uses_tau and spec.reference
            assert {o.name for o in spec.options} >= {"temperature", "noise"}
            control = spec.new_control((3,))
            assert isinstance(control, torch.nn.Module) and any(p.requires_grad for p in control.parameters())
    assert not gk.get_spec("reinforce").has_control
    with pytest.raises(TypeError, match="has no learnable state"):
        gk.get_spec("reinforce").new_control((3,))


# --------------------------------------------------------------------------- the conditional draws


def test_bernoulli_conditional_draw_and_its_derivative_match_autograd_of_the_definition():
    """z~ = phi + logit(u), u uniform on the side of 1 - sigmoid(phi) that b says, differentiated with w fixed."""
    g = gen(0)
    phi = (torch.randn(400, generator=g, dtype=torch.float64) * 4).requires_grad_()
    noise = gk.logistic_noise((400,), generator=g, dtype=torch.float64)
    b = (phi.detach() + noise > 0).double()

    def definition(phi, w):
        t = torch.sigmoid(phi)
        u = torch.where(b == 1, 1 - w * t, w * (1 - t))
        return phi + torch.log(u) - torch.log1p(-u)

    # shared: the w that reproduces z itself
    th = torch.sigmoid(phi.detach())
    w = torch.where(b == 1, torch.sigmoid(-noise) / th, torch.sigmoid(noise) / (1 - th))
    z_def = definition(phi, w)
    (jac_def,) = torch.autograd.grad(z_def.sum(), phi)
    none, jac = conditional_logistic(phi.detach(), noise, b, None)
    assert none is None
    torch.testing.assert_close(z_def.detach(), phi.detach() + noise, rtol=0, atol=1e-9)
    torch.testing.assert_close(jac, jac_def, rtol=1e-9, atol=1e-12)
    # independent: a fresh w
    w_noise = gk.logistic_noise((400,), generator=g, dtype=torch.float64)
    z_def = definition(phi, torch.sigmoid(w_noise))
    (jac_def,) = torch.autograd.grad(z_def.sum(), phi)
    z_t, jac = conditional_logistic(phi.detach(), noise, b, w_noise)
    torch.testing.assert_close(z_t, z_def.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(jac, jac_def, rtol=1e-9, atol=1e-12)
    assert bool(((z_t > 0) == (b == 1)).all()) and bool(((jac >= 0) & (jac <= 1)).all())


def test_categorical_conditional_vjp_matches_autograd_of_the_conditional_gumbel():
    g = gen(1)
    theta = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    theta[0, 3] = float("-inf")
    log_e = torch.log(torch.empty(1, 6, 5, dtype=torch.float64).exponential_(generator=g))
    index = torch.randint(0, 5, (6, 1), generator=g)
    index[0, 0] = 1  # not the masked class

    def draw(th):  # the formula of Gumbel-Rao's conditional draw, differentiable in theta
        log_z = torch.logsumexp(th, -1, keepdim=True)
        b = log_e[0].gather(-1, index) - log_z
        a = (log_e[0] - th).masked_fill(torch.isneginf(th), float("inf"))
        out = -(torch.maximum(a, b) + torch.log1p(torch.exp(-(a - b).abs())))
        return out.scatter(-1, index, -b)

    th = theta.clone().requires_grad_()
    zt = draw(th)
    torch.testing.assert_close(
        zt.detach(), _condition(theta, torch.logsumexp(theta, -1, keepdim=True), index, log_e.clone(), 1)[0]
    )
    v = torch.randn(6, 5, generator=g, dtype=torch.float64).masked_fill(torch.isneginf(theta), 0.0)
    safe = torch.where(torch.isneginf(zt), 0.0, zt)
    (ref,) = torch.autograd.grad((safe * v).sum(), th)
    w = (zt.detach() - zt.detach().gather(-1, index)).exp()
    got = conditional_gumbel_vjp(v, torch.softmax(theta, -1), w, -1)
    torch.testing.assert_close(got, ref.masked_fill(torch.isneginf(theta), 0.0), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- unbiased against enumeration

TARGET = torch.tensor([0.45, 0.9, 0.1, 0.6], dtype=torch.float64)
PHI = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=torch.float64)


def bits_f(b: torch.Tensor) -> torch.Tensor:
    t = TARGET.to(b.dtype)
    return ((b - t) ** 2).sum(-1) + (b[..., 0] * b[..., 1] - 0.5 * b[..., 2]) ** 2 + torch.cos(b.sum(-1) + b[..., 3])


def exact_bits(phi: torch.Tensor, f) -> torch.Tensor:
    phi = phi.detach().clone().requires_grad_()
    p = torch.sigmoid(phi)
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=phi.shape[-1]):
        b = torch.tensor(bits, dtype=torch.float64)
        total = total + torch.prod(torch.where(b == 1, p, 1 - p)) * f(b)
    return torch.autograd.grad(total, phi)[0]


def assert_unbiased(g: torch.Tensor, exact: torch.Tensor) -> None:
    keep = torch.isfinite(exact) & (g.std(0) > 0)
    z = (g.mean(0) - exact)[keep] / (g.std(0)[keep] / math.sqrt(g.shape[0]))
    assert float(z.abs().max()) < Z_MAX, (g.mean(0), exact, z)


@pytest.mark.parametrize(
    ("method", "options", "control"),
    [
        ("rebar", {}, None),
        ("rebar", {"noise": "independent", "eta": 0.7, "temperature": 0.3}, None),
        ("rebar", {}, "random"),
        ("relax", {}, "random"),
        ("relax", {"noise": "independent"}, "random"),
    ],
)
def test_bernoulli_estimates_are_unbiased_against_enumeration(method, options, control):
    rows = 60_000
    ctl = None if control is None else random_control("bernoulli", method, (4,), 7)
    logits = PHI.expand(rows, 4).clone().requires_grad_()
    s = binary.surrogate(logits, bits_f, method, generator=gen(23), control=ctl, **options)
    s.sum().backward()
    assert_unbiased(logits.grad, exact_bits(PHI, bits_f))
    # the value is f at the sample: a Monte-Carlo estimate of E[f]
    p = torch.sigmoid(PHI)
    ef = sum(
        float(torch.prod(torch.where(torch.tensor(bits) == 1, p, 1 - p)) * bits_f(torch.tensor(bits)))
        for bits in itertools.product([0.0, 1.0], repeat=4)
    )
    assert abs(float(s.detach().mean()) - ef) < Z_MAX * float(s.detach().std()) / math.sqrt(rows)


K = 4
THETA = torch.tensor([[0.5, -1.0, 1.2, 0.0], [0.3, float("-inf"), -0.7, 1.5]], dtype=torch.float64)
W = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.5, 2.0]], dtype=torch.float64)


def onehot_f(z: torch.Tensor) -> torch.Tensor:
    """A non-linear loss of two one-of-4 variables per row: (..., 2, 4) -> (...)."""
    a = (z * W.to(z.dtype)).sum(-1)
    return a[..., 0] * a[..., 1] + torch.sin(a.sum(-1)) + (z[..., 0, 2] - 0.3) ** 2


def exact_onehot(theta: torch.Tensor) -> torch.Tensor:
    th = theta.detach().clone().requires_grad_()
    lp = torch.log_softmax(th, -1)
    total = 0.0
    for i, j in itertools.product(range(K), repeat=2):
        if torch.isinf(theta[1, j]):
            continue
        z = torch.zeros(2, K, dtype=torch.float64)
        z[0, i] = z[1, j] = 1.0
        total = total + torch.exp(lp[0, i] + lp[1, j]) * onehot_f(z)
    return torch.autograd.grad(total, th)[0]


@pytest.mark.parametrize(
    ("method", "options", "control"),
    [
        ("rebar", {}, None),
        ("rebar", {"noise": "independent", "eta": 1.3, "temperature": 2.0}, None),
        ("rebar", {}, "random"),
        ("relax", {}, "random"),
        ("relax", {"noise": "independent"}, "random"),
    ],
)
def test_categorical_estimates_are_unbiased_against_enumeration_and_never_sample_masked_classes(
    method, options, control
):
    rows = 60_000
    ctl = None if control is None else random_control("categorical", method, (2, K), 8)
    seen = []

    def f(z):
        seen.append(z.detach())
        return onehot_f(z)

    logits = THETA.expand(rows, 2, K).clone().requires_grad_()
    s = gk.surrogate(logits, f, method, generator=gen(29), control=ctl, **options)
    s.sum().backward()
    exact = exact_onehot(THETA)
    assert_unbiased(logits.grad.flatten(1), exact.flatten())
    assert bool((logits.grad[:, 1, 1] == 0).all())  # the masked class: exactly zero gradient
    b = seen[0]  # f's first call is at the one-hot sample
    assert bool(((b == 0) | (b == 1)).all() & (b.sum(-1) == 1).all()) and float(b[:, 1, 1].max()) == 0.0
    assert all(float(y[:, 1, 1].abs().max()) == 0.0 for y in seen)  # relaxed samples too
    torch.testing.assert_close(s.detach(), onehot_f(b))  # the value is f at the sample


def test_categorical_methods_run_through_the_registry_objective_with_a_control():
    """What an experiment does: everything from the declaration, the control trained by the same backward."""
    logits = torch.randn(8, 3, 5, generator=gen(2), requires_grad=True)
    target = torch.randn(3, 5, generator=gen(3))

    def loss_fn(z):  # (n, 8, 3, 5) -> (n, 8)
        return ((z - target) ** 2).sum((-1, -2))

    for name in CATEGORICAL:
        spec = gk.get_spec(name)
        control = spec.new_control((3, 5))
        objective, value = spec.objective(logits, loss_fn, generator=gen(4), control=control)
        assert objective.shape == value.shape == (8,)
        objective.mean().backward()
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in control.parameters())
        # without a control: the fixed behaviour, still an estimate
        objective, _ = spec.objective(logits, loss_fn, generator=gen(4))
        assert objective.requires_grad
    with pytest.raises(TypeError, match="no learnable state"):
        gk.get_spec("reinforce").objective(logits, loss_fn, control=torch.nn.Linear(1, 1))


# --------------------------------------------------------------------------- variance once tuned

TOY_T = 0.45


def toy_f(b: torch.Tensor) -> torch.Tensor:
    return ((b - TOY_T) ** 2).sum(-1)


def toy_variance(method: str, control, rows: int = 100_000) -> tuple[float, float]:
    """(mean, variance) of single estimates at theta = 0."""
    logits = torch.zeros(rows, 1, requires_grad=True)
    s = binary.surrogate(logits, toy_f, method, generator=gen(41), control=control)
    (g,) = torch.autograd.grad(s.sum(), logits)
    return float(g.mean()), float(g.var())


@pytest.mark.parametrize(("method", "lr", "steps", "ratio"), [("rebar", 0.2, 150, 0.975), ("relax", 0.03, 50, 0.05)])
def test_bernoulli_toy_variance_is_below_reinforce_once_the_control_is_tuned(method, lr, steps, ratio):
    """The RELAX paper's toy, t = 0.45, at theta = 0: single-sample REINFORCE's variance is exactly
    1/2 (f(1)/2)^2 + 1/2 (f(0)/2)^2 - g^2 = 0.0159375."""
    f1, f0 = (1 - TOY_T) ** 2, TOY_T**2
    exact_g = 0.25 * (f1 - f0)
    reinforce_var = 0.5 * (f1 / 2) ** 2 + 0.5 * (f0 / 2) ** 2 - exact_g**2
    control = binary.METHODS[method].new_control((1,))
    opt = torch.optim.Adam(control.parameters(), lr=lr)
    g = gen(40)
    for _ in range(steps):
        opt.zero_grad()
        binary.surrogate(
            torch.zeros(256, 1, requires_grad=True), toy_f, method, generator=g, control=control
        ).mean().backward()
        opt.step()
    mean, var = toy_variance(method, control)
    assert abs(mean - exact_g) < Z_MAX * math.sqrt(var / 100_000)
    assert var < ratio * reinforce_var, (var, reinforce_var)


# --------------------------------------------------------------------------- the learnable-control protocol


def test_one_backward_gives_the_logits_the_estimate_and_the_control_its_variance_gradient():
    phi = torch.tensor([[0.4, -0.8, 1.5]], dtype=torch.float64).expand(64, 3).contiguous()
    w = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64, requires_grad=True)  # a parameter inside f

    def f(b):
        return ((b * w).sum(-1) - 0.3) ** 2

    control = binary.METHODS["rebar"].new_control((3,), eta=0.8, temperature=0.7)
    logits = phi.clone().requires_grad_()
    binary.surrogate(logits, f, "rebar", generator=gen(5), control=control).sum().backward()
    grad_trained, w_trained = logits.grad.clone(), w.grad.clone()
    eta_grad, log_t_grad = float(control.eta.grad), float(control.log_temperature.grad)
    # the same draw with the control frozen: the same estimate and the same pathwise gradient for f's parameter
    w.grad = None
    for p in control.parameters():
        p.requires_grad_(False)
    logits = phi.clone().requires_grad_()
    binary.surrogate(logits, f, "rebar", generator=gen(5), control=control).sum().backward()
    torch.testing.assert_close(logits.grad, grad_trained)
    torch.testing.assert_close(w.grad, w_trained)
    # the control's gradient is d/d(eta, log lambda) of sum_r ||g_r||^2 (central differences, same noise)

    def squared_norm(eta, log_t):
        c = gk.estimators.RebarControl(eta=eta, temperature=math.exp(log_t)).requires_grad_(False)
        x = phi.clone().requires_grad_()
        (g,) = torch.autograd.grad(binary.surrogate(x, f, "rebar", generator=gen(5), control=c).sum(), x)
        return float(g.square().sum())

    eta, log_t, h = float(control.eta), float(control.log_temperature), 1e-4
    fd_eta = (squared_norm(eta + h, log_t) - squared_norm(eta - h, log_t)) / (2 * h)
    fd_t = (squared_norm(eta, log_t + h) - squared_norm(eta, log_t - h)) / (2 * h)
    assert eta_grad == pytest.approx(fd_eta, rel=2e-3, abs=1e-4)
    assert log_t_grad == pytest.approx(fd_t, rel=2e-3, abs=1e-4)


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
def test_the_control_term_is_exactly_zero_forwards_and_same_generator_gives_same_result(family):
    for name in stateful(family):
        spec = gk.get_spec(name, family=family)
        control = spec.new_control((3,) if family == "bernoulli" else (2, 3))
        shape = (5, 3) if family == "bernoulli" else (5, 2, 3)
        x = torch.randn(shape, generator=gen(6))

        def f(b):
            return (b.flatten(1) * torch.arange(b.flatten(1).shape[1])).sum(-1) ** 2

        run = binary.surrogate if family == "bernoulli" else gk.surrogate
        order = tuple(reversed(range(x.dim())))
        other_layout = x.permute(order).contiguous().permute(order)
        state = torch.random.get_rng_state()
        a = run(x.clone().requires_grad_(), f, name, generator=gen(7), control=control)
        b = run(other_layout.requires_grad_(), f, name, generator=gen(7), control=control)
        assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG untouched
        assert torch.equal(a.detach(), b.detach())
        with torch.no_grad():
            c = run(x, f, name, generator=gen(7), control=control)
        assert torch.equal(a.detach(), c)  # the value is f(b) exactly: the added terms are 0 forwards


def test_the_documented_stateful_plugin_runs_and_learns_its_baseline():
    """The example of "Estimators with learnable state" (docs/plugins.md), run as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    (code,) = re.findall(r"<!-- example: stateful -->\n```python\n(.*?)```", text, re.S)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "plugins.md", "exec"), {})
    assert out.getvalue().split() == ["2.3"]  # the variance-minimising baseline: E[f] = 2 + 1/3
    assert "reinforce_learned_baseline" not in gk.estimators.methods()


def test_registration_of_a_control_is_checked_at_once():
    def build(event_shape, **options):
        return torch.nn.Linear(1, 1)

    with pytest.raises(TypeError, match="callable building an nn.Module"):
        gk.register("x", one_hot=True, control=3)
    with pytest.raises(ValueError, match="'control' of method 'y' is not a parameter"):
        gk.register("y", kind="score_function", one_hot=True, control=build)(lambda logits, loss_fn, *, dim=-1: None)
    with pytest.raises(ValueError, match="event_shape of sizes >= 1"):
        gk.get_spec("relax").new_control((0, 3))


# --------------------------------------------------------------------------- infinite logits, dtypes, bad input


@pytest.mark.parametrize("method", BERNOULLI)
def test_bernoulli_infinite_logits_have_zero_gradient_and_the_control_stays_finite(method):
    control = binary.METHODS[method].new_control((3,))
    logits = torch.tensor([[float("inf"), float("-inf"), 0.3]] * 8, requires_grad=True)
    s = binary.surrogate(logits, lambda b: (b * torch.tensor([1.0, 2.0, 3.0])).sum(-1) ** 2, method, control=control)
    assert bool(torch.isfinite(s).all())
    s.sum().backward()
    assert bool((logits.grad[:, :2] == 0).all()) and bool(torch.isfinite(logits.grad).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in control.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_run_in_their_compute_dtype(dtype):
    for name in CATEGORICAL:
        control = gk.get_spec(name).new_control((4,))
        logits = torch.randn(6, 4, generator=gen(9)).to(dtype).requires_grad_()
        s = gk.surrogate(logits, lambda z: (z * torch.arange(4.0).to(z.dtype)).sum(-1) ** 2, name, control=control)
        assert s.dtype == dtype
        s.sum().backward()
        assert logits.grad.dtype == dtype and bool(torch.isfinite(logits.grad).all())
    for name in BERNOULLI:
        logits = torch.randn(6, 4, generator=gen(10)).to(dtype).requires_grad_()
        binary.surrogate(logits, lambda b: b.sum(-1) ** 2, name).sum().backward()
        assert bool(torch.isfinite(logits.grad).all())


class WrongShape(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, y):
        return self.lin(y)  # one value per bit, not per row


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        (
            {"method": "rebar", "eta": -1.0},
            gk.GumbelkitValueError,
            r"expected eta to be a finite number >= 0 for method 'rebar', got -1.0",
        ),
        (
            {"method": "rebar", "temperature": 0.0},
            gk.GumbelkitValueError,
            r"expected temperature to be a finite number > 0",
        ),
        ({"method": "relax", "temperature": float("inf")}, gk.GumbelkitValueError, "temperature"),
        ({"method": "rebar", "noise": "common"}, gk.GumbelkitValueError, "one of shared, independent"),
        ({"method": "relax", "hidden": 0}, gk.GumbelkitValueError, r"hidden to be an integer >= 1"),
        ({"method": "rebar", "bogus": 1}, gk.GumbelkitTypeError, "unknown option 'bogus'"),
        (
            {"method": "relax", "control": WrongShape()},
            gk.GumbelkitValueError,
            r"of shape \(2, 3\).*\(2\) \(or \(2, 1\)\), got \(2, 3\)",
        ),
        ({"method": "rebar", "control": torch.nn.Linear(3, 1)}, gk.GumbelkitTypeError, "RebarControl"),
        ({"method": "relax", "control": "net"}, gk.GumbelkitTypeError, "nn.Module"),
        ({"method": "arm", "control": torch.nn.Linear(3, 1)}, gk.GumbelkitTypeError, "no learnable state"),
        ({"logits": torch.tensor([[0.0, float("nan"), 1.0]])}, gk.GumbelkitValueError, "NaN"),
        ({"logits": torch.zeros(2, 3, dtype=torch.int64)}, gk.GumbelkitTypeError, "floating"),
        ({"f": lambda b: b}, gk.GumbelkitValueError, "shape"),
    ],
)
def test_bernoulli_bad_input_names_the_function_the_option_and_the_range(kwargs, exc, text):
    args = {"logits": torch.zeros(2, 3, requires_grad=True), "f": lambda b: b.sum(-1) ** 2, "method": "rebar", **kwargs}
    with pytest.raises(exc, match=text) as info:
        binary.surrogate(**args)
    assert str(info.value).startswith("binary.surrogate: ")


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"logits": torch.tensor([[0.0, float("nan"), 1.0]])}, gk.GumbelkitValueError, "NaN"),
        ({"logits": torch.tensor([[0.0, float("inf"), 1.0]])}, gk.GumbelkitValueError, "inf"),
        ({"logits": torch.full((2, 3), float("-inf"))}, gk.GumbelkitValueError, "all-masked"),
        ({"logits": torch.zeros(2, 3, dtype=torch.int32)}, gk.GumbelkitTypeError, "floating"),
        ({"dim": 2}, gk.GumbelkitDimError, "dim"),
        ({"method": "st_gumbel"}, gk.GumbelkitValueError, "expected method to be one of rebar, reinforce, relax"),
        ({"method": "rebar", "eta": float("nan")}, gk.GumbelkitValueError, "eta"),
        ({"method": "relax", "f_term": 1}, gk.GumbelkitTypeError, "f_term to be true or false"),
        ({"method": "relax", "control": WrongShape()}, gk.GumbelkitValueError, r"got \(2, 3\)"),
        ({"method": "reinforce", "control": torch.nn.Linear(3, 1)}, gk.GumbelkitTypeError, "no learnable state"),
        ({"f": lambda z: z}, gk.GumbelkitValueError, "one loss per row"),
        ({"f": 3}, gk.GumbelkitTypeError, "callable"),
    ],
)
def test_one_hot_bad_input_names_the_function_and_the_shapes(kwargs, exc, text):
    args = {"logits": torch.zeros(2, 3, requires_grad=True), "f": lambda z: z[..., 0], "method": "rebar", **kwargs}
    with pytest.raises(exc, match=text):
        gk.surrogate(**args)


def test_relax_with_a_user_network_trains_it_and_accepts_a_trailing_one():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))  # (..., 3) -> (..., 1)
    logits = torch.randn(10, 3, generator=gen(12), requires_grad=True)
    s = binary.surrogate(logits, lambda b: (b - 0.3).square().sum(-1), "relax", control=net, temperature=0.4)
    s.sum().backward()
    assert all(p.grad is not None for p in net.parameters()) and logits.grad.shape == (10, 3)


def _objectives():
    """(family, method, call(logits, generator, control)) of every stateful method, from the registry."""
    w = torch.arange(1.0, 7.0)
    out = []
    for m in BERNOULLI:
        out.append(
            (
                "bernoulli",
                m,
                lambda x, g, c, m=m: binary.surrogate(x, lambda b: (b * w).sum(-1), m, generator=g, control=c),
            )
        )
    for m in CATEGORICAL:
        fn = gk.get_spec(m).fn
        out.append(
            ("categorical", m, lambda x, g, c, fn=fn: fn(x, lambda z: (z * w).sum(-1), generator=g, control=c)[0])
        )
    return out


@pytest.mark.parametrize(("family", "method", "call"), _objectives(), ids=lambda v: v if isinstance(v, str) else "")
def test_fixed_controls_work_under_torch_func_and_trained_ones_are_refused_by_name(family, method, call):
    x = torch.randn(3, 6, generator=gen(4))
    # torch.func.grad gives the eager backward's estimate (same generator state)
    g = torch.func.grad(lambda a: call(a, gen(5), None).sum())(x)
    xl = x.clone().requires_grad_()
    call(xl, gen(5), None).sum().backward()
    torch.testing.assert_close(g, xl.grad)
    # a trained control needs torch.autograd.grad of its parameters: refused, naming the function and vmap
    control = gk.get_spec(method, family=family).new_control((6,))
    with pytest.raises(GumbelkitError, match=r"^(binary\.surrogate|\w+_objective): .*vmap"):
        torch.vmap(lambda a: call(a, None, control), randomness="different")(x)
    control.requires_grad_(False)  # frozen: a fixed control, batched like the rest
    y = torch.vmap(lambda a: call(a.unsqueeze(0), None, control), randomness="different")(x[:1].expand(8, 6))
    assert y.shape == (8, 1) and torch.isfinite(y).all()


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
def test_a_sample_at_infinite_curvature_never_turns_the_control_into_nan(family):
    # |y - c|^1.5 at y = c exactly: the first derivative is 0, the second infinite, so the one-sample
    # variance gradient is non-finite there (its expectation is finite). Here every sample sits on it.
    def f(y: torch.Tensor) -> torch.Tensor:
        kink = (y - y.detach()).abs().pow(1.5) + (y - 0.45) ** 2
        return kink.sum(-1) if family == "bernoulli" else kink.sum((-1, -2))

    for spec in (s for s in gk.estimators.specs(family) if s.has_control):
        logits = (
            torch.zeros(16, 3, 2, requires_grad=True)
            if family == "categorical"
            else torch.zeros(16, 3, requires_grad=True)
        )
        control = spec.new_control(tuple(logits.shape[1:]))
        run = gk.binary.surrogate if family == "bernoulli" else gk.surrogate
        run(logits, f, spec.name, generator=torch.Generator().manual_seed(0), control=control).sum().backward()
        assert bool(torch.isfinite(logits.grad).all()), spec.name
        assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in control.parameters()), spec.name


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
def test_the_declared_loss_evaluations_are_the_calls_of_f(family):
    """What the registry says one estimate costs is what it costs, for every option that changes it."""
    for spec in (s for s in gk.estimators.specs(family) if s.has_control):
        for options in ({}, {"noise": "independent"}, {"f_term": False}):
            if any(k not in [o.name for o in spec.options] for k in options):
                continue  # (REBAR has no f_term)
            calls = []

            def f(b, calls=calls):
                calls.append(1)
                return (b**2).sum(-1) if family == "bernoulli" else (b**2).sum((-1, -2))

            x = torch.zeros((4, 3) if family == "bernoulli" else (4, 3, 2), requires_grad=True)
            run = gk.binary.surrogate if family == "bernoulli" else gk.surrogate
            run(x, f, spec.name, generator=gen(0), **options).sum().backward()
            assert len(calls) == spec.loss_evaluations(options), (spec.name, options)
