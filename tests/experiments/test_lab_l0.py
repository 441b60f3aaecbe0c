"""L0 pruning: the penalty's closed form, the paper's initial gates, magnitude pruning, the error
and weight counts by hand, and the data it needs (labels)."""

from __future__ import annotations

import math

import pytest
import torch
from experiments.config import UserError
from experiments.data import load_dataset
from lab_helpers import run, write_idx

from experiments import l0 as L


def test_the_expected_l0_is_the_closed_form_and_the_probability_of_an_open_gate():
    torch.manual_seed(0)
    net = L.L0MLP([5, 4, 3, 2], gated=True)
    with torch.no_grad():
        for g in net.l0_gates():
            g.log_alpha.copy_(torch.randn(g.n_gates) * 2)
    shift = 2 / 3 * math.log(0.1 / 1.1)
    want = sum(
        f / (1 + math.exp(-(a - shift))) for g, f in zip(net.l0_gates(), (4, 3, 2)) for a in g.log_alpha.tolist()
    )
    got = net.expected_l0()
    assert math.isclose(float(got.detach()), want, rel_tol=1e-6)
    got.backward()
    p = torch.sigmoid(net.l0_gates()[0].log_alpha.detach() - shift)
    torch.testing.assert_close(net.l0_gates()[0].log_alpha.grad, 4 * p * (1 - p))
    gate = net.l0_gates()[1]  # |freq - P(z != 0)| < 4 sd: a false failure has probability < 1e-4 (fixed seed)
    freq = (gate.gate((20_000,), generator=torch.Generator().manual_seed(1)) != 0).double().mean(0)
    assert float((freq - gate.distribution().prob_nonzero().detach().double()).abs().max()) < 4 * math.sqrt(
        0.25 / 20_000
    )
    fresh = L.L0MLP([6, 4, 2], gated=True).l0_gates()  # the paper's drop rates: 0.2 inputs, 0.5 hidden
    torch.testing.assert_close(fresh[0].log_alpha.detach(), torch.full((6,), math.log(4.0)))
    torch.testing.assert_close(fresh[1].log_alpha.detach(), torch.zeros(4))


def test_magnitude_pruning_keeps_the_largest_columns_and_they_stay_pruned():
    torch.manual_seed(0)
    net = L.L0MLP([8, 6, 5, 3], gated=False)
    masks = L.magnitude_masks(net, [3, 2, 5])
    for layer, mask, k in zip(net.linears(), masks, (3, 2, 5)):
        norms = layer.weight.detach().norm(dim=0)
        assert int(mask.sum()) == k
        assert not (mask == 0).any() or float(norms[mask == 1].min()) >= float(norms[mask == 0].max())
    for buf, mask in zip(net.masks(), masks):
        buf.copy_(mask)
    assert net.units_kept() == [3, 2, 5]
    x = torch.randn(4, 8)
    x2 = x.clone()
    x2[:, masks[0] == 0] = 100.0  # a pruned input has no effect
    net.eval()
    torch.testing.assert_close(net(x), net(x2))
    tie = L.L0MLP([4, 2], gated=False)
    with torch.no_grad():
        tie.linears()[0].weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    assert L.magnitude_masks(tie, [2])[0].tolist() == [1.0, 1.0, 0.0, 0.0]  # ties: the lower index


def test_counts_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    assert (
        L.error_rate(logits, torch.tensor([1, 0, 2, 0])) == 0.0
        and L.error_rate(logits, torch.tensor([0, 0, 2, 1])) == 0.5
    )
    assert L.weights_kept([784, 300, 100], 10) == 784 * 300 + 300 * 100 + 100 * 10
    net = L.L0MLP([4, 3, 2], gated=True)
    with torch.no_grad():  # the test gate 1.2 sigmoid(a) - 0.1 is 0 for a <= log(1/11)
        net.l0_gates()[0].log_alpha.copy_(torch.tensor([-2.5, -2.3, 5.0, -10.0]))
        net.l0_gates()[1].log_alpha.copy_(torch.tensor([-3.0, -3.0, -3.0]))
    assert net.units_kept() == [2, 0]


def test_labels_follow_their_images_and_data_without_labels_is_refused(tmp_path, capsys):
    ds = load_dataset(f"idx:{write_idx(tmp_path / 'a', n_train=40, n_test=10)}")
    assert ds.has_labels and len(ds.train_labels) == len(ds.train) and len(ds.test_labels) == 10
    folder = write_idx(tmp_path / "b", labels=False)
    rc, _, err = run(["l0", "--data", f"idx:{folder}", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "no class labels" in err
    (folder / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3]) + bytes(3))
    with pytest.raises(UserError, match="has 3 labels for 60 images"):
        load_dataset(f"idx:{folder}")
    cfg = L.L0Config.make(lambdas="3,1,3", methods="magnitude,l0")
    assert cfg.lambdas == [1.0, 3.0] and cfg.methods == ["l0", "magnitude"]
