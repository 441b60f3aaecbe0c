"""``gumbelkit dvae``: the model's shapes, the metrics on hand-built models, config validation, and a
tiny run through ``main`` on an IDX folder written here (schema, resume, determinism, damage)."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch

from gumbelkit.experiments import dvae as D
from gumbelkit.experiments._common import UserError
from gumbelkit.experiments._defaults import DVAE_METHODS
from gumbelkit.experiments._methods import parse_method


def _write_idx(path, images: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, images.ndim) + struct.pack(f">{images.ndim}I", *images.shape)
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def _idx_folder(folder, n_train=48, n_test=12, size=8, seed=0):
    """Blobby 8x8 images: a bright square at one of four places, so a few codes describe them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train-images-idx3-ubyte", n_train), ("t10k-images-idx3-ubyte", n_test)):
        imgs = rng.integers(0, 40, (n, size, size))
        for i, corner in enumerate(rng.integers(0, 4, n)):
            r, c = divmod(int(corner), 2)
            imgs[i, r * size // 2 : (r + 1) * size // 2, c * size // 2 : (c + 1) * size // 2] = 230
        _write_idx(folder / name, imgs)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _idx_folder(tmp_path_factory.mktemp("idx"))


def _tiny(data_dir, **kw):
    cfg = {
        "data": f"idx:{data_dir}",
        "steps": 4,
        "eval_every": 2,
        "batch_size": 4,
        "channels": 2,
        "codes": 8,
        "embedding_dim": 3,
        "eval_images": 6,
        "seeds": 2,
        "methods": list(DVAE_METHODS[:2]),
        "plots": False,
        "progress": False,
    }
    return cfg | kw


# --------------------------------------------------------------------------- model and metrics


@pytest.mark.parametrize("size,grid", [(28, 7), (8, 2)])
def test_model_maps_images_to_a_quarter_size_grid_and_back(size, grid):
    cfg = D.resolve_config({"channels": 3, "codes": 10, "embedding_dim": 4})
    model = D.DVAE(parse_method(DVAE_METHODS[0]), cfg)
    logits, q = model(torch.rand(5, 1, size, size))
    assert logits.shape == (5, 1, size, size)
    assert (
        q.codes.shape == (5, grid, grid) and q.logits.shape == (5, 10, grid, grid) and q.z_q.shape == (5, 4, grid, grid)
    )
    assert model.quantizer.dim == 1 and model.quantizer.n_codes == 10 and model.quantizer.dead_window == cfg.eval_every


def test_reconstruction_loss_is_the_summed_bernoulli_cross_entropy():
    x = torch.tensor([0.0, 1.0, 0.25, 0.5]).view(1, 1, 2, 2)
    logits = torch.tensor([0.0, 2.0, -1.0, 0.3]).view(1, 1, 2, 2)
    p = torch.sigmoid(logits)
    want = -(x * p.log() + (1 - x) * (1 - p).log()).sum()
    assert torch.allclose(D.reconstruction_loss(logits, x), want.view(1))


def test_evaluate_hand_built_models():
    cfg = D.resolve_config({"channels": 2, "codes": 8, "embedding_dim": 3})
    model = D.DVAE(parse_method(DVAE_METHODS[0]), cfg)
    images = torch.rand(10, 64)
    with torch.no_grad():  # every position picks code 5: one code in use
        model.quantizer.proj.weight.zero_()
        model.quantizer.proj.bias.copy_(torch.arange(8.0) == 5)
    ev = D.evaluate(model, images, (8, 8))
    assert ev["perplexity"] == 1.0 and ev["codes_unused"] == 7 and model.training  # the mode is restored
    # the reconstruction is the mean per-image cross-entropy of the eval-mode decoder output
    model.eval()
    with torch.no_grad():
        logits, _ = model(images.view(10, 1, 8, 8))
    assert math.isclose(
        ev["recon"], float(D.reconstruction_loss(logits, images.view(10, 1, 8, 8)).mean()), rel_tol=1e-5
    )
    model.train()
    # the code follows the position: position p of the 2x2 grid picks code p, 4 codes equally used
    model.encoder = torch.nn.Sequential(_PositionCode())
    with torch.no_grad():
        model.quantizer.proj.weight.zero_()
        model.quantizer.proj.weight[:4, :4] = torch.eye(4)
        model.quantizer.proj.bias.zero_()
    _, q = model.eval()(torch.rand(3, 1, 8, 8))
    assert q.codes[0].tolist() == [[0, 1], [2, 3]]
    ev = D.evaluate(model, images, (8, 8))
    assert math.isclose(ev["perplexity"], 4.0, rel_tol=1e-9) and ev["codes_unused"] == 4


class _PositionCode(torch.nn.Module):
    """Stands in for the encoder: grid position p gets a one-hot feature on channel p."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.zeros(x.shape[0], 4, 2, 2)
        for p in range(4):
            feats[:, p, p // 2, p % 2] = 1.0
        return feats


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"methods": "bogus"}, "unknown --methods 'bogus'"),
        ({"methods": "reinforce"}, "unknown --methods 'reinforce'"),  # needs the loss: not a sampler
        ({"data": "cifar"}, "expected --data in"),
        ({"steps": 0}, "expected --steps >= 1, got 0"),
        ({"steps": 5, "eval_every": 10}, "expected --eval-every <= --steps (5), got 10"),
        ({"codes": 1}, "expected --codes >= 2"),
        ({"tau": 0}, "expected --tau > 0"),
        ({"kl_weight": -1}, "--kl-weight"),
        ({"colour": 1}, "unknown dvae option 'colour'"),
    ],
)
def test_config_validation(bad, message):
    with pytest.raises(UserError) as info:
        D.resolve_config(bad)
    assert message in str(info.value)


def test_config_defaults():
    cfg = D.resolve_config({})
    assert cfg.methods == list(DVAE_METHODS) and cfg.data == "fashion-mnist"
    assert (cfg.codes, cfg.tau, cfg.kl_weight, cfg.threads) == (512, 1.0, D.DEFAULTS["kl_weight"], 1)


def test_images_must_divide_by_four(tmp_path):
    folder = _idx_folder(tmp_path / "six", n_train=20, n_test=5, size=6)
    with pytest.raises(UserError, match=r"divisible by 4, got \(6, 6\)"):
        D.main(_tiny(folder, out=str(tmp_path / "out")))


# --------------------------------------------------------------------------- main: schema, resume, determinism


@pytest.fixture(scope="module")
def tiny(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dvae")
    return D.main(_tiny(data_dir, out=str(out))), out


def test_schema(tiny):
    results, out = tiny
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    assert (out / "results.md").read_text().startswith("# gumbelkit dvae")
    assert (out / "checkpoint.json").exists()
    assert [(r["method"], r["seed"]) for r in results["rows"]] == [(m, s) for s in (0, 1) for m in DVAE_METHODS[:2]]
    for r in results["rows"]:
        assert r["curves"]["step"] == [2, 4]
        assert 1.0 <= r["test_perplexity"] <= 8 and 0 <= r["test_codes_unused"] <= 7 and 0 <= r["dead_codes"] <= 8
        assert r["test_recon"] > 0 and r["train_recon"] > 0 and r["ms_per_step"] > 0
        assert r["collapsed"] == (r["test_perplexity"] < 8 / D.COLLAPSE_DIVISOR)
        for key in ("train_recon", "train_perplexity", "test_recon", "test_perplexity", "dead_codes", "ms_per_step"):
            assert len(r["curves"][key]) == 2 and all(math.isfinite(v) for v in r["curves"][key])
    for e in results["summary"]:
        assert e["seeds"] == 2 and e["test_recon_std"] >= 0
        cells = [r for r in results["rows"] if r["method"] == e["method"]]
        assert e["collapsed"] == sum(r["test_perplexity"] < 8 / D.COLLAPSE_DIVISOR for r in cells)
        assert e["collapsed_train"] == sum(r["train_perplexity"] < 8 / D.COLLAPSE_DIVISOR for r in cells)
    assert results["data"]["n_test"] == 12 and results["cells_computed"] == 4


def test_resume_reuses_every_cell(tiny, data_dir):
    results, out = tiny
    again = D.main(_tiny(data_dir, out=str(out)))
    assert again["cells_computed"] == 0 and again["cells_resumed"] == 4 and again["rows"] == results["rows"]
    more = D.main(_tiny(data_dir, out=str(out), seeds=3, methods=[DVAE_METHODS[1]]))
    assert more["cells_computed"] == 1 and more["cells_resumed"] == 2


def test_same_seed_same_numbers_other_seed_other_numbers(tiny, data_dir, tmp_path):
    results, _ = tiny
    timing = ("train_s", "eval_s", "ms_per_step")

    def numbers(rows):
        out = []
        for r in rows:
            curves = {k: v for k, v in r["curves"].items() if k != "ms_per_step"}
            out.append({k: v for k, v in r.items() if k not in timing and k != "curves"} | {"curves": curves})
        return out

    cfg = _tiny(data_dir, seeds=1, methods=[DVAE_METHODS[0]])
    first = D.main({**cfg, "out": str(tmp_path / "a")})
    assert numbers(first["rows"]) == numbers(results["rows"][:1])
    other = D.main({**cfg, "out": str(tmp_path / "b"), "seed": 1})
    assert other["rows"][0]["test_recon"] != first["rows"][0]["test_recon"]


def test_every_default_method_trains_and_a_changed_setting_retrains(data_dir, tmp_path):
    cfg = _tiny(data_dir, methods=list(DVAE_METHODS), seeds=1, steps=2, out=str(tmp_path))
    results = D.main(cfg)
    assert [r["method"] for r in results["rows"]] == list(DVAE_METHODS)
    changed = D.main({**cfg, "tau": 0.5, "methods": [DVAE_METHODS[0]]})
    assert changed["cells_computed"] == 1 and changed["cells_resumed"] == 0


def test_damaged_checkpoint_is_refused(data_dir, tmp_path):
    cfg = _tiny(data_dir, methods=[DVAE_METHODS[0]], seeds=1, out=str(tmp_path))
    D.main(cfg)
    path = tmp_path / "checkpoint.json"
    path.write_text(path.read_text().replace('"test_recon"', '"test_recom"'))
    with pytest.raises(UserError, match="checkpoint"):
        D.main(cfg)
    assert D.main({**cfg, "fresh": True})["cells_computed"] == 1


def test_cli_refuses_bad_input_in_one_line(capsys, tmp_path):
    from gumbelkit import cli

    rc = cli.main(["dvae", "--methods", "st,bogus", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown --methods 'bogus'" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before anything is written
