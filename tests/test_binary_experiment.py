"""``gumbelkit binary``: the exact toy gradient and poly loss, unbiasedness and bias detection on the
Bernoulli toy, the vectorised-seeds Adam equivalence, a tiny run (schema, resume) and config checks."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import gumbelkit as gk
from gumbelkit.experiments import binary as B
from gumbelkit.experiments._common import UserError
from gumbelkit.experiments._defaults import BINARY_CATEGORICAL_METHODS, BINARY_METHODS


def _unbiased_binary() -> B.Estimator:
    """The first default binary method that is a score-function surrogate (unbiased by construction)."""
    return next(e for e in B.parse_estimators(list(BINARY_METHODS), B.BINARY, "--binary-methods") if e.unbiased)


def _relaxed_binary() -> B.Estimator:
    """The first default binary method whose forward is relaxed (not 0/1): a biased pathwise estimator."""
    return next(
        e
        for e in B.parse_estimators(list(BINARY_METHODS), B.BINARY, "--binary-methods")
        if not e.unbiased and not e.choice.one_hot
    )


@pytest.mark.parametrize("t", [0.45, 0.499, 0.8])
def test_exact_toy_gradient_is_the_autograd_of_the_closed_form(t):
    # Within [-8, 8] autograd of sigmoid is accurate to ~1e-12 relative (its backward s(1 - s)
    # cancels in the tails, which is why toy_gradient uses sigma(x) sigma(-x)).
    theta = torch.linspace(-8, 8, 33, dtype=torch.float64).requires_grad_(True)
    (auto,) = torch.autograd.grad(B.toy_loss(theta, t).sum(), theta)
    torch.testing.assert_close(B.toy_gradient(theta.detach(), t), auto, rtol=1e-10, atol=0.0)
    # in the tails: sigma'(x) = e^-|x| / (1 + e^-|x|)^2 exactly
    tails = torch.tensor([-40.0, -25.0, 25.0, 40.0], dtype=torch.float64)
    e = torch.exp(-tails.abs())
    torch.testing.assert_close(B.toy_gradient(tails, t), e / (1 + e) ** 2 * ((1 - t) ** 2 - t**2), rtol=1e-14, atol=0.0)
    # and the closed form itself, by enumerating b in {0, 1}
    p = torch.sigmoid(theta.detach())
    torch.testing.assert_close(B.toy_loss(theta.detach(), t), (1 - p) * t**2 + p * (1 - t) ** 2)


def test_poly_closed_form_matches_enumeration_on_three_latents():
    theta = torch.tensor([-1.3, 0.2, 2.1], dtype=torch.float64)
    q = torch.sigmoid(theta)
    for p in (1.5, 2.0, 3.0):
        total = 0.0
        for bits in itertools.product((0.0, 1.0), repeat=3):
            b = torch.tensor(bits, dtype=torch.float64)
            prob = float(torch.where(b == 1, q, 1 - q).prod())
            total += prob * float(((b - 0.45).abs() ** p).mean())
        assert math.isclose(float(B.poly_loss(theta, p)), total, rel_tol=1e-12)
    # one p per row
    rows = theta.expand(2, 3)
    torch.testing.assert_close(
        B.poly_loss(rows, torch.tensor([[2.0], [3.0]], dtype=torch.float64)),
        torch.stack([B.poly_loss(theta, 2.0), B.poly_loss(theta, 3.0)]),
    )


def test_unbiased_estimator_mean_is_within_five_standard_errors():
    # A correct unbiased estimator fails a 5-standard-error band with probability 5.7e-7 per
    # check (normal approximation, 40,000 samples); 3 thetas x 2 targets: about 3.4e-6 in all.
    est = _unbiased_binary()
    for t in (0.45, 0.499):
        for theta in (-1.0, 0.0, 1.5):
            row = B._toy_row(est, t, theta, 40_000, seed=1)
            assert abs(row["z"]) < 5, row
            assert row["p_wrong_sign"] < 0.5  # a score-function estimate is 0 or points the right way here


def test_relaxed_estimator_is_detected_as_biased_at_t_0499():
    # At theta = 2 the relaxed sample's gradient of E[(y - t)^2] differs from the exact gradient
    # by far more than the standard error: z is in the tens at 20,000 samples.
    est = _relaxed_binary()
    row = B._toy_row(est, 0.499, 2.0, 20_000, seed=2)
    assert abs(row["z"]) > 10 and row["bias"] > 0, row
    assert row["p_wrong_sign"] > 0.05


def test_categorical_latent_has_the_bernoulli_law():
    # Class 1 of softmax([0, theta]) is the bit: its frequency is sigmoid(theta).
    theta = torch.full((200_000,), 0.7)
    logits = torch.stack([torch.zeros_like(theta), theta], -1)
    z = gk.gumbel_max(logits, generator=torch.Generator().manual_seed(0))
    freq = float(z.to(torch.float64).mean())
    p = float(torch.sigmoid(torch.tensor(0.7)))
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / theta.numel())


def test_one_adam_over_stacked_seeds_equals_separate_adams():
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(50, 4, 3, generator=gen) * torch.logspace(-4, 1, 3)
    start = torch.randn(4, 3, generator=gen)
    assert B.adam_matches_per_seed(grads, start, lr=1e-2) <= 1e-7
    # the check can fail: Adafactor factors the second moment of a matrix over rows and columns,
    # so stacking the seeds changes their updates
    assert B.adam_matches_per_seed(grads, start, 1e-2, lambda params, lr: torch.optim.Adafactor(params, lr=lr)) > 1e-4


def test_training_rows_are_independent():
    # Row 0 alone and row 0 inside a stack of 3 see the same gradient (the loss of a row
    # depends on its own parameters only), for a deterministic estimator (tempered softmax).
    est = B.parse_estimators("softmax@1", B.CATEGORICAL, "--methods")[0]
    assert not est.unbiased

    def f(b):
        return ((b - 0.45).abs() ** 2).mean(-1)

    start = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    full = B.train(est, start, f, batch=2, steps=20, lr=1e-2, generator=gen, record=lambda s, t: None)
    one = B.train(est, start[:1], f, batch=2, steps=20, lr=1e-2, generator=gen, record=lambda s, t: None)
    torch.testing.assert_close(full[:1], one, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", ["softmax@1", "reinmax@1", "binary_concrete@0.5", "disarm:n=1"])
def test_two_logits_per_bit_is_one_logit_at_twice_the_learning_rate(spec):
    # l0, l1 get gradients (-g, g); Adam normalises each coordinate, so theta = l1 - l0 moves by
    # twice the one-parameter step: the same trajectory, the same random draws, up to rounding.
    family = B.BINARY if spec.startswith(("binary_", "disarm")) else B.CATEGORICAL
    est = B.parse_estimators(spec, family, "--methods")[0]

    def f(b):
        return ((b - 0.45).abs() ** 2).mean(-1)

    start = (torch.rand(3, 6, generator=torch.Generator().manual_seed(4)) * 2 - 1) * 0.01
    kw = {"batch": 4, "steps": 30, "record": lambda s, t: None}
    two = B.train(est, start, f, lr=1e-2, generator=torch.Generator().manual_seed(5), two_logits=True, **kw)
    one = B.train(est, start, f, lr=2e-2, generator=torch.Generator().manual_seed(5), **kw)
    half = B.train(est, start, f, lr=1e-2, generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-5)
    assert (two - half).abs().max() > 1e-3  # and it is not the one-logit run at the same rate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("binary")
    cfg = {
        "out": str(out),
        "binary_methods": "disarm:n=1,binary_concrete@0.5",
        "methods": "st_gumbel@0.5",
        "toy_thetas": [0.0],
        "toy_samples": 500,
        "train_steps": 30,
        "train_seeds": 2,
        "poly_powers": [2.0],
        "poly_latents": 4,
        "poly_batch": 3,
        "poly_steps": 10,
        "poly_seeds": 2,
        "record_every": 5,
        "plots": False,
        "progress": False,
    }
    return B.main(cfg), out, cfg


def test_schema_and_files(tiny):
    results, out, _ = tiny
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["toy"] == results["toy"]
    assert (out / "results.md").read_text().startswith("# gumbelkit binary")
    keys = [(e["family"], e["method"]) for e in results["estimators"]]
    assert keys == [("binary", "disarm:n=1"), ("binary", "binary_concrete@0.5"), ("categorical", "st_gumbel@0.5")]
    assert [(r["method"], r["t"]) for r in results["toy"]][:2] == [("disarm:n=1", 0.45), ("disarm:n=1", 0.499)]
    assert len(results["train"]) == 3 * 2 and len(results["poly"]) == 3
    for r in results["train"]:
        assert r["curve_steps"][-1] == 30 and len(r["curve_loss"]) == len(r["curve_steps"])
        assert r["optimum"] <= r["final_loss_mean"] <= (1 - r["optimum"] ** 0.5) ** 2
    for r in results["poly"]:
        assert 0.45**2 <= r["final_loss_mean"] <= 0.55**2 and len(r["final_loss"]) == 2
    # DisARM with one bit at theta = 0 is exact (zero variance): b1 != b2 always and sigma(|0|) = 1/2.
    row = next(r for r in results["toy"] if r["method"] == "disarm:n=1" and r["t"] == 0.45)
    assert row["variance"] < 1e-12 and abs(row["bias"]) < 1e-6 and row["p_wrong_sign"] == 0.0


def test_resume_reuses_every_cell_and_refuses_a_damaged_checkpoint(tiny):
    results, out, cfg = tiny
    again = B.main(cfg)
    assert again["cells_computed"] == 0 and again["cells_resumed"] == results["cells_computed"]
    assert again["poly"] == results["poly"]
    ckpt = out / "checkpoint.json"
    ckpt.write_text(ckpt.read_text().replace('"toy"', '"toy "', 1))
    with pytest.raises(UserError, match="checksum"):
        B.main(cfg)
    fresh = B.main({**cfg, "fresh": True})
    assert fresh["cells_computed"] == results["cells_computed"]


def test_new_registered_method_joins_the_default_list():
    names = {m.split("@")[0].split(":")[0] for m in B.default_categorical_methods()}
    assert names == set(gk.estimators.SPECS)
    listed = [m for m in BINARY_CATEGORICAL_METHODS if m.split("@")[0].split(":")[0] in gk.estimators.SPECS]
    assert B.default_categorical_methods()[: len(listed)] == listed


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"targets": [0.5]}, "!= 0.5"),
        ({"targets": [1.5]}, "<= 1"),
        ({"poly_powers": [0.5]}, ">= 1"),
        ({"binary_methods": "nope"}, "unknown --binary-methods 'nope'"),
        ({"binary_methods": "arm@0.5"}, "uses no temperature"),
        ({"binary_methods": "arm:n=0"}, "n to be an integer >= 1"),
        ({"methods": "gumbel_rao:k=10@0"}, "> 0"),
        ({"binary_methods": "none", "methods": "none"}, "at least one method"),
        ({"parts": "toy,nope"}, "unknown part 'nope'"),
        ({"toy_samples": 1}, ">= 2"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(UserError, match=match):
        B.resolve_config(bad)


@pytest.mark.parametrize("flag,other", [("--binary-methods", "--methods"), ("--methods", "--binary-methods")])
def test_none_leaves_one_family_out_through_the_command_line(flag, other):
    import argparse

    parser = argparse.ArgumentParser()
    B.add_arguments(parser)
    args = parser.parse_args([flag, "none", other, "reinmax@1" if other == "--methods" else "disarm:n=1"])
    cfg = B.resolve_config(B.config_from_args(args))  # resolving the config again keeps the empty list
    names = ("binary_methods", "methods") if flag == "--binary-methods" else ("methods", "binary_methods")
    assert getattr(cfg, names[0]) == [] and len(getattr(cfg, names[1])) == 1
    # the recorded command line writes the empty list as '', which must run again as it is
    again = parser.parse_args([flag, "", other, "reinmax@1" if other == "--methods" else "disarm:n=1"])
    assert getattr(B.resolve_config(B.config_from_args(again)), names[0]) == []


def test_estimator_labels_and_default_temperatures():
    ests = B.parse_estimators("hard_concrete,st_binary_concrete@0.5,reinforce_loo", B.BINARY, "--binary-methods")
    assert [e.label for e in ests] == ["hard_concrete@0.666667", "st_binary_concrete@0.5", "reinforce_loo"]
    assert ests[0].tau == gk.binary.METHODS["hard_concrete"].default_tau and ests[2].tau is None
    cat = B.parse_estimators("gumbel_rao:k=10@0.1,reinmax", B.CATEGORICAL, "--methods")
    assert [(e.label, e.tau, e.choice.options) for e in cat] == [
        ("gumbel_rao:k=10@0.1", 0.1, {"k": 10}),
        ("reinmax@1", 1.0, {}),
    ]
