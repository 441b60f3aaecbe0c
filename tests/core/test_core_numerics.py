"""The unchecked building blocks in gumbelkit._core.numerics: argmax and its one-hot without ATen's argmax.

``argmax_one_hot`` must be bit-for-bit ``one_hot(argmax(z))`` and ``argmax_index_`` must be
``argmax(z, keepdim=True)``: ties to the lowest index, any dim, any layout, any dtype, and the same
answer on every fallback (torch.func transforms, small or empty input, other dims). The hard
samplers and Gumbel-Max take their results from them, so their samples are checked against
argmax of the same perturbed logits.
"""

import pytest
import torch

import gumbelkit as gk
from gumbelkit._core import numerics as _internals
from gumbelkit._core.numerics import argmax_index_, argmax_one_hot, one_hot

NEG_INF = float("-inf")


def _reference(z, dim, dtype=None):
    return one_hot(z, z.argmax(dim, keepdim=True), dim, dtype)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("shape", "dim"),
    [((50, 7), 1), ((50, 7), 0), ((6, 5, 9), 0), ((6, 5, 9), 1), ((6, 5, 9), 2), ((13,), 0), ((4, 3, 5, 5), 1)],
)
def test_equals_argmax_and_scatter_with_many_ties(shape, dim):
    # values in {0, 1, 2}: most rows have several maxima, which must go to the lowest index
    z = torch.randint(0, 3, shape, generator=_gen(0)).float()
    hot = argmax_one_hot(z, dim)
    assert torch.equal(hot, _reference(z, dim))
    assert bool((hot.sum(dim) == 1).all())
    ties = ((z == z.amax(dim, keepdim=True)).sum(dim) > 1).sum()
    assert int(ties) > 0  # the test exercises the tie fix-up


def test_any_layout_gives_the_same_one_hot_in_the_same_layout():
    z = torch.randint(0, 4, (3, 8, 5, 6), generator=_gen(1)).float()
    expected = _reference(z, 1)
    for view in (z.contiguous(memory_format=torch.channels_last), z.transpose(2, 3).contiguous().transpose(2, 3)):
        hot = argmax_one_hot(view, 1)
        assert torch.equal(hot, expected)
        assert hot.stride() == torch.empty_like(view).stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_dtype(dtype):
    z = torch.randn(40, 30, generator=_gen(2), dtype=torch.float64)
    hot = argmax_one_hot(z, 1, dtype)
    assert hot.dtype == dtype
    assert torch.equal(hot, _reference(z, 1, dtype))


def test_masked_entries_and_a_nan_row_follow_argmax():
    z = torch.randn(5, 9, generator=_gen(3))
    z[0, :8] = NEG_INF  # one class left
    z[1, 2] = float("nan")  # argmax reports a NaN's position (the public functions reject NaN first)
    z[2, 4:] = NEG_INF
    hot = argmax_one_hot(z, 1)
    assert torch.equal(hot, _reference(z, 1))
    assert hot[0, 8] == 1 and hot[1, 2] == 1


def test_fallbacks_give_the_same_answer():
    z = torch.randint(0, 3, (7, 6), generator=_gen(4)).float()
    batched = torch.vmap(lambda r: argmax_one_hot(r, 0))(z)  # under a transform: argmax + scatter
    assert torch.equal(batched, _reference(z, 1))
    empty = torch.empty(0, 6)
    assert argmax_one_hot(empty, 1).shape == (0, 6)


@pytest.mark.parametrize("dim", [-1, 1])
def test_hard_samplers_equal_argmax_of_the_same_perturbed_logits(dim):
    # many equal logits make ties of the noise's cell grid possible; the sample must be argmax's
    x = torch.zeros(64, 300, 2) if dim == 1 else torch.zeros(128, 300)
    g = gk.gumbel_noise(x.shape, generator=_gen(5))
    expected = _reference(x + g, dim)
    for requires_grad in (False, True):
        xi = x.clone().requires_grad_(requires_grad)
        y = gk.gumbel_softmax(xi, 0.5, True, dim=dim, generator=_gen(5))
        assert torch.equal(y.detach(), expected)


@pytest.fixture(params=["fast path from 1 element", "default threshold"])
def threshold(request, monkeypatch):
    if request.param.startswith("fast"):
        monkeypatch.setattr(_internals, "_FAST_ARGMAX_MIN", 1)
    return request.param


@pytest.mark.parametrize(
    ("shape", "dim"),
    [
        ((50, 7), 1),
        ((50, 7), -1),
        ((50, 7), 0),
        ((6, 5, 9), 2),
        ((6, 5, 9), 1),
        ((13,), 0),
        ((4, 6, 8, 8), 1),  # categories at dim=1, 64 after them: the (outer, K, inner) product
        ((2, 5, 3, 64), 2),
        ((3, 70), 0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_argmax_index_equals_argmax_with_many_ties(threshold, shape, dim, dtype):
    z = torch.randint(0, 3, shape, generator=_gen(6)).to(dtype)
    index = argmax_index_(z.clone(), dim)
    assert index.dtype == torch.int64
    assert torch.equal(index, z.argmax(dim, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_argmax_index_of_half_precision_is_exact_beyond_their_integer_range(threshold, dtype):
    z = torch.randn(100, 3000, generator=_gen(10)).to(dtype)
    assert torch.equal(argmax_index_(z.clone(), 1), z.argmax(1, keepdim=True))
    assert torch.equal(_internals.argmax_index(z, 1), z.argmax(1, keepdim=True))


def test_argmax_index_leaves_its_input_alone(threshold):
    z = torch.randn(200, 400, generator=_gen(11))
    before = z.clone()
    assert torch.equal(_internals.argmax_index(z, 1), z.argmax(1, keepdim=True))
    assert torch.equal(z, before)


def test_argmax_index_of_a_large_buffer_and_a_nan_row(threshold):
    z = torch.randn(300, 1000, generator=_gen(7))
    z[5, 10] = z[5, 900] = z[5].max() + 1  # a tie on the fast path
    z[7, 3] = float("nan")  # argmax's NaN position (the public functions reject NaN before this)
    assert torch.equal(argmax_index_(z.clone(), 1), z.argmax(1, keepdim=True))
    z[7, 3] = 0.0
    assert torch.equal(argmax_index_(z.clone(), 1), z.argmax(1, keepdim=True))
    c = torch.randn(4, 300, 8, 8, generator=_gen(9))
    c[1, 7, 2, 3] = c[1, 200, 2, 3] = c[1, :, 2, 3].max() + 1  # a tied column at dim=1
    assert torch.equal(argmax_index_(c.clone(), 1), c.argmax(1, keepdim=True))
    t = z.t()  # not contiguous: ATen's argmax
    assert torch.equal(argmax_index_(t.clone(memory_format=torch.preserve_format), 0), t.argmax(0, keepdim=True))


def test_gumbel_max_equals_argmax_of_the_same_perturbed_logits(threshold):
    x = torch.zeros(200, 500)  # equal logits: ties of the noise grid are possible
    x[:, :3] = torch.tensor([2.0, 1.0, float("-inf")])
    g = gk.gumbel_noise(x.shape, generator=_gen(8))
    assert torch.equal(gk.gumbel_max(x, generator=_gen(8)), (x + g).argmax(-1))
    for method in ("st", "reinmax"):
        y = gk.sample(x.clone().requires_grad_(), method, generator=_gen(8))
        assert torch.equal(y.detach(), _reference(x + g, -1))
    c = x.t().reshape(1, 500, 2, 100)  # categories at dim=1 of a contiguous B x K x H x W
    gc = gk.gumbel_noise(c.shape, generator=_gen(8))
    assert torch.equal(gk.gumbel_max(c, 1, generator=_gen(8)), (c + gc).argmax(1))
