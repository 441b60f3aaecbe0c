"""The validation switch (gk.set_validation / get_validation / validation) and the "device" mode on the CPU.

"raise" (the CPU default) keeps the synchronous raising checks; "device" never reads a value to the
host and marks a bad row in the output instead (NaN, or -1 for an index); "off" checks nothing.
Checks that need no tensor value raise in every mode.
"""

import math

import pytest
import torch

import gumbelkit as gk
from gumbelkit._core.policy import check_mode, skip_value_checks

NAN, NEG_INF, POS_INF = float("nan"), float("-inf"), float("inf")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bad_logits() -> torch.Tensor:
    """Row 0: a NaN; row 1: fine; row 2: all masked; row 3: +inf; row 4: fine with a masked class."""
    x = torch.randn(5, 6, generator=_gen(1))
    x[0, 2] = NAN
    x[2] = NEG_INF
    x[3, 4] = POS_INF
    x[4, 1] = NEG_INF
    return x


BAD, GOOD = [0, 2, 3], [1, 4]


def test_switch_round_trips_and_rejects_unknown_modes():
    assert gk.get_validation() == "auto"
    for mode in ("raise", "device", "off", "auto"):
        gk.set_validation(mode)
        assert gk.get_validation() == mode
    with pytest.raises(gk.GumbelkitValueError, match=r"set_validation: expected mode in .*got 'strict'"):
        gk.set_validation("strict")
    with pytest.raises(ValueError, match="validation: expected mode"), gk.validation(None):
        pass
    assert gk.get_validation() == "auto"


def test_context_manager_nests_and_restores_on_error():
    with gk.validation("device"):
        assert gk.get_validation() == "device"
        with pytest.raises(RuntimeError, match="boom"), gk.validation("off"):
            assert gk.get_validation() == "off" and skip_value_checks()
            raise RuntimeError("boom")
        assert gk.get_validation() == "device" and not skip_value_checks()
    assert gk.get_validation() == "auto"


def test_check_mode_resolves_auto_by_device():
    cpu = torch.zeros(3)
    assert check_mode(cpu) == "raise" and check_mode() == "raise"
    with gk.validation("device"):
        assert check_mode(cpu) == "device"
    with gk.validation("off"):
        assert check_mode(cpu) == "off"
    if torch.cuda.is_available():
        assert check_mode(cpu.cuda()) == "device"
        with gk.validation("raise"):
            assert check_mode(cpu.cuda()) == "raise"


@pytest.mark.parametrize("mode", ["auto", "raise"])
def test_raise_mode_raises_on_the_cpu(mode, rejects_bad_logits):
    with gk.validation(mode):
        rejects_bad_logits(lambda x: gk.gumbel_softmax(x, 0.5, hard=True))
        rejects_bad_logits(gk.gumbel_max)
        with pytest.raises(ValueError, match="tau > 0"):
            gk.gumbel_softmax(torch.zeros(2, 3), tau=torch.tensor([[1.0], [0.0]]))
        with pytest.raises(ValueError, match="k <= 1"):
            gk.gumbel_topk(torch.tensor([[0.0, NEG_INF, NEG_INF]]), 2)


def test_checks_that_need_no_values_raise_in_every_mode():
    for mode in ("device", "off"):
        with gk.validation(mode):
            with pytest.raises(ValueError, match="tau > 0"):
                gk.gumbel_softmax(torch.zeros(2, 3), tau=0.0)
            with pytest.raises(IndexError, match="dim"):
                gk.gumbel_softmax(torch.zeros(2, 3), dim=2)
            with pytest.raises(TypeError, match="floating dtype"):
                gk.gumbel_max(torch.zeros(2, 3, dtype=torch.long))
            with pytest.raises(ValueError, match="expected k <= 3"):
                gk.gumbel_topk(torch.zeros(2, 3), 4)


def _assert_bad_rows_nan(y: torch.Tensor, dim: int = -1) -> None:
    rows = y.detach().movedim(dim, -1)
    assert bool(rows[BAD].isnan().all()), rows
    assert not bool(rows[GOOD].isnan().any()), rows


@pytest.mark.parametrize("hard", [False, True])
def test_device_mode_gumbel_softmax_gives_nan_rows_and_keeps_good_rows(hard):
    x = _bad_logits()
    with gk.validation("device"):
        y = gk.gumbel_softmax(x, 0.5, hard=hard, generator=_gen(2))
    _assert_bad_rows_nan(y)
    fixed = x.clone()
    fixed[BAD] = 0.0
    ref = gk.gumbel_softmax(fixed, 0.5, hard=hard, generator=_gen(2))  # the same noise, in raise mode
    assert torch.allclose(y[GOOD], ref[GOOD], rtol=1e-5, atol=1e-7)
    if hard:
        assert bool((y[GOOD].sum(-1) == 1).all())
    # the categories at dim=0 of a transposed view: the same rows marked
    with gk.validation("device"):
        yt = gk.gumbel_softmax(x.t(), 0.5, hard=hard, dim=0, generator=_gen(2))
    _assert_bad_rows_nan(yt, dim=0)


def test_device_mode_every_sample_method_marks_bad_rows():
    x = _bad_logits()
    for method in gk.METHODS:
        leaf = x.clone().requires_grad_()
        with gk.validation("device"):
            y = gk.sample(leaf, method, tau=0.5, generator=_gen(3))
        _assert_bad_rows_nan(y)
        (y[GOOD] * torch.randn(len(GOOD), 6, generator=_gen(4))).sum().backward()
        assert bool(torch.isfinite(leaf.grad[GOOD]).all()), method


def test_device_mode_tensor_tau_out_of_range_marks_its_rows():
    x = torch.randn(3, 4, generator=_gen(5))
    tau = torch.tensor([[0.5], [0.0], [NAN]])
    with gk.validation("device"):
        y = gk.gumbel_softmax(x, tau, generator=_gen(6))
    assert not bool(y[0].isnan().any()) and bool(y[1:].isnan().all())


def test_device_mode_index_samplers_return_minus_one():
    x = _bad_logits()
    with gk.validation("device"):
        z = gk.gumbel_max(x, generator=_gen(7))
        top = gk.gumbel_topk(x, 3, generator=_gen(7))
        short = gk.gumbel_topk(torch.tensor([[0.0, NEG_INF, 1.0, NEG_INF]]), 3, generator=_gen(7))
    assert z[BAD].tolist() == [-1, -1, -1] and bool((z[GOOD] >= 0).all())
    assert bool((top[BAD] == -1).all()) and bool((top[GOOD] >= 0).all())
    assert sorted(short[0, :2].tolist()) == [0, 2] and short[0, 2] == -1  # 2 unmasked classes, k = 3


def test_device_mode_kl_and_tempered_softmax_nan_rows():
    x = _bad_logits()
    with gk.validation("device"):
        kl = gk.kl_categorical(x, torch.zeros(6))
        soft = gk.tempered_softmax(x, 0.5)
    assert bool(kl[BAD].isnan().all()) and bool(torch.isfinite(kl[GOOD]).all())
    assert math.isclose(float(kl[1]), float(gk.kl_categorical(x[1], torch.zeros(6))), rel_tol=1e-6)
    _assert_bad_rows_nan(soft)


def test_device_mode_quantizer_codes_minus_one_and_uncounted():
    torch.manual_seed(0)
    q = gk.nn.GumbelQuantizer(4, n_codes=8, embedding_dim=3)
    x = torch.randn(5, 4)
    x[2, 0] = NAN
    with gk.validation("device"):
        out = q(x)
    assert out.codes[2] == -1 and bool((out.codes[[0, 1, 3, 4]] >= 0).all())
    assert bool(out.z_q[2].isnan().all()) and int(q.code_counts.sum()) == 4


def test_off_mode_does_not_check_values():
    x = torch.tensor([[0.0, NAN]])
    with gk.validation("off"):
        gk.gumbel_softmax(x)  # no error: whatever the arithmetic gives
        gk.gumbel_max(x)
    with pytest.raises(ValueError, match="NaN"):
        gk.gumbel_softmax(x)
