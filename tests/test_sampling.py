"""gumbel_max, gumbel_topk, gumbel_softmax, tempered_softmax: distributions, policy, gradients."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import gumbelkit as gk

# Chi-square / KS tests use fixed seeds at level ALPHA: a correct sampler fails with probability
# ALPHA over random seeds; with the fixed seed the result is deterministic.
ALPHA = 1e-3
NEG_INF = float("-inf")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _chi2_counts(counts, probs):
    counts = np.asarray(counts, dtype=np.float64)
    expected = np.asarray(probs, dtype=np.float64) * counts.sum()
    return stats.chisquare(counts, expected).pvalue


LOGITS = torch.tensor([0.3, -1.2, 2.0, NEG_INF, 0.0, 1.1])


def test_gumbel_max_matches_softmax_and_never_samples_masked():
    n = 200_000
    z = gk.gumbel_max(LOGITS.expand(n, -1), generator=_gen(1))
    assert z.dtype == torch.int64 and z.shape == (n,)
    counts = torch.bincount(z, minlength=6)
    assert counts[3] == 0
    p = torch.softmax(LOGITS.double(), -1)
    keep = [0, 1, 2, 4, 5]
    assert _chi2_counts(counts[keep], p[keep]) > ALPHA


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_argmax_matches_softmax(hard):
    n = 200_000
    y = gk.gumbel_softmax(LOGITS.expand(n, -1), tau=0.7, hard=hard, generator=_gen(2))
    counts = torch.bincount(y.argmax(-1), minlength=6)
    assert counts[3] == 0
    assert torch.all(y[:, 3] == 0)
    p = torch.softmax(LOGITS.double(), -1)
    keep = [0, 1, 2, 4, 5]
    assert _chi2_counts(counts[keep], p[keep]) > ALPHA


def test_gumbel_softmax_same_distribution_as_builtin():
    # Two-sample KS on each coordinate of the relaxed sample: ours vs torch's built-in.
    torch.manual_seed(0)
    logits = torch.tensor([0.5, -0.5, 1.5, 0.0])
    n = 50_000
    ours = gk.gumbel_softmax(logits.expand(n, -1), tau=0.8, generator=_gen(3))
    ref = torch.nn.functional.gumbel_softmax(logits.expand(n, -1), tau=0.8)
    for k in range(4):
        # Bonferroni over the 4 coordinates keeps the family-wise level at ALPHA.
        assert stats.ks_2samp(ours[:, k].numpy(), ref[:, k].numpy()).pvalue > ALPHA / 4


def test_gumbel_topk_matches_plackett_luce_pairs():
    logits = torch.tensor([1.0, 0.0, -0.5, 0.7])
    p = torch.softmax(logits.double(), -1).numpy()
    n = 200_000
    idx = gk.gumbel_topk(logits.expand(n, -1), 2, generator=_gen(4))
    assert idx.shape == (n, 2)
    assert torch.all(idx[:, 0] != idx[:, 1])
    pairs = list(itertools.permutations(range(4), 2))
    code = idx[:, 0] * 4 + idx[:, 1]
    counts = torch.bincount(code, minlength=16).numpy()
    observed = [counts[i * 4 + j] for i, j in pairs]
    expected = [p[i] * p[j] / (1 - p[i]) for i, j in pairs]
    assert math.isclose(sum(expected), 1.0, rel_tol=1e-9)
    assert _chi2_counts(observed, expected) > ALPHA


def test_gumbel_topk_respects_masks_and_checks_k():
    logits = torch.tensor([[0.0, NEG_INF, 1.0, 2.0]])
    idx = gk.gumbel_topk(logits.expand(1000, -1), 3, generator=_gen(5))
    assert not (idx == 1).any()
    with pytest.raises(ValueError, match="k <= 3"):
        gk.gumbel_topk(logits, 4)
    with pytest.raises(ValueError, match="k <= 4"):
        gk.gumbel_topk(logits, 5)
    with pytest.raises(ValueError, match="k to be an integer >= 1"):
        gk.gumbel_topk(logits, 0)


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_hard_forward_is_exactly_one_hot(tau):
    x = torch.randn(512, 37, generator=_gen(6), requires_grad=True)
    y = gk.gumbel_softmax(x, tau=tau, hard=True, generator=_gen(7))
    assert torch.all((y == 0) | (y == 1))
    assert torch.all(y.sum(-1) == 1)
    y.mul(torch.randn(512, 37)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_soft_uses_the_documented_formula_with_same_noise():
    x = torch.randn(3, 5, 4, 2, dtype=torch.float64, generator=_gen(8))
    xt = x.transpose(1, 3)  # non-contiguous, category dim = 3 (size 5 after transpose is dim 3)
    assert not xt.is_contiguous()
    y = gk.gumbel_softmax(xt, tau=0.6, dim=3, generator=_gen(9))
    g = gk.gumbel_noise(xt.shape, generator=_gen(9), dtype=torch.float64)
    assert torch.allclose(y, torch.softmax((xt + g) / 0.6, 3))
    assert torch.allclose(y.sum(3), torch.ones(()).double())


def test_nchw_dim1():
    x = torch.randn(2, 6, 5, 5, generator=_gen(10))
    y = gk.gumbel_softmax(x, tau=0.5, hard=True, dim=1, generator=_gen(11))
    assert torch.all(y.sum(1) == 1)
    g = gk.gumbel_noise(x.shape, generator=_gen(11))
    assert torch.equal(y.argmax(1), (x + g).argmax(1))


def test_masked_classes_zero_weight_and_zero_gradient():
    x = torch.tensor([[0.0, NEG_INF, 1.0], [NEG_INF, 2.0, NEG_INF]], requires_grad=True)
    for hard in (False, True):
        y = gk.gumbel_softmax(x, tau=0.3, hard=hard, generator=_gen(12))
        assert y[0, 1] == 0 and y[1, 0] == 0 and y[1, 2] == 0
        assert torch.equal(y[1], torch.tensor([0.0, 1.0, 0.0]))
        (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert x.grad[0, 1] == 0 and x.grad[1, 0] == 0 and x.grad[1, 2] == 0
        x.grad = None
    t = gk.tempered_softmax(x, 0.5)
    t.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 1] == 0


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, **k: gk.gumbel_softmax(x, **k),
        lambda x, **k: gk.gumbel_max(x, dim=k.get("dim", -1)),
        lambda x, **k: gk.gumbel_topk(x, 1, dim=k.get("dim", -1)),
        lambda x, **k: gk.tempered_softmax(x, **k),
    ],
    ids=["gumbel_softmax", "gumbel_max", "gumbel_topk", "tempered_softmax"],
)
def test_bad_input_raises_clearly(fn, rejects_bad_logits):
    rejects_bad_logits(fn)
    with pytest.raises(IndexError, match=r"dim in \[-2, 1\].*shape \(1, 2\), got 2"):
        fn(torch.zeros(1, 2), dim=2)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_tau_must_be_positive(tau):
    with pytest.raises(ValueError, match="expected tau > 0"):
        gk.gumbel_softmax(torch.zeros(2, 3), tau=tau)
    with pytest.raises(ValueError, match="expected tau > 0"):
        gk.gumbel_softmax(torch.zeros(2, 3), tau=torch.tensor([[1.0], [tau]]))


def test_tensor_tau_broadcasts_and_gets_gradient():
    x = torch.randn(4, 5, generator=_gen(13))
    tau = torch.tensor([[0.5], [1.0], [2.0], [4.0]], requires_grad=True)
    y = gk.gumbel_softmax(x, tau=tau, generator=_gen(14))
    g = gk.gumbel_noise(x.shape, generator=_gen(14))
    assert torch.allclose(y, torch.softmax((x + g) / tau, -1))
    y[:, 0].sum().backward()
    assert tau.grad is not None and torch.isfinite(tau.grad).all() and tau.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"broadcastable to logits of shape \(4, 5\), got tau of shape \(3, 1\)"):
        gk.gumbel_softmax(x, tau=torch.ones(3, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_no_nan(dtype):
    x = (torch.randn(64, 262144, generator=_gen(15)) * 20).to(dtype)
    x[:, ::7] = NEG_INF
    for hard in (False, True):
        y = gk.gumbel_softmax(x, tau=0.1, hard=hard, generator=_gen(16))
        assert y.dtype == dtype
        assert not torch.isnan(y).any()
        assert torch.all(y[:, ::7] == 0)
    assert torch.all(y.sum(-1) == 1)


def test_generator_determinism_and_global_rng_untouched():
    x = torch.randn(8, 10)
    state = torch.get_rng_state()
    for fn in (
        lambda g: gk.gumbel_softmax(x, 0.5, generator=g),
        lambda g: gk.gumbel_softmax(x, 0.5, hard=True, generator=g),
        lambda g: gk.gumbel_max(x, generator=g),
        lambda g: gk.gumbel_topk(x, 3, generator=g),
    ):
        assert torch.equal(fn(_gen(1)), fn(_gen(1)))
        assert not torch.equal(fn(_gen(1)).float(), fn(_gen(2)).float())
    assert torch.equal(torch.get_rng_state(), state)


def test_gradcheck_soft_paths_float64():
    x = torch.randn(3, 5, dtype=torch.float64, generator=_gen(17), requires_grad=True)
    tau = torch.tensor([[0.7], [1.3], [0.4]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, t: gk.gumbel_softmax(a, t, generator=_gen(18)), (x, tau))
    assert torch.autograd.gradcheck(lambda a: gk.tempered_softmax(a, 0.3, dim=0), (x,))


def test_tempered_softmax_is_deterministic_softmax():
    x = torch.randn(5, 7, generator=_gen(19))
    assert torch.allclose(gk.tempered_softmax(x, 0.3), torch.softmax(x / 0.3, -1))
    # the "constant average" pitfall: tau=1 returns the probabilities, not a sample
    assert torch.allclose(gk.tempered_softmax(torch.log(torch.tensor([0.3, 0.7]))), torch.tensor([0.3, 0.7]))


@pytest.fixture(scope="module")
def compiled():
    torch._dynamo.reset()
    soft = torch.compile(lambda x: gk.gumbel_softmax(x, 0.5), fullgraph=True)
    st = torch.compile(lambda x: gk.sample(x, "st_gumbel", 0.5), fullgraph=True)
    return soft, st


def test_torch_compile_fullgraph(compiled):
    soft, st = compiled
    x = torch.randn(64, 10, requires_grad=True)
    y = soft(x)
    assert y.shape == x.shape and torch.allclose(y.sum(-1), torch.ones(64))
    h = st(x)
    assert torch.all((h == 0) | (h == 1)) and torch.all(h.sum(-1) == 1)
    (h * torch.arange(10.0)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------ drop-in signature, empty batches


def test_signature_is_torchs_plus_keyword_generator():
    import inspect

    ours = inspect.signature(gk.gumbel_softmax).parameters
    theirs = inspect.signature(torch.nn.functional.gumbel_softmax).parameters
    assert list(ours)[:5] == list(theirs) == ["logits", "tau", "hard", "eps", "dim"]
    assert all(ours[n].default == theirs[n].default for n in theirs if n != "logits")
    assert ours["generator"].kind is inspect.Parameter.KEYWORD_ONLY


def test_eps_is_accepted_positionally_and_by_keyword_and_dim_is_the_fifth_argument():
    import warnings

    x = torch.randn(4, 6, 3, generator=_gen(40))
    ref = gk.gumbel_softmax(x, 0.5, True, dim=1, generator=_gen(41))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default eps never warns
        assert torch.equal(gk.gumbel_softmax(x, 0.5, True, 1e-10, 1, generator=_gen(41)), ref)
        assert torch.equal(gk.gumbel_softmax(x, 0.5, True, eps=1e-10, dim=1, generator=_gen(41)), ref)
    assert torch.all(ref.sum(1) == 1)
    with pytest.warns(DeprecationWarning, match="`eps` parameter is deprecated and has no effect"):
        y = gk.gumbel_softmax(x, 0.5, True, 1e-3, 1, generator=_gen(41))
    assert torch.equal(y, ref)  # ignored, as torch ignores it
    with pytest.warns(DeprecationWarning, match="eps"):
        gk.gumbel_softmax(x, eps=0.1, generator=_gen(41))
    # torch's own positional call style works unchanged
    soft = gk.gumbel_softmax(x, 0.7, False, 1e-10, -1, generator=_gen(42))
    assert torch.allclose(soft, gk.gumbel_softmax(x, tau=0.7, generator=_gen(42)))


def test_gumbel_topk_on_an_empty_batch_returns_an_empty_int64_tensor():
    idx = gk.gumbel_topk(torch.zeros(0, 5), 2)
    assert idx.shape == (0, 2) and idx.dtype == torch.int64
    assert gk.gumbel_topk(torch.zeros(3, 0, 5), 4, dim=2).shape == (3, 0, 4)
    assert gk.gumbel_max(torch.zeros(0, 5)).shape == (0,)
    assert gk.gumbel_softmax(torch.zeros(0, 5), hard=True).shape == (0, 5)
    with pytest.raises(ValueError, match="k <= 5"):
        gk.gumbel_topk(torch.zeros(0, 5), 6)
