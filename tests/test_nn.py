import pytest
import torch

import gumbelkit as gk
from gumbelkit import schedules
from gumbelkit.nn import GumbelSoftmax


def test_in_sequential_one_hot_and_trainable():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 10), GumbelSoftmax("st_gumbel", tau=0.5), torch.nn.Linear(10, 1))
    y = net(torch.randn(32, 8))
    y.sum().backward()
    assert net[0].weight.grad.abs().sum() > 0
    h = net[1](torch.randn(4, 10))
    assert torch.all(h.sum(-1) == 1)


def test_schedule_advances_in_training_only_and_is_saved():
    mod = GumbelSoftmax("gumbel_softmax", tau=schedules.exponential(1.0, 0.1, 0.2, 2))
    x = torch.randn(3, 5)
    taus = []
    for _ in range(4):
        taus.append(mod.current_tau())
        mod(x)
    assert taus[0] == taus[1] == 1.0 and taus[2] < 1.0
    mod.eval()
    mod(x)
    assert int(mod.step) == 4
    state = mod.state_dict()
    assert int(state["step"]) == 4


def test_learnable_temperature_receives_gradient_and_generator_is_used():
    temp = schedules.LearnableTemperature(1.0)
    mod = GumbelSoftmax("gumbel_softmax", tau=temp, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 4)
    y = mod(x)
    (y[:, 0]).sum().backward()
    assert temp.rho.grad is not None and temp.rho.grad != 0
    mod2 = GumbelSoftmax("gumbel_softmax", tau=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mod2(x), y.detach(), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="expected method"):
        GumbelSoftmax("nope")
    with pytest.raises(ValueError, match="tau > 0"):
        GumbelSoftmax(tau=0.0)
    with pytest.raises(TypeError, match="tau"):
        GumbelSoftmax(tau="hot")
    assert "gumbel_rao" in repr(GumbelSoftmax("gumbel_rao", k=5))


def test_learnable_temperature_with_masked_class_gets_finite_gradient_for_every_method():
    for method in gk.METHODS:
        temp = schedules.LearnableTemperature(0.8)
        mod = GumbelSoftmax(method, tau=temp, generator=torch.Generator().manual_seed(1))
        x = torch.randn(5, 4)
        x[:, 1] = float("-inf")
        x.requires_grad_()
        (mod(x) * torch.arange(4.0)).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.all(x.grad[:, 1] == 0), method
        if method != "reinmax":  # ReinMax passes no gradient to tau (documented)
            assert torch.isfinite(temp.rho.grad), method


def test_non_finite_float_tau_is_rejected():
    for tau in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="expected tau > 0 and finite"):
            GumbelSoftmax(tau=tau)
