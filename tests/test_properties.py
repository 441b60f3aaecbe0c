"""Property-based tests (hypothesis) over every public sampler and estimator, from one table.

:data:`ROWS` declares each public sampler once -- how to call it, what its input is, what its
forward promises, what -inf / +inf mean for it, whether and how it takes a temperature -- and
every property below runs over every row it applies to:

* masks (-inf) with a tensor temperature: zero weight, exactly zero gradient to the masked
  logits, and the same tau-gradient as with the masked logits replaced by a finite logit of
  weight 0 (so the masked entries give tau exactly nothing); +-inf bits are deterministic;
* logit spreads up to 1e30, temperatures from the subnormal 1e-45 to 1e30, float16 / bfloat16 /
  float32 / float64: the forward's promise holds, nothing is NaN;
* ``torch.vmap(randomness="different")``, double backward (and gradgradcheck where the backward
  is the derivative of the forward), memory layouts (same generator state, same result);
* the error rules: every bad argument the row's declaration implies raises a GumbelkitError of
  the builtin type, whose message starts with the public name and names the argument.

Adding a public sampler is one :class:`Row`; :func:`test_every_public_sampler_has_a_row` fails
until it has one. Shapes are small and ``max_examples`` low so that the file stays fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gumbelkit as gk
from gumbelkit import kernels
from gumbelkit.errors import GumbelkitError

INF = float("inf")
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
METHODS = sorted(gk.METHODS)
#: The categorical fuzz (dims, layouts, empty batches, K = 1).
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: The table properties: many rows, so fewer examples each.
FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    """One public sampler or estimator, as the properties see it.

    ``make(tau, generator, dim)`` returns the call of one input ``x`` (modules and distributions
    are built there, outside any transform); ``tau`` is ignored by rows without a temperature.
    """

    id: str  # unique test id
    name: str  # the public name every error message starts with
    make: Callable
    kind: str = (
        # categorical (..., K) | bits (..., D) | matrix (..., n, n) | scores (..., n) | features (..., 4)
        # | noise (a generator: the input gives only its shape and dtype) | tokens (B, V)
        "categorical"
    )
    arg: str = "logits"  # the input's argument name, as the messages say it
    out: str = "simplex"  # what the forward promises, see _check_forward
    inf: str = "mask"  # mask: -inf masks an entry | bits: +-inf are deterministic bits | refuse | data: features
    tau: str | None = "tensor"  # tensor (a float or a tensor, with gradient) | float | None
    tau_name: str = "tau"
    tau_dtype: str = "compute"  # compute: float32 (float64 for float64 input) | input: the input's (distributions)
    tau_shape: Callable = field(default=lambda shape: shape[:-1] + (1,))
    random: bool = True
    grad: bool = True  # differentiable in the input
    exact_grad: bool = False  # the backward is the derivative of the forward (gradgradcheck applies)
    dim: bool = False  # takes a dim: also fuzzed by the categorical properties at the end
    vmap: bool = True  # False: documented as refused under torch.vmap (checked to raise the library's error)
    bounded_grad: bool = True  # False: derivatives grow with the logits' spread (a log-space output)
    covers: str = ""  # the public name of test_every_public_sampler_has_a_row (default: id)
    # more bad calls than the table's rules imply: () -> [(label, call, builtin type, word)]
    errors: Callable[[], list] = field(default=lambda: [])

    @property
    def key(self) -> str:
        return self.covers or self.id


def _k(x: torch.Tensor, d: int = -1) -> int:
    """The subset size of the k-subset rows: 2 (1 for a single item); strategies keep 2 unmasked."""
    return min(2, x.shape[d]) if isinstance(x, torch.Tensor) and x.dim() else 2


def _tau_schedule(t):
    """A GumbelSoftmax temperature: a float, or a schedule returning the tensor (its gradient reaches it)."""
    return (lambda step: t) if isinstance(t, torch.Tensor) else t


def _bits_loss(b: torch.Tensor) -> torch.Tensor:
    return (b * torch.arange(1.0, b.shape[-1] + 1, dtype=b.dtype)).sum(-1)


def _reinforce_loss(z: torch.Tensor) -> torch.Tensor:
    return (z * torch.arange(1.0, z.shape[-1] + 1, dtype=z.dtype)).reshape(z.shape[0], -1).sum(-1)


def _subset_loss(z: torch.Tensor) -> torch.Tensor:
    """One loss per sample and row: (n, ..., K) k-hot samples -> (n, ...)."""
    return (z * torch.arange(1.0, z.shape[-1] + 1, dtype=z.dtype)).sum(-1)


def _noise_errors(fn: Callable) -> Callable[[], list]:
    """The bad calls of a noise generator ``fn(shape, k, s, *, generator, device, dtype)``."""

    def cases():
        return [
            ("shape not a sequence", lambda: fn(3.5, 2), TypeError, "shape"),
            ("negative size", lambda: fn((2, -1), 2), ValueError, "shape"),
            ("k < 1", lambda: fn((2, 3), 0), ValueError, "k"),
            ("s < 1", lambda: fn((2, 3), 2, 0), ValueError, "s"),
            ("dtype not a dtype", lambda: fn((2, 3), 2, dtype="float32"), TypeError, "dtype"),
        ]

    return cases


def _quantizer(tau, g):
    """A GumbelQuantizer (4 features, 5 codes of 3 dims) with weights from a fixed seed, global RNG untouched.

    Built in ``make`` (never under vmap, where drawing its weights in place is refused); the call
    converts it to a floating input's dtype, as a model in that dtype would be.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        q = gk.nn.GumbelQuantizer(4, 5, 3, tau=tau, generator=g)

    def call(x):
        if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
            q.to(x.dtype)
        return q(x).z_q

    return call


def _soft_and_hard(rid: str, name: str, fn: Callable) -> list[Row]:
    """The two rows of a drop-in ``fn(logits, tau, hard, dim=, generator=)``: relaxed and one-hot."""
    return [
        Row(rid, name, lambda t, g, d: lambda x: fn(x, t, False, dim=d, generator=g), exact_grad=True, dim=True),
        Row(f"{rid}_hard", name, lambda t, g, d: lambda x: fn(x, t, True, dim=d, generator=g), out="one_hot", dim=True),
    ]


def _rows() -> list[Row]:
    rows = []
    for m in METHODS:
        one_hot = gk.is_one_hot(m)
        rows.append(
            Row(
                f"sample:{m}",
                "sample",
                lambda t, g, d, m=m: lambda x: gk.sample(x, m, t, dim=d, generator=g),
                out="one_hot" if one_hot else "simplex",
                random=m != "softmax",
                exact_grad=not one_hot,
                dim=True,
            )
        )
    for m in gk.estimators.registered_methods("score_function"):
        fn = gk.get_spec(m).fn
        rows.append(
            Row(
                f"objective:{m}",
                fn.__name__,
                lambda t, g, d, fn=fn: lambda x: fn(x, _reinforce_loss, dim=d, generator=g)[0],
                out="loss",
                tau=None,
            )
        )
    rows += [
        *_soft_and_hard("gumbel_softmax", "gumbel_softmax", gk.gumbel_softmax),
        # the fused algorithm run op by op (the compiled kernel computes the same function)
        *_soft_and_hard("kernels_reference", "gumbel_softmax_reference", kernels.gumbel_softmax_reference),
        Row(
            "tempered_softmax",
            "tempered_softmax",
            lambda t, g, d: lambda x: gk.tempered_softmax(x, t, dim=d),
            random=False,
            exact_grad=True,
            dim=True,
        ),
        Row(
            "gumbel_max",
            "gumbel_max",
            lambda t, g, d: lambda x: gk.gumbel_max(x, d, generator=g),
            out="index",
            tau=None,
            grad=False,
        ),
        Row(
            "gumbel_topk",
            "gumbel_topk",
            lambda t, g, d: lambda x: gk.gumbel_topk(x, _k(x, d), d, generator=g),
            out="index",
            tau=None,
            grad=False,
        ),
    ]
    for m, spec in sorted(gk.binary.METHODS.items()):
        covers = f"binary.{spec.kind}:{m}"
        if spec.kind == "sample":
            out = "bits" if spec.one_hot else "unit"
            rows.append(
                Row(
                    f"binary.sample:{m}",
                    "binary.sample",
                    lambda t, g, d, m=m: lambda x: gk.binary.sample(x, m, t, generator=g),
                    kind="bits",
                    out=out,
                    inf="bits",
                    exact_grad=m == "binary_concrete",
                    covers=covers,
                )
            )
        else:
            rows.append(
                Row(
                    f"binary.surrogate:{m}",
                    "binary.surrogate",
                    lambda t, g, d, m=m: lambda x: gk.binary.surrogate(x, _bits_loss, m, generator=g),
                    kind="bits",
                    out="loss",
                    inf="bits",
                    tau=None,
                    covers=covers,
                )
            )
    S, P, D = gk.subsets, gk.permutations, gk.distributions
    matrix_tau = {"kind": "matrix", "arg": "log_alpha", "out": "cols", "tau_shape": lambda s: s[:-2] + (1, 1)}
    scores = {"kind": "scores", "arg": "scores", "out": "rows", "inf": "refuse"}
    rows += [
        Row(
            "relaxed_topk",
            "relaxed_topk",
            lambda t, g, d: lambda x: S.relaxed_topk(x, _k(x, d), t, dim=d, generator=g),
            out="k_sum",
            exact_grad=True,
            dim=True,
        ),
        Row(
            "relaxed_topk_hard",
            "relaxed_topk",
            lambda t, g, d: lambda x: S.relaxed_topk(x, _k(x, d), t, True, dim=d, generator=g),
            out="k_hot",
            dim=True,
            covers="relaxed_topk:hard",
        ),
        Row(
            "topk_marginals",
            "topk_marginals",
            lambda t, g, d: lambda x: S.topk_marginals(x, _k(x, d), dim=d),
            out="marginals",
            tau=None,
            random=False,
            exact_grad=True,
            dim=True,
        ),
        Row(
            "simple",
            "simple",
            lambda t, g, d: lambda x: S.simple(x, _k(x, d), dim=d, generator=g),
            out="k_hot",
            tau=None,
            dim=True,
        ),
    ]
    imle, loo = (gk.get_spec(m, family="subset") for m in ("imle", "reinforce_loo"))
    rows += [
        Row(
            "imle",
            "imle",
            lambda t, g, d: lambda x: S.imle(x, _k(x, d), t, d, generator=g),
            out="k_hot" if imle.one_hot else "k_sum",
            tau="float" if imle.uses_tau else None,  # a float temperature: a tensor is refused
            dim=True,
        ),
        Row(
            "subsets.reinforce_loo",
            "subsets.reinforce_loo",
            lambda t, g, d: lambda x: S.reinforce_loo(x, _k(x, d), _subset_loss, dim=d, generator=g)[0],
            out="loss" if loo.kind == "score_function" else "k_hot",
            tau="float" if loo.uses_tau else None,
            covers="reinforce_loo",
        ),
        # not samplers: a log normaliser (deterministic, differentiable) and a noise generator
        Row(
            "log_subset_normalizer",
            "log_subset_normalizer",
            lambda t, g, d: lambda x: S.log_subset_normalizer(x, _k(x)),
            out="log_normalizer",
            tau=None,
            random=False,
            exact_grad=True,
        ),
        Row(
            "sum_of_gamma_noise",
            "sum_of_gamma_noise",
            lambda t, g, d: lambda x: S.sum_of_gamma_noise(x.shape, 2, generator=g, dtype=x.dtype),
            kind="noise",
            arg="dtype",
            out="noise",
            inf="data",
            tau=None,
            grad=False,
            errors=_noise_errors(S.sum_of_gamma_noise),
        ),
    ]
    rows += [
        Row(
            "sinkhorn",
            "sinkhorn",
            lambda t, g, d: lambda x: P.sinkhorn(x),
            tau=None,
            random=False,
            exact_grad=True,
            **{k: v for k, v in matrix_tau.items() if k != "tau_shape"},
        ),
        Row(
            "gumbel_sinkhorn",
            "gumbel_sinkhorn",
            lambda t, g, d: lambda x: P.gumbel_sinkhorn(x, t, generator=g),
            exact_grad=True,
            **matrix_tau,
        ),
        Row(
            "gumbel_sinkhorn_hard",
            "gumbel_sinkhorn",
            lambda t, g, d: lambda x: P.gumbel_sinkhorn(x, t, hard=True, generator=g),
            **{**matrix_tau, "out": "permutation"},
            covers="gumbel_sinkhorn:hard",
            vmap=False,
        ),
        Row(
            "neural_sort",
            "neural_sort",
            lambda t, g, d: lambda x: P.neural_sort(x, t),
            random=False,
            exact_grad=True,
            **scores,
        ),
        Row(
            "neural_sort_stochastic",
            "neural_sort",
            lambda t, g, d: lambda x: P.neural_sort(x, t, stochastic=True, generator=g),
            exact_grad=True,
            **scores,
            covers="neural_sort:stochastic",
        ),
        Row(
            "neural_sort_hard",
            "neural_sort",
            lambda t, g, d: lambda x: P.neural_sort(x, t, hard=True, stochastic=True, generator=g),
            **{**scores, "out": "permutation"},
            covers="neural_sort:hard",
        ),
        Row(
            "soft_sort",
            "soft_sort",
            lambda t, g, d: lambda x: P.soft_sort(x, t),
            random=False,
            exact_grad=True,
            **scores,
        ),
    ]

    def dist(cls, out="simplex", exact_grad=True, **kw) -> Row:
        # a distribution's parameters share one dtype: its temperature is given in the logits' dtype
        make = (
            (lambda t, g, d: lambda x: cls(x, t).rsample(generator=g))
            if cls is D.HardConcrete
            else (lambda t, g, d: lambda x: cls(t, logits=x).rsample(generator=g))
        )
        kw.setdefault("tau_shape", lambda s: s[:-1])
        return Row(
            cls.__name__,
            cls.__name__,
            make,
            out=out,
            exact_grad=exact_grad,
            tau_name="temperature",
            tau_dtype="input",
            **kw,
        )

    bits = {"kind": "bits", "out": "unit", "inf": "refuse", "tau_shape": lambda s: s[:-1] + (1,)}
    rows += [
        dist(D.Concrete),
        dist(D.ExpConcrete, out="log_simplex", bounded_grad=False),
        dist(D.StraightThroughConcrete, out="one_hot", exact_grad=False),
        dist(D.BinaryConcrete, **bits),
        dist(D.HardConcrete, exact_grad=False, **bits),
    ]
    rows += [
        Row(
            "GumbelSoftmax",
            "GumbelSoftmax",
            lambda t, g, d: gk.nn.GumbelSoftmax("st_gumbel", _tau_schedule(t), d, generator=g),
            out="one_hot",
            dim=True,
        ),
        Row(
            "L0Gate",
            "L0Gate",
            lambda t, g, d: lambda x: gk.nn.L0Gate(4, temperature=t)(x, generator=g),
            kind="features",
            arg="x",
            out="gate",
            inf="data",
            tau="float",
            tau_name="temperature",
        ),
        Row(
            "sample_tokens",
            "sample_tokens",
            lambda t, g, d: lambda x: gk.decoding.sample_tokens(x, temperature=t, generator=g),
            kind="tokens",
            out="index",
            tau_name="temperature",
            tau_shape=lambda s: s[:-1],
            grad=False,
            vmap=False,  # one call samples every row of its (B, V) logits: documented as refused
        ),
        Row(
            "GumbelQuantizer",
            "GumbelQuantizer",
            lambda t, g, d: _quantizer(t, g),
            kind="features",
            arg="x",
            out="loss",
            inf="data",
            tau="float",
        ),
    ]
    return rows


ROWS = {row.id: row for row in _rows()}


def rows(*, where: Callable[[Row], bool] = lambda r: True) -> list[str]:
    return sorted(i for i, r in ROWS.items() if where(r))


def test_every_public_sampler_has_a_row():
    public = {f"sample:{m}" for m in gk.METHODS}
    public |= {f"objective:{m}" for m in gk.estimators.registered_methods("score_function")}
    public |= {f"binary.{spec.kind}:{m}" for m, spec in gk.binary.METHODS.items()}
    public |= set(gk.subsets.__all__) | set(gk.permutations.__all__) | set(gk.distributions.__all__)
    public |= {"GumbelSoftmax", "L0Gate", "GumbelQuantizer", "gumbel_max", "gumbel_topk", "gumbel_softmax"}
    public |= {"tempered_softmax", "sample_tokens"}
    covered = {r.key for r in ROWS.values()}
    assert public <= covered, sorted(public - covered)


# --------------------------------------------------------------------------- inputs


def _shape(draw, kind: str) -> tuple[int, ...]:
    if kind == "matrix":
        n = draw(st.integers(1, 4))
        return (draw(st.integers(1, 3)), n, n)
    if kind == "features":
        return (draw(st.integers(1, 3)), 4)
    if kind == "scores":
        return (draw(st.integers(1, 3)), draw(st.integers(1, 5)))
    if kind == "tokens":
        return (draw(st.integers(1, 3)), draw(st.integers(1, 6)))
    lead = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))]
    return (*lead, draw(st.integers(1, 6)))


def _infinities(row: Row, x: torch.Tensor, seed: int) -> torch.Tensor:
    """x with the infinities the row allows: masked entries (never the first two of a row, nor a
    matrix's diagonal, so that k = 2 subsets and a permutation exist) or +-inf bits."""
    r = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if row.inf == "bits":
        return x.masked_fill(r < 0.2, INF).masked_fill(r > 0.8, -INF)
    keep = torch.zeros(x.shape, dtype=torch.bool)
    if row.kind == "matrix":
        keep |= torch.eye(x.shape[-1], dtype=torch.bool)
    else:
        keep[..., :2] = True
    return x.masked_fill((r < 1 / 3) & ~keep, -INF)


@st.composite
def inputs(draw, row: Row, *, masks: bool = False, scales=(1.0, 5.0, 30.0), dtypes=DTYPES):
    """(x, has infinities, dtype-dependent tolerance) for the row, small shapes."""
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from(scales))
    if dtype == torch.float16:
        scale = min(scale, 1e4)  # float16 stops at 65,504
    x = torch.randn(_shape(draw, row.kind), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * scale
    infs = masks and row.inf in ("mask", "bits") and draw(st.booleans())
    if infs:
        x = _infinities(row, x, seed + 1)
    return x.to(dtype), infs


def _tol(dtype: torch.dtype) -> float:
    return {torch.float16: 3e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4, torch.float64: 1e-8}[dtype]


def _tau_value(row: Row, x: torch.Tensor, value: float, tensor: bool):
    """A float, or a tensor of the row's temperature shape (values around ``value``), requiring grad."""
    if row.tau != "tensor" or not tensor:
        return value
    shape = row.tau_shape(tuple(x.shape))
    n = max(1, math.prod(shape))
    dtype = x.dtype if row.tau_dtype == "input" else torch.float64 if x.dtype == torch.float64 else torch.float32
    t = torch.full(shape, value, dtype=dtype) * torch.linspace(1.0, 1.5 if value < 1e30 else 1.0, n, dtype=dtype).view(
        shape
    )
    return t.requires_grad_()


def _weights(y: torch.Tensor) -> torch.Tensor:
    n = max(y.numel(), 1)
    return torch.linspace(-1, 1, n, dtype=torch.float64)[: y.numel()].view(y.shape)


def _loss(y: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """sum(y * w) in float64, leaving out (with a zero gradient) the entries in ``skip`` (masked, -inf in log space)."""
    y = y.double()
    if skip is not None and skip.shape == y.shape:
        y = torch.where(skip, 0.0, y)
    return (y * _weights(y)).sum()


def _call(row: Row, x: torch.Tensor, tau, seed: int = 7, dim: int = -1):
    return row.make(tau, torch.Generator().manual_seed(seed) if row.random else None, dim)(x)


# --------------------------------------------------------------------------- the forward's promise


def _check_forward(row: Row, x: torch.Tensor, y: torch.Tensor, tol: float) -> None:
    """What the row's forward promises, for input x (infinities included) and output y."""
    assert not torch.isnan(y).any(), f"{row.id}: NaN output"
    out = row.out
    if out == "index":
        assert y.dtype == torch.int64
        if y.numel():
            picked = x.gather(-1, y if row.id == "gumbel_topk" else y.unsqueeze(-1))
            assert torch.isfinite(picked).all(), "a masked class was drawn"
        return
    if out != "loss":  # a loss has the loss function's dtype
        assert y.dtype == x.dtype, (y.dtype, x.dtype)
    if out == "noise":
        assert y.shape == x.shape and torch.isfinite(y).all(), "noise of another shape, or not finite"
        return
    if out == "log_normalizer":
        # log e_k(exp x) lies between the log-weight C_k of the heaviest k-subset and C_k + log C(n, k)
        assert y.shape == x.shape[:-1] and (y != -INF).all()
        k, xd = _k(x), x.double()
        heaviest = xd.topk(k, -1).values.sum(-1)
        n_free = torch.isfinite(xd).sum(-1).double()
        log_comb = torch.lgamma(n_free + 1) - math.lgamma(k + 1) - torch.lgamma(n_free - k + 1)
        slack = 10 * tol * (1 + heaviest.abs())
        fits = (y.double() >= heaviest - slack) & (y.double() <= heaviest + log_comb + slack)
        # in float16 / bfloat16 log e_k may be beyond the dtype's range: +inf there and only there
        beyond = heaviest > torch.finfo(x.dtype).max / 2
        assert torch.where(y.double() == INF, beyond, fits).all(), "log e_k out of its bounds"
        return
    if out == "log_simplex":
        assert (y != INF).all() and (y <= tol).all()
        assert torch.allclose(y.double().logsumexp(-1), torch.zeros(()).double(), atol=10 * tol)
        if row.inf == "mask":  # (an unmasked entry can underflow too: below -65,504 in float16)
            assert torch.isneginf(y[torch.isneginf(x)]).all()
        return
    assert torch.isfinite(y).all(), f"{row.id}: non-finite output"
    yd, ones = y.double(), lambda s: torch.ones(s, dtype=torch.float64)
    masked = torch.isneginf(x) if row.inf == "mask" and y.shape == x.shape else None
    if masked is not None:
        assert (y[masked] == 0).all(), "masked entry got weight"
    k = _k(x) if out in ("k_sum", "k_hot", "marginals") else 1
    if out in ("simplex", "k_sum", "marginals", "rows"):
        assert (yd >= 0).all() and torch.allclose(yd.sum(-1), k * ones(yd.shape[:-1]), atol=10 * tol)
    if out == "marginals":
        assert (yd <= 1 + tol).all()
    if out in ("one_hot", "k_hot", "bits", "permutation"):
        assert ((y == 0) | (y == 1)).all(), "not exactly 0/1"
    if out in ("one_hot", "k_hot"):
        assert (yd.sum(-1) == k).all()
    if out == "permutation":
        assert (yd.sum(-1) == 1).all() and (yd.sum(-2) == 1).all()
    if out == "cols":
        assert (yd >= 0).all() and torch.allclose(yd.sum(-2), ones(yd.shape[:-2] + yd.shape[-1:]), atol=10 * tol)
    if out in ("unit", "bits"):
        assert ((yd >= 0) & (yd <= 1)).all()
        if row.inf == "bits":
            assert (y[x == INF] == 1).all() and (y[x == -INF] == 0).all(), "+-inf logits are deterministic bits"
    if out == "gate":
        assert (yd.abs() <= x.double().abs() * (1 + tol)).all()


def _check_grads(row: Row, x: torch.Tensor, gx: torch.Tensor | None, *, finite: bool = True) -> None:
    if not row.grad:
        return
    assert gx is not None, "no gradient reached the input"
    bad = torch.isnan(gx) if not finite else ~torch.isfinite(gx)
    assert not bad.any(), f"{row.id}: {'NaN' if not finite else 'non-finite'} input gradient"
    if row.inf in ("mask", "bits"):
        assert (gx[torch.isinf(x)] == 0).all(), "an infinite logit got a gradient"


def _forward_backward(row: Row, x: torch.Tensor, tau, seed: int = 7):
    xl = x.detach().clone().requires_grad_(row.grad)
    y = _call(row, xl, tau, seed)
    gx = gt = None
    if row.grad:
        skip = torch.isneginf(y) if row.out == "log_simplex" else None
        _loss(y, skip).backward()
        gx = xl.grad
        gt = tau.grad if isinstance(tau, torch.Tensor) else None
    return y.detach(), gx, gt


# --------------------------------------------------------------------------- properties over the table


@pytest.mark.parametrize("rid", rows(where=lambda r: r.inf in ("mask", "bits")))
@FEW
@given(data=st.data())
def test_infinite_logits_with_a_tensor_tau(rid, data):
    row = ROWS[rid]
    x, _ = data.draw(inputs(row, masks=True))
    tau = _tau_value(row, x, data.draw(st.sampled_from([0.3, 1.0, 2.0])), tensor=True)
    y, gx, gt = _forward_backward(row, x, tau)
    tol = _tol(x.dtype)
    _check_forward(row, x, y, tol)
    _check_grads(row, x, gx)
    if gt is not None:
        assert torch.isfinite(gt).all(), "non-finite tau gradient"
    inf = torch.isinf(x)
    if gt is None or not inf.any():
        return
    # The infinite entries do not depend on tau: they must give its gradient exactly nothing.
    # Masks: the same tau-gradient as with a finite logit of weight 0 in their place (-1e4: the
    # logits here are at most ~100); +-inf bits: the same as without their outputs in the loss.
    tau2 = tau.detach().clone().requires_grad_()
    if row.inf == "mask":
        y2 = _call(row, x.masked_fill(inf, -1e4), tau2)
        _loss(y2, inf if y2.shape == x.shape else None).backward()
    else:  # the bits at +-inf are constant: leaving them out of the loss changes no gradient
        _loss(_call(row, x, tau2), inf).backward()
    torch.testing.assert_close(gt, tau2.grad, rtol=max(10 * tol, 1e-5), atol=max(10 * tol, 1e-6))


SPREADS = (1.0, 1e10, 1e20, 1e30)


@pytest.mark.parametrize("rid", rows(where=lambda r: r.inf != "data"))
@FEW
@given(data=st.data())
def test_huge_logit_spreads(rid, data):
    row = ROWS[rid]
    x, _ = data.draw(inputs(row, masks=True, scales=SPREADS))
    tau = _tau_value(row, x, 0.5, tensor=data.draw(st.booleans()))
    y, gx, gt = _forward_backward(row, x, tau)
    _check_forward(row, x, y, _tol(x.dtype))
    # a log-space output's derivatives are of the size of the spread / tau: past the dtype's range
    # they may overflow, never be NaN
    _check_grads(row, x, gx, finite=row.bounded_grad)
    if gt is not None:
        assert not torch.isnan(gt).any() and (torch.isfinite(gt).all() or not row.bounded_grad), "bad tau gradient"


TAUS = (1e-45, 1e-30, 1e-8, 1e30)


@pytest.mark.parametrize("rid", rows(where=lambda r: r.tau is not None))
@FEW
@given(data=st.data())
def test_extreme_temperatures(rid, data):
    row = ROWS[rid]
    x, _ = data.draw(inputs(row, masks=True))
    value = data.draw(st.sampled_from(TAUS))
    tensor = row.tau == "tensor" and data.draw(st.booleans())
    if row.tau_dtype == "input" and x.dtype in (torch.float16, torch.bfloat16):
        fi = torch.finfo(x.dtype)  # a distribution's temperature must be representable in its dtype
        value = min(max(value, fi.tiny), fi.max / 2)
    tau = _tau_value(row, x, value, tensor)
    y, gx, gt = _forward_backward(row, x, tau)
    _check_forward(row, x, y, _tol(x.dtype))
    # 1 / tau of a subnormal tau is beyond the dtype's range: a gradient may be that large, never NaN
    _check_grads(row, x, gx, finite=False)
    if gt is not None:
        assert not torch.isnan(gt).any(), "NaN tau gradient"


# (the rows with a dim get dtypes and layouts from the categorical fuzz at the end, with dims)
@pytest.mark.parametrize("rid", rows(where=lambda r: not r.dim))
@FEW
@given(data=st.data())
def test_dtypes_are_kept(rid, data):
    row = ROWS[rid]
    x, _ = data.draw(inputs(row))
    y, gx, _ = _forward_backward(row, x, _tau_value(row, x, 0.7, tensor=data.draw(st.booleans())))
    _check_forward(row, x, y, _tol(x.dtype))
    _check_grads(row, x, gx)
    if gx is not None:
        assert gx.dtype == x.dtype


def _single(row: Row) -> torch.Tensor:
    shape = {"matrix": (3, 3), "scores": (5,), "features": (4,), "tokens": (2, 6)}.get(row.kind, (6,))
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("rid", rows())
def test_vmap_with_different_randomness(rid):
    row = ROWS[rid]
    x = _single(row)
    ref = _call(row, x, 0.7)
    call = row.make(0.7, None, -1)
    if not row.vmap:  # documented: refused with the library's error, never a raw functorch one
        with pytest.raises(GumbelkitError, match=rf"^{re.escape(row.name)}: .*vmap"):
            torch.vmap(call, randomness="different")(x.expand(16, *x.shape))
        return
    y = torch.vmap(call, randomness="different")(x.expand(16, *x.shape))
    assert y.shape == (16, *ref.shape) and y.dtype == ref.dtype
    if y.dtype.is_floating_point:
        assert not torch.isnan(y).any()
    if row.random:  # identical inputs, independent draws
        assert len({tuple(r.flatten().tolist()) for r in y}) > 1
    else:
        assert torch.allclose(y.double(), ref.double().expand_as(y), atol=1e-6)


@pytest.mark.parametrize("rid", rows(where=lambda r: r.grad))
@FEW
@given(data=st.data())
def test_double_backward_is_finite(rid, data):
    row = ROWS[rid]
    x, _ = data.draw(inputs(row, masks=True, dtypes=[torch.float64]))
    x = x.requires_grad_()
    tau = _tau_value(row, x, 0.7, tensor=True)
    y = _call(row, x, tau)
    wrt = [x] + ([tau] if isinstance(tau, torch.Tensor) else [])
    skip = torch.isneginf(y) if row.out == "log_simplex" else None
    grads = torch.autograd.grad(_loss(y, skip), wrt, create_graph=True, allow_unused=True)
    u = torch.linspace(0.5, 1.5, max(x.numel(), 1), dtype=x.dtype)[: x.numel()].view(x.shape)
    total = sum((g * (u if g.shape == x.shape else 1)).sum() for g in grads if g is not None and g.requires_grad)
    if not isinstance(total, torch.Tensor):
        return  # piecewise-constant backward (a straight-through one-hot of a constant): nothing to differentiate
    second = torch.autograd.grad(total, wrt, allow_unused=True)
    for g in second:
        assert g is None or torch.isfinite(g).all(), "non-finite second derivative"
    if second[0] is not None and row.inf in ("mask", "bits"):
        assert (second[0][torch.isinf(x)] == 0).all()


@pytest.mark.parametrize("rid", rows(where=lambda r: r.exact_grad))
def test_gradgradcheck_where_the_backward_is_the_derivative(rid):
    row = ROWS[rid]
    x = _good(row).double().requires_grad_()
    args = (x,)
    if row.tau == "tensor":  # a tensor temperature of the row's shape, differentiated too
        args = (x, _tau_value(row, x, 0.7, tensor=True))

    def fn(a, t=0.7):
        y = _call(row, a, t)
        return torch.where(torch.isneginf(y), 0.0, y) if row.out == "log_simplex" else y

    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


LAYOUTS = ["transposed", "expanded", "channels_last", "strided"]


def _relayout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same logical values in another memory layout (differentiable back to x)."""
    if layout == "transposed" and x.dim() > 1:
        perm = list(range(x.dim()))[::-1]
        inv = [perm.index(i) for i in range(x.dim())]
        return x.permute(perm).contiguous().permute(inv)
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.repeat_interleave(x, 2, dim=-1) if x.dim() else x
        return wide[..., ::2]
    if layout == "expanded" and x.dim() > 1 and x.shape[0] > 0:
        # row 0 repeated: a zero stride along dim 0 (the values change, the layout test compares
        # against the contiguous copy of the same expanded tensor)
        return x[:1].expand_as(x)
    return x


@pytest.mark.parametrize("rid", rows(where=lambda r: not r.dim))
@FEW
@given(data=st.data())
def test_same_generator_state_same_result_in_every_layout(rid, data):
    row = ROWS[rid]
    x, _ = data.draw(inputs(row, masks=True))
    layout = data.draw(st.sampled_from(LAYOUTS))
    if layout == "channels_last" and x.dim() == 3:
        x = x.unsqueeze(0) if row.kind != "matrix" else x
    if layout == "expanded":
        x = _relayout(x, layout).contiguous()  # its expanded view has the same values
    results = []
    for lay in ("contiguous", layout):
        xl = x.detach().clone().requires_grad_(row.grad)
        y = _call(row, _relayout(xl, lay), 0.7)
        if row.grad and lay != "expanded":  # an expanded leaf's gradient sums over the repeated rows
            _loss(y, torch.isneginf(y) if row.out == "log_simplex" else None).backward()
        results.append((y.detach(), xl.grad))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1), "another layout gave another result"
    if row.grad and layout != "expanded":
        tol = 1e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-6
        torch.testing.assert_close(g0.double(), g1.double(), atol=tol, rtol=tol)


# --------------------------------------------------------------------------- the error rules, from the same table


def _good(row: Row) -> torch.Tensor:
    return torch.randn(
        {"matrix": (2, 3, 3), "features": (2, 4), "scores": (2, 4)}.get(row.kind, (2, 4)),
        generator=torch.Generator().manual_seed(11),
    )


def _error_cases(row: Row):
    """(label, call, builtin type, word the message must contain): the bad inputs the row's declaration implies."""
    x = _good(row)

    def with_value(v, where=(0, 1)):
        y = x.clone()
        y[where] = v
        return y

    run = lambda inp, t=0.5, g=None: _call_raw(row, inp, t, g)
    cases = [("integer input", lambda: run(x.long()), TypeError, row.arg)]
    if row.kind != "noise":  # a noise generator's input only gives a shape and a dtype
        cases.append(("not a tensor", lambda: run(x.tolist()), TypeError, row.arg))
    if row.inf != "data":
        cases.append(("NaN", lambda: run(with_value(float("nan"))), ValueError, "NaN"))
    if row.inf in ("mask", "refuse"):
        cases.append(("+inf", lambda: run(with_value(INF)), ValueError, "inf"))
    if row.inf == "refuse":
        cases.append(("-inf", lambda: run(with_value(-INF)), ValueError, "inf"))
    if row.inf == "mask":
        y = x.clone()
        y[(0,) * (x.dim() - 1)] = -INF  # one fully masked row
        cases.append(("all masked", lambda y=y: run(y), ValueError, "-inf" if row.kind == "matrix" else "masked"))
    if row.tau is not None:
        for label, t, builtin in (
            ("tau <= 0", -1.0, ValueError),
            ("tau NaN", float("nan"), ValueError),
            ("tau str", "hot", TypeError),
        ):
            cases.append((label, lambda t=t: run(x, t), builtin, row.tau_name))
        if row.tau == "tensor":
            shape = row.tau_shape(tuple(x.shape))
            cases.append(("tensor tau <= 0", lambda: run(x, torch.full(shape, -1.0)), ValueError, row.tau_name))
            cases.append(("integer tau", lambda: run(x, torch.ones(shape, dtype=torch.long)), TypeError, row.tau_name))
    if row.random:
        cases.append(("generator", lambda: run(x, 0.5, 7), TypeError, "generator"))
    return cases + row.errors()


def _call_raw(row: Row, x, tau, generator):
    return row.make(tau, generator, -1)(x)


ERROR_CASES = [
    pytest.param(rid, i, id=f"{rid}-{label}")
    for rid in rows()
    for i, (label, *_r) in enumerate(_error_cases(ROWS[rid]))
]


@pytest.mark.parametrize("rid, i", ERROR_CASES)
def test_bad_arguments_raise_the_library_error_named_after_the_function(rid, i):
    row = ROWS[rid]
    label, call, builtin, word = _error_cases(row)[i]
    with pytest.raises(GumbelkitError) as info:
        call()
    assert isinstance(info.value, builtin), (label, type(info.value))
    msg = str(info.value)
    assert re.match(rf"{re.escape(row.name)}(\.\w+)?: ", msg), (label, msg)
    assert word in msg, (label, word, msg)


# --------------------------------------------------------------------------- the categorical samplers: dims and layouts


CATEGORICAL = {rid: ROWS[rid] for rid in rows(where=lambda r: r.dim)}


@st.composite
def problems(draw, min_batch=0):
    ndim = draw(st.integers(1, 4))
    shape = [draw(st.integers(min_batch if i else 1, 4)) for i in range(ndim)]
    dim = draw(st.integers(-ndim, ndim - 1))
    shape[dim] = draw(st.integers(1, 7))  # the categories: K = 1 included
    if draw(st.booleans()) and ndim > 1:  # an empty batch
        other = [i for i in range(ndim) if i != dim % ndim]
        shape[draw(st.sampled_from(other))] = 0
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1.0, 5.0, 30.0]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    if draw(st.booleans()) and shape[dim] > 1:
        # mask each class with probability 1/3, but keep the first two classes of every row
        # (a k-subset sampler needs k = 2 unmasked items)
        keep = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) > 1 / 3
        first = torch.zeros(shape, dtype=torch.bool)
        first.narrow(dim, 0, min(2, shape[dim])).fill_(True)
        x = x.masked_fill(~(keep | first), float("-inf"))
    layout = draw(st.sampled_from(["contiguous", *LAYOUTS]))
    tau_kind = draw(st.sampled_from(["float", "tensor", "tensor_grad"]))
    tau = draw(st.sampled_from([0.1, 0.5, 1.0, 2.0]))
    return x.to(dtype), dim, layout, tau_kind, tau


def _tau(kind: str, tau: float, x: torch.Tensor, dim: int):
    if kind == "float":
        return tau
    shape = [1] * x.dim()
    shape[dim] = 1
    if x.dim() > 1:
        b = 0 if dim % x.dim() else 1
        shape[b] = x.shape[b]
    t = torch.full(shape, tau, dtype=torch.float32)
    t = t * torch.linspace(0.5, 1.5, t.numel()).view(shape)
    return t.requires_grad_(kind == "tensor_grad")


def _run(row: Row, x_leaf, layout, dim, tau_kind, tau, seed=123):
    """Output, logits gradient and tau gradient of the row on relayout(x) under a fixed generator."""
    x = x_leaf.detach().clone().requires_grad_(True)
    t = _tau(tau_kind, tau, x, dim) if row.tau == "tensor" else tau
    y = row.make(t, torch.Generator().manual_seed(seed), dim)(_relayout(x, layout))
    w = torch.linspace(-1, 1, max(y.numel(), 1), dtype=torch.float64)[: y.numel()].view(y.shape)
    (y.double() * w).sum().backward()
    tg = t.grad if isinstance(t, torch.Tensor) and t.requires_grad else None
    return y.detach(), x.grad, tg


@pytest.mark.parametrize("name", sorted(CATEGORICAL))
@SETTINGS
@given(problem=problems())
def test_sampler_properties(name, problem):
    x, dim, layout, tau_kind, tau = problem
    row = CATEGORICAL[name]
    y, gx, gt = _run(row, x, layout, dim, tau_kind, tau)
    masked = torch.isneginf(_relayout(x, layout) if layout == "expanded" else x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert bool(torch.isfinite(y).all()), "non-finite output"
    assert gx is not None and bool(torch.isfinite(gx).all()), "non-finite logits gradient"
    if gt is not None:
        assert bool(torch.isfinite(gt).all()), "non-finite tau gradient"
    if y.numel():
        assert bool((y[masked] == 0).all()), "masked class got weight"
        if layout != "expanded":  # an expanded leaf's gradient sums over the repeated rows
            assert bool((gx[masked] == 0).all()), "masked class got gradient"
        k = min(2, x.shape[dim]) if row.out in ("k_sum", "k_hot", "marginals") else 1
        if row.out in ("one_hot", "k_hot"):
            assert bool(((y == 0) | (y == 1)).all()) and bool((y.sum(dim) == k).all()), "not one-hot / k-hot"
        else:
            s = y.double().sum(dim)
            tol = 1e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-5
            assert torch.allclose(s, torch.full_like(s, k), atol=tol)


@pytest.mark.parametrize("name", sorted(CATEGORICAL))
@SETTINGS
@given(problem=problems(min_batch=1))
def test_same_generator_same_result_whatever_the_layout(name, problem):
    x, dim, layout, tau_kind, tau = problem
    if layout == "expanded":
        # compare the expanded view with its own contiguous copy (same values)
        x = _relayout(x, layout).contiguous()
    row = CATEGORICAL[name]
    y0, g0, t0 = _run(row, x, "contiguous", dim, tau_kind, tau)
    y1, g1, t1 = _run(row, x, layout if layout != "expanded" else "contiguous", dim, tau_kind, tau)
    assert torch.equal(y0, y1)
    tol = 1e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-6
    assert torch.allclose(g0.double(), g1.double(), atol=tol, rtol=tol)
    if t0 is not None:
        assert torch.allclose(t0, t1, atol=tol, rtol=tol)


@SETTINGS
@given(problem=problems(), k=st.integers(1, 3))
def test_gumbel_max_and_topk_never_draw_masked_classes(problem, k):
    x, dim, layout, _, _ = problem
    xl = _relayout(x, layout)
    idx = gk.gumbel_max(xl, dim, generator=torch.Generator().manual_seed(5))
    assert idx.shape == tuple(s for i, s in enumerate(x.shape) if i != dim % x.dim())
    if idx.numel():
        assert bool(torch.isfinite(xl.gather(dim, idx.unsqueeze(dim))).all())
    n_free = int(torch.isfinite(xl).sum(dim).min()) if xl.numel() else x.shape[dim]
    k = min(k, n_free, x.shape[dim])
    top = gk.gumbel_topk(xl, k, dim, generator=torch.Generator().manual_seed(5))
    assert top.shape[dim % x.dim()] == k
    if top.numel():
        assert bool(torch.isfinite(xl.gather(dim, top)).all())
        if k > 1:  # without replacement: distinct indices in every row
            s = top.sort(dim).values
            assert bool((s.diff(dim=dim) > 0).all())


def test_property_strategies_cover_the_cases():
    # The strategies above reach each case they promise (a guard against a narrowed strategy).
    seen = set()

    @settings(max_examples=300, deadline=None)
    @given(problem=problems())
    def collect(problem):
        x, dim, layout, tau_kind, _ = problem
        seen.add(("dtype", x.dtype))
        seen.add(("layout", layout))
        seen.add(("tau", tau_kind))
        if x.numel() == 0:
            seen.add("empty")
        if x.shape[dim] == 1:
            seen.add("K=1")
        if bool(torch.isneginf(x).any()):
            seen.add("masked")
        if dim % x.dim() != x.dim() - 1:
            seen.add("dim not last")

    collect()
    needed = {("dtype", d) for d in DTYPES} | {"empty", "K=1", "masked", "dim not last"}
    needed |= {("layout", lay) for lay in ["contiguous", *LAYOUTS]}
    needed |= {("tau", k) for k in ["float", "tensor", "tensor_grad"]}
    assert needed <= seen, needed - seen

    row = ROWS["gumbel_sinkhorn"]
    drawn = set()

    @settings(max_examples=200, deadline=None)
    @given(data=st.data())
    def collect_table(data):
        x, infs = data.draw(inputs(row, masks=True, scales=SPREADS))
        drawn.add(("dtype", x.dtype))
        drawn.add(("infinities", infs))
        drawn.add(("spread", float(x.double()[torch.isfinite(x)].abs().max()) > 1e29))

    collect_table()
    assert {("dtype", d) for d in DTYPES} | {("infinities", True), ("spread", True)} <= drawn
