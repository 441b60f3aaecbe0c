"""Regression tests for the defects found by trying the newer modules as a hostile user would.

One test (or a few) per defect; each failed before its fix. The classes they belong to (masks with
a tensor tau, huge logit spreads, tiny tau, vmap, double backward, layouts, error rules) are
guarded for every public sampler by ``tests/test_properties.py``.
"""

import math

import pytest
import torch
from scipy import stats

import gumbelkit as gk
from gumbelkit.errors import GumbelkitError, GumbelkitTypeError, GumbelkitValueError

INF = float("inf")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- masks and a tensor tau


def test_relaxed_topk_masked_logit_gives_tau_the_gradient_of_the_unmasked_items():
    # was: tau.grad = NaN (0 * inf from the masked entry in the division's backward)
    grads = []
    for masked in (-INF, -1e4):  # -1e4: weight exactly 0 in float32, same noise and arithmetic
        x = torch.tensor([0.0, masked, 1.0, 2.0], requires_grad=True)
        tau = torch.tensor(0.5, requires_grad=True)
        y = gk.subsets.relaxed_topk(x, 2, tau, generator=_gen(1))
        (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
        grads.append((tau.grad, x.grad))
    assert torch.isfinite(grads[0][0]) and grads[0][0] != 0
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert grads[0][1][1] == 0 and torch.isfinite(grads[0][1]).all()


@pytest.mark.parametrize("method", sorted(m for m, spec in gk.binary.METHODS.items() if spec.kind == "sample"))
def test_binary_infinite_logits_give_tau_exactly_zero_gradient(method):
    # was: tau.grad = NaN for all four methods (inf / tau differentiated as 0 * inf)
    x = torch.tensor([INF, -INF, 0.3])
    tau = torch.tensor(0.5, requires_grad=True)
    y = gk.binary.sample(x, method, tau, generator=_gen(2))
    (y * torch.tensor([5.0, 7.0, 0.0])).sum().backward()
    assert tau.grad == 0  # the +-inf entries do not depend on tau
    tau.grad = None
    y = gk.binary.sample(x, method, tau, generator=_gen(2))
    y.sum().backward()
    assert torch.isfinite(tau.grad)


TINY_TAU = {
    "relaxed_topk": lambda t: gk.subsets.relaxed_topk(torch.randn(6, generator=_gen(3)), 2, t, generator=_gen(4)),
    "neural_sort": lambda t: gk.permutations.neural_sort(torch.randn(5, generator=_gen(3)), t.view(1)),
    "soft_sort": lambda t: gk.permutations.soft_sort(torch.randn(5, generator=_gen(3)), t.view(1)),
    "gumbel_sinkhorn": lambda t: gk.permutations.gumbel_sinkhorn(
        torch.randn(4, 4, generator=_gen(3)), t, generator=_gen(4)
    ),
    "binary.sample": lambda t: gk.binary.sample(
        torch.randn(6, generator=_gen(3)), "binary_concrete", t, generator=_gen(4)
    ),
}


@pytest.mark.parametrize("name", sorted(TINY_TAU))
@pytest.mark.parametrize("tau", [1e-20, 1e-30, 1e-38], ids=["1e-20", "1e-30", "1e-38"])
def test_tiny_tensor_tau_gets_a_zero_gradient_not_nan(name, tau):
    # was NaN: tau ** 2 underflows to 0 in the division's backward; the forward is saturated
    t = torch.tensor(tau, requires_grad=True)
    y = TINY_TAU[name](t)
    assert torch.isfinite(y).all()
    (y * torch.randn(y.shape, generator=_gen(5))).sum().backward()
    assert t.grad == 0


# --------------------------------------------------------------------------- subsets: spreads and masks


def test_topk_marginals_are_exact_for_huge_spreads():
    # was [1, 1, 1] (sum 3) and [inf, inf, 1, 0]
    mu = gk.subsets.topk_marginals(torch.tensor([1e8, 0.0, -1.0]), 2)
    p = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(mu, torch.tensor([1.0, p, 1 - p]))
    mu = gk.subsets.topk_marginals(torch.tensor([3e30, 2e30, 1e30, 0.0]), 2)
    assert torch.equal(mu, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # the law only sees differences: a shift by 1e30 changes nothing (float64 holds 1e30 + 0.5 to 1e14)
    x = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.5]], dtype=torch.float64) * 1e16
    want = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(gk.subsets.topk_marginals(x, 2), want)
    assert torch.equal(gk.subsets.topk_marginals(x + 1e30, 2), want)


def test_topk_marginals_masked_item_never_meets_a_very_negative_logit():
    # was [1, 0, 1]: the mask's finite "log zero" (-1.8e19) met the real logit -1e20
    assert torch.equal(gk.subsets.topk_marginals(torch.tensor([-INF, -1e20, 0.0]), 2), torch.tensor([0.0, 1.0, 1.0]))
    mu = gk.subsets.topk_marginals(torch.tensor([-INF, -3e38, 0.0, 1.0]), 2)
    assert mu[0] == 0 and torch.allclose(mu.sum(), torch.tensor(2.0))


def test_simple_samples_the_exact_law_for_huge_spreads():
    # was: always {0, 2}; the exact law gives {0, 1} with probability sigma(1) = 0.731
    n = 4000
    y = gk.subsets.simple(torch.tensor([1e30, 0.0, -1.0]).expand(n, 3), 2, generator=_gen(6))
    assert torch.equal(y[:, 0], torch.ones(n))
    hits = int(y[:, 1].sum())
    # two-sided binomial test at level 1e-4 (fixed seed: a correct sampler fails it 1 time in 10^4)
    assert stats.binomtest(hits, n, 1 / (1 + math.exp(-1))).pvalue > 1e-4


@pytest.mark.parametrize("k", [2, 3])
def test_topk_marginals_second_derivatives_are_right(k):
    # was: gradgradcheck failed (k >= 3, or a masked item) and double backward could give NaN
    x = torch.tensor([[0.3, -INF, 1.0, -0.5, 2.0], [0.1, 0.2, -1.0, 0.5, -2.0]], dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a: gk.subsets.topk_marginals(a, k), (x,))
    y = gk.subsets.simple(x, k, generator=_gen(7))
    (g,) = torch.autograd.grad((y * torch.arange(5.0, dtype=torch.float64)).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), x)
    assert torch.isfinite(h).all() and h[0, 1] == 0


# --------------------------------------------------------------------------- permutations


def test_neural_sort_huge_scores_are_finite_and_keep_small_differences():
    # was NaN: (n + 1 - 2i) s overflows to inf, then inf - inf
    p = gk.permutations.neural_sort(torch.tensor([3e38, -3e38, 0.0]))
    assert torch.equal(p, gk.structured.permutation_matrix(torch.tensor([0, 2, 1])))
    # was [0.5, 0.5] in the last two rows: 1e30 swamped the difference of 0 and -1
    p = gk.permutations.neural_sort(torch.tensor([1e30, 0.0, -1.0]))
    s = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(p[1:, 1:], torch.tensor([[s, 1 - s], [1 - s, s]]))


# --------------------------------------------------------------------------- vmap


VMAPPED = {
    "binary.sample": lambda r: gk.binary.sample(r, "st_binary_concrete", 0.5),
    "binary.sample:hard_concrete": lambda r: gk.binary.sample(r, "hard_concrete"),
    "HardConcrete": lambda r: gk.distributions.HardConcrete(r).rsample(),
    "BinaryConcrete": lambda r: gk.distributions.BinaryConcrete(torch.tensor(0.5), logits=r).rsample(),
    "Concrete": lambda r: gk.distributions.Concrete(torch.tensor(0.5), logits=r).rsample(),
    "L0Gate": lambda r: gk.nn.L0Gate(6)(r),
    "logistic_noise": lambda r: r + gk.logistic_noise((6,)),
    "gumbel_noise": lambda r: r + gk.gumbel_noise((6,)),
    "uniform_open": lambda r: r + gk.uniform_open((6,)),
}


@pytest.mark.parametrize("name", sorted(VMAPPED))
def test_vmap_different_randomness_draws_independently(name):
    # was: "vmap: Cannot ask for different inplace randomness" or a data-dependent check
    x = torch.ones(64, 6)
    y = torch.vmap(VMAPPED[name], randomness="different")(x)
    assert y.shape == (64, 6) and torch.isfinite(y).all()
    assert len({tuple(r) for r in y.tolist()}) > 8  # identical rows, independent draws


# --------------------------------------------------------------------------- dtypes


def test_quantizer_perplexity_in_half_precision_counts_every_position():
    # was 1.0 (counts cast to float16 overflow past 65,504: inf / inf)
    torch.manual_seed(0)
    q = gk.nn.GumbelQuantizer(4, 8, 2).half()
    out = q(torch.randn(70_000, 4).half())
    want = gk.nn._histogram_perplexity(torch.bincount(out.codes, minlength=8).double())
    assert want > 2 and abs(float(out.perplexity) - float(want)) < 0.02 * float(want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_uniform_open_half_precision_stays_inside_the_open_interval(dtype):
    # was: exactly 1.0 for 0.02-0.2% of the draws (1 - 2^-24 rounds to 1)
    u = gk.uniform_open((1 << 20,), generator=_gen(8), dtype=dtype)
    assert u.dtype == dtype and bool((u > 0).all()) and bool((u < 1).all())


def test_l0gate_keeps_the_input_dtype_and_refuses_integers():
    gate = gk.nn.L0Gate(3)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert gate(torch.ones(2, 3, dtype=dtype)).dtype == dtype  # was float32
    with pytest.raises(GumbelkitTypeError, match="L0Gate: expected x with a floating dtype"):
        gate(torch.ones(2, 3, dtype=torch.long))  # was accepted (float32 out)


def test_surrogate_accepts_integer_losses():
    # was a raw "mean(): could not infer output dtype" from inside the library
    x = torch.zeros(3, 2, requires_grad=True)
    grads = []
    for cast in (torch.long, torch.float32):
        x.grad = None
        s = gk.binary.surrogate(x, lambda b, c=cast: b.sum(-1).to(c), "arm", generator=_gen(9))
        assert s.dtype == torch.float32
        s.sum().backward()
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("method", [*gk.METHODS, "no_such_method"])
def test_every_sample_error_names_sample(method):
    # was: "expected tau > 0 ..." without a name for st, gumbel_rao, reinmax, and unknown names
    with pytest.raises(GumbelkitError, match=r"^sample: "):
        gk.sample(torch.zeros(3, 4), method, tau=-1.0)


REINFORCE_ERRORS = {
    "categorical_log_prob": lambda: gk.categorical_log_prob(torch.zeros(2, 3), torch.zeros(2, 4)),
    "reinforce_surrogate": lambda: gk.reinforce_surrogate(torch.zeros(3), torch.zeros(4)),
    "MovingAverageBaseline": lambda: gk.MovingAverageBaseline(1.5),
    "reinforce_objective": lambda: gk.estimators.reinforce_objective(torch.zeros(2, 3), lambda z: z, n=1),
}


@pytest.mark.parametrize("name", sorted(REINFORCE_ERRORS))
def test_reinforce_helper_errors_are_gumbelkit_errors(name):
    # was a plain ValueError without the function's name
    with pytest.raises(GumbelkitError, match=rf"^{name}: "):
        REINFORCE_ERRORS[name]()


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(method="reinforce"), GumbelkitValueError),
        (dict(method="gumbel_rao", k=0), GumbelkitValueError),
        (dict(method="st", bogus=1), GumbelkitTypeError),
        (dict(method="st", dim="x"), GumbelkitTypeError),
    ],
    ids=["score_function_method", "option_out_of_range", "unknown_option", "dim_not_int"],
)
def test_gumbel_softmax_module_validates_in_its_constructor(kwargs, err):
    # was accepted, failing only at the first forward
    with pytest.raises(err, match=r"^GumbelSoftmax: "):
        gk.nn.GumbelSoftmax(**kwargs)


def test_schedules_refuse_a_fractional_step_and_a_repeated_key():
    s = gk.schedules.jang_schedule()
    with pytest.raises(GumbelkitValueError, match="expected step to be an integer"):
        s(torch.tensor(1.7))  # was silently step 1
    assert s(torch.tensor(2.0)) == s(2)
    with pytest.raises(GumbelkitValueError, match="parse_schedule: expected each key once"):
        gk.schedules.parse_schedule("exp:tau0=1,tau0=2")  # was: the last value won


def test_the_fused_kernels_compile_leaves_torch_distributions_validation_alone():
    # Dynamo's one-time patching (run by the first torch.compile of a process) turns
    # torch.distributions' default validate_args off; the library's own compile must put it back.
    from gumbelkit.kernels import _fused

    torch._dynamo.eval_frame.TorchPatcher.patch.cache_clear()  # so that the patching runs again here
    torch.distributions.Distribution.set_default_validate_args(True)
    _fused._compile(lambda x: x + 1)
    assert torch.distributions.Distribution._validate_args is True
    torch.distributions.Distribution.set_default_validate_args(False)
    _fused._compile(lambda x: x + 2)
    assert torch.distributions.Distribution._validate_args is False  # whatever it was, it stays


def test_exp_concrete_float16_at_the_smallest_temperature_has_no_nan_gradient():
    # the gradient of a tiny temperature overflows float16 (+-inf is allowed); the logits'
    # normalisation once ran its backward in float16 and made inf - inf = NaN of it
    x0 = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).half()
    w = torch.linspace(-1, 1, x0.numel(), dtype=torch.float64).view(x0.shape)
    for seed in range(20):
        x = x0.clone().requires_grad_()
        d = gk.distributions.ExpConcrete(torch.finfo(torch.float16).tiny, logits=x)
        y = d.rsample(generator=torch.Generator().manual_seed(seed))
        (torch.where(torch.isneginf(y), 0.0, y.double()) * w).sum().backward()
        assert not x.grad.isnan().any(), seed
