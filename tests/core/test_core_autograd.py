"""The blocked softmax for categories that are not the innermost dim (B x K x H x W with dim=1).

Checked against the plain formula softmax((x + g) / tau) with the same noise, one-hot at the
first maximum (ties included), across block sizes (one block per slab, and slabs split into
several blocks merged like an online softmax), masked classes, tiny tau, half precision, and the
layout guarantee: the same generator state gives the same sample whatever the memory layout.
"""

import pytest
import torch

import gumbelkit as gk
from gumbelkit._core import autograd as _autograd
from gumbelkit._core import numerics as _internals

NEG_INF = float("-inf")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=["one block per slab group", "slabs split into blocks"])
def block(request, monkeypatch):
    if request.param == "slabs split into blocks":
        # 3 x 16 x 64 slabs of 3072 elements in blocks of 512: six blocks per slab, merged online
        monkeypatch.setattr(_internals, "_VBLOCK", 512)
        monkeypatch.setattr(_internals, "_VBLOCK_GRAD", 512)
    return request.param


def _reference(x, tau, hard, dim, seed):
    g = gk.gumbel_noise(
        x.shape, generator=_gen(seed), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32
    )
    z = x.detach().to(g.dtype) + g
    y = torch.softmax(z / tau, dim)
    if hard:
        return torch.zeros_like(y).scatter_(dim, z.argmax(dim, keepdim=True), 1.0), y
    return y, y


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_dim1_matches_the_formula_and_its_gradient(block, hard, tau):
    x = torch.randn(2, 16, 8, 8, generator=_gen(1)).requires_grad_()
    w = torch.randn(2, 16, 8, 8, generator=_gen(2))
    y = gk.gumbel_softmax(x, tau, hard, dim=1, generator=_gen(3))
    out, _ = _reference(x, tau, hard, 1, 3)
    if hard:
        assert torch.equal(y, out)
    else:
        assert torch.allclose(y, out, atol=1e-6)
    (y * w).sum().backward()
    xr = x.detach().clone().requires_grad_()
    g = gk.gumbel_noise(x.shape, generator=_gen(3))
    (torch.softmax((xr + g) / tau, 1) * w).sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)


def test_blocked_softmax_is_used_for_dim1(monkeypatch):
    calls = []
    real = _internals.vertical_softmax_
    monkeypatch.setattr(_autograd, "vertical_softmax_", lambda *a: calls.append(a[1]) or real(*a))
    for shape, dim in (((2, 5, 8, 8), 1), ((2, 5, 4, 4), 1), ((2, 64, 5), -1)):  # 16 after dim: ATen's kernels
        gk.gumbel_softmax(torch.randn(shape, requires_grad=True), 1.0, True, dim=dim)
    assert calls == [1]


def test_ties_go_to_the_lowest_index_across_blocks(monkeypatch):
    monkeypatch.setattr(_internals, "_VBLOCK", 4 * 64)  # 4 category rows per block
    z = torch.zeros(2, 10, 64)
    z[0, 2, :] = 5.0
    z[0, 7, :] = 5.0  # tie in another block
    z[1, 8, :3] = 3.0
    z[1, 9, :3] = 3.0  # tie inside one block
    z[1, 0, 3:] = 1.0
    h = _internals.vertical_softmax_(z.clone(), 1, 1.0, True)
    expected = torch.zeros_like(z).scatter_(1, z.argmax(1, keepdim=True), 1.0)
    assert torch.equal(h, expected)
    assert bool((h.sum(1) == 1).all())


def test_masked_classes_and_columns_masked_in_a_whole_block(block):
    x = torch.randn(3, 16, 8, 8, generator=_gen(4))
    x[:, :9, :, :3] = NEG_INF  # whole blocks of these columns are masked when slabs are split
    x[0, 12] = NEG_INF
    x.requires_grad_()
    for hard in (False, True):
        y = gk.gumbel_softmax(x, 0.5, hard, dim=1, generator=_gen(5))
        (y * torch.randn_like(y)).sum().backward()
        m = torch.isneginf(x.detach())
        assert torch.isfinite(y).all() and bool((y[m] == 0).all())
        assert torch.isfinite(x.grad).all() and bool((x.grad[m] == 0).all())
        assert torch.allclose(y.sum(1), torch.ones(3, 8, 8))
        x.grad = None


def test_tiny_tau_gives_the_one_hot_and_no_nan(block):
    x = torch.randn(3, 16, 8, 8, generator=_gen(6)).requires_grad_()
    y = gk.gumbel_softmax(x, 1e-30, False, dim=1, generator=_gen(7))
    hard = gk.gumbel_softmax(x.detach(), 1.0, True, dim=1, generator=_gen(7))
    assert torch.equal(y.detach(), hard)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_half_precision_input(block):
    x = torch.randn(3, 16, 8, 8, generator=_gen(8)).half()
    y = gk.gumbel_softmax(x, 0.7, False, dim=1, generator=_gen(9))
    ref, _ = _reference(x.float(), 0.7, False, 1, 9)
    assert y.dtype == torch.float16 and torch.allclose(y.float(), ref, atol=2e-3)
    h = gk.gumbel_softmax(x, 0.7, True, dim=1, generator=_gen(9))
    assert h.dtype == torch.float16 and bool((h.sum(1) == 1).all())


@pytest.mark.parametrize("hard", [False, True])
def test_same_generator_same_sample_whatever_the_layout(block, hard):
    x = torch.randn(3, 16, 8, 8, generator=_gen(10))
    w = torch.randn(3, 16, 8, 8, generator=_gen(11))
    layouts = {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "transposed": x.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0),
    }
    results = []
    for xl in layouts.values():
        xl = xl.clone().requires_grad_()
        y = gk.gumbel_softmax(xl, 0.5, hard, dim=1, generator=_gen(12))
        (y * w).sum().backward()
        results.append((y.detach(), xl.grad))
    for y, g in results[1:]:
        assert torch.equal(y, results[0][0])
        assert torch.allclose(g, results[0][1], atol=1e-6)


@pytest.mark.parametrize("overwrite", [False, True])
def test_blocked_softmax_backward_matches_atens(block, overwrite):
    y = torch.softmax(torch.randn(3, 16, 64, generator=_gen(13)), 1)
    v = torch.randn(3, 16, 64, generator=_gen(14))
    expected = torch._softmax_backward_data(v, y, 1, torch.float32)
    got = _internals.vertical_softmax_grad(y.clone(), v, 1, overwrite_y=overwrite)
    assert torch.allclose(got, expected, atol=1e-6)


def test_large_k_backward_takes_the_blocked_kernel(monkeypatch):
    monkeypatch.setattr(_autograd, "_VGRAD_MIN_K", 8)
    monkeypatch.setattr(_autograd, "_VGRAD_MIN_INNER", 64)
    calls = []
    real = _internals.vertical_softmax_grad
    monkeypatch.setattr(_autograd, "vertical_softmax_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 16, 8, 8, generator=_gen(15)).requires_grad_()
    w = torch.randn(2, 16, 8, 8, generator=_gen(16))
    for hard in (False, True):
        y = gk.gumbel_softmax(x, 0.5, hard, dim=1, generator=_gen(17))
        (y * w).sum().backward()
        g = gk.gumbel_noise(x.shape, generator=_gen(17))
        xr = x.detach().clone().requires_grad_()
        (torch.softmax((xr + g) / 0.5, 1) * w).sum().backward()
        assert torch.allclose(x.grad, xr.grad, atol=1e-5)
        x.grad = None
    assert len(calls) == 2


def test_retain_graph_keeps_the_saved_softmax():
    x = torch.randn(2, 16, 8, 8, generator=_gen(18)).requires_grad_()
    y = gk.gumbel_softmax(x, 0.5, True, dim=1, generator=_gen(19))
    loss = (y * torch.randn_like(y)).sum()
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    assert torch.equal(g1, g2)
