"""The sampler as torch.library custom ops: what torch.compile calls instead of tracing the noise.

The ops are checked eagerly against the formula (the same eager sampler runs inside, seeded from
the seed tensor), with torch.library.opcheck (fake tensors, autograd registration, schema), and
once under torch.compile(fullgraph=True) in a small model.
"""

import pytest
import torch

import gumbelkit as gk

OPS = torch.ops.gumbelkit


def _seed(v):
    return torch.tensor([v], dtype=torch.int64)


def test_ops_are_the_eager_sampler_seeded_from_the_seed_tensor():
    x = torch.randn(3, 6, 4, 4)
    y = OPS.gumbel_softmax_soft(x, _seed(7), 0.5, 1)
    g = gk.gumbel_noise(x.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(y, torch.softmax((x + g) / 0.5, 1), atol=1e-6)
    out, soft = OPS.gumbel_softmax_hard(x, _seed(7), 0.5, 1)
    assert torch.allclose(soft, y, atol=1e-6)
    assert torch.equal(out, torch.zeros_like(x).scatter_(1, (x + g).argmax(1, keepdim=True), 1.0))
    assert not torch.equal(OPS.gumbel_softmax_soft(x, _seed(8), 0.5, 1), y)


@pytest.mark.parametrize("hard", [False, True])
def test_op_gradient_is_the_soft_gradient(hard):
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 7, dtype=torch.float64)
    res = (OPS.gumbel_softmax_hard if hard else OPS.gumbel_softmax_soft)(x, _seed(3), 0.7, 1)
    out = res[0] if hard else res
    (out * w).sum().backward()
    g = gk.gumbel_noise(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xr = x.detach().clone().requires_grad_()
    (torch.softmax((xr + g) / 0.7, 1) * w).sum().backward()
    assert torch.allclose(x.grad, xr.grad)


def test_ops_reject_bad_logits_with_the_library_message():
    x = torch.randn(2, 3)
    x[0, 1] = float("nan")
    with pytest.raises(ValueError, match="gumbel_softmax"):
        OPS.gumbel_softmax_soft(x, _seed(1), 1.0, 1)


@pytest.mark.parametrize("op", ["gumbel_softmax_soft", "gumbel_softmax_hard"])
def test_opcheck(op):
    x = torch.randn(4, 5, 3, requires_grad=True)
    torch.library.opcheck(getattr(OPS, op), (x, _seed(2), 0.5, 1), test_utils=("test_schema", "test_faketensor"))
    y = torch.softmax(torch.randn(4, 5), 1)
    torch.library.opcheck(OPS.softmax_backward, (y, torch.randn(4, 5), 0.5, 1, torch.float16))


def test_compiled_graph_calls_the_ops_and_trains():
    graphs = []

    def backend(gm, example_inputs):  # Dynamo's graph as traced; run as is (no Inductor: fast)
        graphs.append(gm.code)
        return gm.forward

    torch.manual_seed(0)
    enc, dec = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 3, 1)

    def model(x, hard):
        return dec(gk.gumbel_softmax(enc(x), 0.5, hard, dim=1))

    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(2, 3, 4, 4)
    for hard, op in ((False, "gumbel_softmax_soft"), (True, "gumbel_softmax_hard")):
        out = compiled(x, hard)
        out.square().mean().backward()
        assert f"gumbelkit.{op}" in graphs[-1]
        assert torch.isfinite(out).all() and enc.weight.grad.abs().sum() > 0
        enc.weight.grad = None
    gm = torch.compile(lambda a: gk.gumbel_softmax(a, 0.5, True, dim=1), fullgraph=True, backend="aot_eager")
    a = torch.randn(2, 8, 4, 4, requires_grad=True)
    y = gm(a)
    assert bool((y.sum(1) == 1).all()) and bool(((y == 0) | (y == 1)).all())
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.allclose(a.grad.sum(1), torch.zeros(2, 4, 4), atol=1e-6)


@pytest.mark.parametrize("hard", [False, True])
def test_ops_follow_the_layout_they_are_given(hard):
    # Under compile the ops are flexible-layout: Inductor may hand them channels-last logits (a
    # convolution's output) and takes the results in that layout, with no copies around the call.
    # Drawn in memory order: the values are those of the eager sampler on the permuted view.
    x = torch.randn(2, 6, 3, 5)
    xl = x.contiguous(memory_format=torch.channels_last)
    res = (OPS.gumbel_softmax_hard if hard else OPS.gumbel_softmax_soft)(xl, _seed(11), 0.5, 1)
    outs = res if hard else (res,)
    for t in outs:
        assert t.stride() == xl.stride()
    soft = outs[-1]
    # the same draw as the eager ops on the memory-order view (N, H, W, C) along its last dim
    view = xl.permute(0, 2, 3, 1)
    g = gk.gumbel_noise(view.shape, generator=torch.Generator().manual_seed(11))
    expected = torch.softmax((view + g) / 0.5, -1).permute(0, 3, 1, 2)
    assert torch.allclose(soft, expected, atol=1e-6)
    if hard:
        assert torch.equal(outs[0], torch.zeros_like(x).scatter_(1, expected.argmax(1, keepdim=True), 1.0))
    # the backward op: laid out like y whatever the gradient's layout, and the softmax gradient
    w = torch.randn(2, 6, 3, 5)
    gx = OPS.softmax_backward(soft, w, 0.5, 1, torch.float32)
    assert gx.stride() == soft.stride()
    assert torch.allclose(gx, soft * (w - (soft * w).sum(1, keepdim=True)) / 0.5, atol=1e-6)
    for op, args in (
        (OPS.gumbel_softmax_hard if hard else OPS.gumbel_softmax_soft, (xl, _seed(11), 0.5, 1)),
        (OPS.softmax_backward, (soft, w, 0.5, 1, torch.float32)),
    ):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
