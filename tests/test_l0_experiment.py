"""``gumbelkit l0``: the expected-L0 penalty against its closed form, magnitude pruning, the error
rate, config validation, labelled IDX data, and a tiny end-to-end run with resume (synthetic data)."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gumbelkit import cli
from gumbelkit.experiments import data as D
from gumbelkit.experiments import l0 as L
from gumbelkit.experiments._common import UserError
from gumbelkit.experiments._defaults import PRUNING_METHODS

L0, MAGNITUDE = PRUNING_METHODS


def _idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


def _synthetic(folder: Path, n_train: int = 120, n_test: int = 40, *, test: bool = True, labels: bool = True) -> Path:
    """4x4 images of 3 classes: class c lights row c (plus noise); pixel (3, 3) stores 20 * label."""
    rng = np.random.RandomState(0)
    folder.mkdir(parents=True, exist_ok=True)

    def draw(n):
        y = rng.randint(0, 3, size=n).astype(np.uint8)
        x = rng.randint(0, 60, size=(n, 4, 4)).astype(np.uint8)
        x[np.arange(n), y, :] = 250
        x[:, 3, 3] = 20 * y
        return x, y

    x, y = draw(n_train)
    _idx(folder / "train-images-idx3-ubyte.gz", x, gz=True)
    if labels:
        _idx(folder / "train-labels-idx1-ubyte", y)
    if test:
        xt, yt = draw(n_test)
        _idx(folder / "t10k-images-idx3-ubyte", xt)
        if labels:
            _idx(folder / "t10k-labels-idx1-ubyte.gz", yt, gz=True)
    return folder


# --------------------------------------------------------------------------- penalty, pruning, error


def test_expected_l0_equals_the_closed_form():
    torch.manual_seed(0)
    net = L.L0MLP([5, 4, 3, 2], gated=True)
    assert net.gates is not None
    with torch.no_grad():
        for g in net.gates:
            g.log_alpha.copy_(torch.randn(g.n_gates) * 2)
    beta, (gamma, zeta) = 2 / 3, (-0.1, 1.1)
    want = 0.0
    for g, fan_out in zip(net.gates, (4, 3, 2)):
        for a in g.log_alpha.tolist():
            want += fan_out / (1 + math.exp(-(a - beta * math.log(-gamma / zeta))))
    got = net.expected_l0()
    assert math.isclose(float(got.detach()), want, rel_tol=1e-6)
    # the penalty is differentiable in every log alpha, with d/da = fan_out * p (1 - p)
    got.backward()
    a = net.gates[0].log_alpha
    p = torch.sigmoid(a.detach() - beta * math.log(-gamma / zeta))
    torch.testing.assert_close(a.grad, 4 * p * (1 - p))
    # and the closed form is the probability that a sampled gate is non-zero
    gate = net.gates[1]
    z = gate.gate((20_000,), generator=torch.Generator().manual_seed(1))
    freq = (z != 0).double().mean(0)
    exact = gate.distribution().prob_nonzero().detach().double()
    assert float((freq - exact).abs().max()) < 4 * math.sqrt(0.25 / 20_000)


def test_initial_gates_follow_the_papers_drop_rates():
    net = L.L0MLP([6, 4, 2], gated=True)
    assert net.gates is not None
    torch.testing.assert_close(net.gates[0].log_alpha.detach(), torch.full((6,), math.log(0.8 / 0.2)))
    torch.testing.assert_close(net.gates[1].log_alpha.detach(), torch.zeros(4))


def test_magnitude_pruning_keeps_exactly_the_requested_units_and_zeroes_the_others():
    torch.manual_seed(0)
    net = L.L0MLP([8, 6, 5, 3], gated=False)
    keep = [3, 2, 5]
    masks = L.magnitude_masks(net, keep)
    for layer, mask, k in zip(net.layers, masks, keep):
        assert int(mask.sum()) == k and set(mask.unique().tolist()) <= {0.0, 1.0}
        norms = layer.weight.detach().norm(dim=0)
        kept, dropped = norms[mask == 1], norms[mask == 0]
        if dropped.numel():
            assert float(kept.min()) >= float(dropped.max())
    for buf, mask in zip(net.masks(), masks):
        buf.copy_(mask)
    assert net.units_kept() == keep
    net.eval()
    x = torch.randn(4, 8)
    x2 = x.clone()
    x2[:, masks[0] == 0] = 100.0  # a pruned input has no effect
    torch.testing.assert_close(net(x), net(x2))
    # the effective weights of pruned columns are zero, and stay zero while fine-tuning
    ds = D.Dataset(
        "toy",
        torch.rand(30, 8),
        torch.rand(5, 8),
        torch.rand(5, 8),
        (2, 4),
        "toy",
        "shipped",
        [],
        torch.randint(0, 3, (30,)),
        torch.randint(0, 3, (5,)),
        torch.randint(0, 3, (5,)),
    )
    cfg = L.resolve_config({"epochs": 1, "batch_size": 10})
    L._train(net, ds, 2, cfg, 0.0, torch.Generator().manual_seed(0), L.H.progress(1, "t", enabled=False))
    net.eval()
    torch.testing.assert_close(net(x), net(x2))
    with pytest.raises(UserError, match="expected 0 <= keep <= 8"):
        L.magnitude_masks(net, [9, 1, 1])
    with pytest.raises(UserError, match="expected 3 unit counts"):
        L.magnitude_masks(net, [1, 1])


def test_magnitude_ties_keep_the_lower_index():
    net = L.L0MLP([4, 2], gated=False)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    assert L.magnitude_masks(net, [2])[0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_error_rate_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    assert L.error_rate(logits, torch.tensor([1, 0, 2, 0])) == 0.0
    assert L.error_rate(logits, torch.tensor([0, 0, 2, 1])) == 0.5  # row 0 wrong; tie in row 3 -> class 0
    assert L.error_rate(logits, torch.tensor([2, 2, 0, 2])) == 1.0
    with pytest.raises(UserError, match="expected logits"):
        L.error_rate(logits, torch.tensor([0, 1]))
    with pytest.raises(UserError, match="at least one example"):
        L.error_rate(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_weights_kept_by_hand():
    assert L.weights_kept([784, 300, 100], 10) == 784 * 300 + 300 * 100 + 100 * 10
    assert L.weights_kept([2, 3, 1], 4) == 2 * 3 + 3 * 1 + 1 * 4
    assert L.weights_kept([5, 0, 2], 3) == 0 + 0 + 6


def test_units_kept_counts_the_test_time_gates():
    net = L.L0MLP([4, 3, 2], gated=True)
    assert net.gates is not None
    with torch.no_grad():
        # test gate 1.2 sigmoid(a) - 0.1 is 0 for a <= log(1/11) = -2.398
        net.gates[0].log_alpha.copy_(torch.tensor([-2.5, -2.3, 5.0, -10.0]))
        net.gates[1].log_alpha.copy_(torch.tensor([-3.0, -3.0, -3.0]))
    assert net.units_kept() == [2, 0]


# --------------------------------------------------------------------------- config, data


@pytest.mark.parametrize(
    "given,message",
    [
        ({"lambdas": "0"}, "expected lambda multiple > 0"),
        ({"lambdas": "1,nan"}, "expected a finite lambda multiple"),
        ({"lambdas": ""}, "expected a comma-separated list for --lambdas"),
        ({"methods": "magnitude"}, "expected --methods to include 'l0'"),
        ({"methods": "l0,random"}, "unknown pruning method 'random'"),
        ({"epochs": 0}, "expected --epochs >= 1"),
        ({"finetune_epochs": -1}, "expected --finetune-epochs >= 0"),
        ({"hidden": "300,0"}, "expected --hidden >= 1"),
        ({"lr": "-1"}, "expected --lr > 0"),
        ({"data": "cifar"}, "expected --data in mnist5k, digits, fashion-mnist or idx:PATH"),
        ({"epoch": 3}, "unknown l0 option 'epoch'"),
    ],
)
def test_config_validation(given, message):
    with pytest.raises(UserError, match=message):
        L.resolve_config(given)


def test_config_normalises_lambdas_and_methods():
    cfg = L.resolve_config({"lambdas": "10,1,10", "methods": "magnitude,l0"})
    assert cfg.lambdas == [1.0, 10.0] and cfg.methods == [L0, MAGNITUDE]
    assert L.resolve_config(cfg) == cfg


def test_idx_labels_follow_their_images_through_every_split(tmp_path):
    for test in (True, False):  # shipped test split, and a carved one
        ds = D.load_dataset(f"idx:{_synthetic(tmp_path / str(test), test=test)}")
        assert ds.has_labels
        for x, y in ((ds.train, ds.train_labels), (ds.val, ds.val_labels), (ds.test, ds.test_labels)):
            assert y is not None and y.dtype == torch.int64 and y.shape == x.shape[:1]
            torch.testing.assert_close(x[:, 15] * 255, (20 * y).float())


def test_idx_label_count_must_match(tmp_path):
    folder = _synthetic(tmp_path / "d")
    _idx(folder / "train-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(D.DataError, match="has 7 labels for 120 images"):
        D.load_dataset(f"idx:{folder}")


def test_missing_fashion_mnist_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", tmp_path / "absent")
    rc = cli.main(["l0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("gumbelkit l0: error: --data fashion-mnist: folder") and "dataset-fashion-mnist" in err
    assert not (tmp_path / "o").exists()


def test_data_without_labels_is_refused(tmp_path, capsys):
    folder = _synthetic(tmp_path / "nolabels", labels=False)
    rc = cli.main(["l0", "--data", f"idx:{folder}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no class labels" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- end to end


def _config(folder: Path, out: Path, **extra) -> dict:
    return {
        "data": f"idx:{folder}",
        "out": str(out),
        "hidden": "6,5",
        "lambdas": "1,3000",
        # Adam moves log alpha by about lr per step: 8 epochs of 5 steps at lr 0.1 can close a gate
        "epochs": 8,
        "finetune_epochs": 1,
        "batch_size": 20,
        "lr": 0.1,
        "plots": False,
        "progress": False,
    } | extra


def _numbers(obj):
    """``obj`` without its timings (every other number is reproducible)."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if not k.endswith("wall_s")}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def test_end_to_end_and_resume(tmp_path, capsys):
    folder = _synthetic(tmp_path / "data")
    out = tmp_path / "out"
    res = L.main(_config(folder, out))
    assert res["architecture"] == [16, 6, 5, 3] and res["weights_total"] == 16 * 6 + 6 * 5 + 5 * 3
    assert [c["lambda_multiple"] for c in res["cells"]] == [1.0, 3000.0]
    n_train = res["data"]["n_train"]
    for c in res["cells"]:
        assert math.isclose(c["lambda"], c["lambda_multiple"] * 0.1 / n_train)
        assert c["architecture"] == "-".join(map(str, c["units_kept"]))
        assert c["frac_units"] == sum(c["units_kept"]) / 27
        assert c["frac_weights"] == L.weights_kept(c["units_kept"], 3) / res["weights_total"]
        assert c[MAGNITUDE]["units_kept"] == c["units_kept"]  # same sparsity per layer
        for e in (c[L0]["test_error"], c[MAGNITUDE]["test_error"], c[MAGNITUDE]["finetuned_test_error"]):
            assert 0.0 <= e <= 1.0 and e * 40 == round(e * 40)  # a count of the 40 test images
    # the huge penalty prunes (lambda * fan_out dominates the loss), the paper's lambda barely does
    assert res["cells"][1]["frac_units"] < res["cells"][0]["frac_units"]
    assert res["dense_test_error"][0] < 0.2  # the classes are separable
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == res["summary"] and on_disk["cells_computed"] == 3
    md = (out / "results.md").read_text()
    assert md.startswith("# gumbelkit l0: 16-6-5-3 MLP") and "| 3000 |" in md
    # resume: nothing is recomputed, the numbers are identical
    again = L.main(_config(folder, out))
    assert again["cells_computed"] == 0 and again["cells"] == res["cells"] and again["dense"] == res["dense"]
    # a damaged checkpoint is refused in one line
    ckpt = out / "checkpoint.json"
    ckpt.write_text(ckpt.read_text().replace('"seed": 0', '"seed": 1', 1))
    with pytest.raises(UserError, match="checkpoint .* delete it or pass --fresh"):
        L.main(_config(folder, out))
    fresh = L.main(_config(folder, out, fresh=True))
    assert _numbers(fresh["cells"]) == _numbers(res["cells"])  # a fresh run reproduces the numbers exactly
    capsys.readouterr()


def test_a_changed_grid_reuses_the_cells_it_shares(tmp_path, capsys):
    folder = _synthetic(tmp_path / "data")
    first = L.main(_config(folder, tmp_path / "a", lambdas="1,3000", epochs=2))
    grown = L.main(_config(folder, tmp_path / "a", lambdas="1,50,3000", epochs=2))
    assert grown["cells_computed"] == 1  # only m = 50; the dense model and the other cells are reused
    assert [grown["cells"][i] for i in (0, 2)] == first["cells"]
    alone = L.main(_config(folder, tmp_path / "b", lambdas="50", epochs=2))
    assert _numbers(alone["cells"]) == _numbers([grown["cells"][1]])  # a cell does not depend on the grid
    capsys.readouterr()


def test_l0_only_skips_the_dense_model(tmp_path):
    folder = _synthetic(tmp_path / "data")
    res = L.main(_config(folder, tmp_path / "o", methods="l0", lambdas="1"))
    assert res["dense"] == [] and res["dense_test_error"] is None and MAGNITUDE not in res["cells"][0]
    assert "magnitude" not in (tmp_path / "o" / "results.md").read_text()
