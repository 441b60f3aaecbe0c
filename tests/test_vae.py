"""Tests for gumbelkit.experiments.vae: model, estimators' objectives, exact evaluation, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import gumbelkit
from gumbelkit.experiments import vae
from gumbelkit.experiments._common import UserError, read_checked_torch
from gumbelkit.experiments._distributed import DistContext
from gumbelkit.experiments.data import Dataset

TIMING = ("seconds", "steps_per_second", "eval_seconds", "resumed_from_step")


def toy_dataset(n=120, d=12, seed=0) -> Dataset:
    """Binary images from 4 noisy prototypes: a VAE can learn them in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(4, d, generator=g) > 0.5).float()

    def draw(m):
        x = protos[torch.randint(0, 4, (m,), generator=g)]
        flip = torch.rand(m, d, generator=g) < 0.05
        return torch.where(flip, 1 - x, x)

    return Dataset("toy", draw(n), draw(30), draw(40), (3, 4), "synthetic", "shipped", ["fixed"])


def tiny_config(tmp_path, **kw):
    cfg = dict(
        data="digits",
        latent="3x3",
        steps=8,
        hidden="16,8",
        batch_size=10,
        eval_samples=5,
        out=str(tmp_path),
        log_every=2,
        val_every=4,
        checkpoint_every=3,
        device="cpu",
        threads=1,
        progress=False,
    )
    cfg.update(kw)
    return vae.resolve_config(cfg)


# --------------------------------------------------------------------------- config


def test_parse_latent():
    assert vae.parse_latent("30x10") == (30, 10)
    assert vae.parse_latent(" 8 X 4 ") == (8, 4)
    for bad in ("30", "30x", "x10", "30x1", "0x10", "3.5x2", "30by10", "-1x3", "2000x1000"):
        with pytest.raises(UserError, match="--latent"):
            vae.parse_latent(bad)


def test_resolve_config_defaults_match_the_issue():
    cfg = vae.resolve_config({})
    assert cfg["data"] == "mnist5k" and cfg["latent"] == "30x10" and cfg["latent_nk"] == [30, 10]
    assert cfg["methods"] == ["st", "st_gumbel", "gumbel_softmax", "gumbel_rao", "reinmax", "reinforce"]
    assert cfg["batch_size"] == 100 and cfg["lr"] == 1e-3 and cfg["seeds"] == 1
    assert cfg["hidden_sizes"] == [512, 256] and cfg["binarize"] == "fixed"
    tau = gumbelkit.schedules.parse_schedule(cfg["tau_schedule"])
    assert tau(0) == 1.0 and tau(999) == 1.0
    assert tau(1000) == pytest.approx(math.exp(-0.03))
    assert tau(10**6) == 0.5  # the floor
    assert cfg["steps"] == vae.DEFAULT_STEPS
    # Idempotent: main() re-resolves the dict that config_from_args produced.
    assert vae.resolve_config(cfg) == cfg


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("methods", "st,foo", "unknown --methods 'foo'"),
        ("methods", "st,,reinmax", "comma-separated"),
        ("latent", "30-10", "--latent"),
        ("steps", "0", "--steps >= 1"),
        ("steps", "ten", "--steps to be an integer"),
        ("seeds", 2.5, "--seeds"),
        ("lr", "-1", "--lr > 0"),
        ("lr", "nan", "finite --lr"),
        ("eval_samples", "-3", "--eval-samples >= 0"),
        ("reinforce_samples", 1, "--reinforce-samples >= 2"),
        ("tau_schedule", "exp:tau0=-1", "--tau-schedule: .*expected tau0 > 0"),
        ("tau_schedule", "warm", "--tau-schedule"),
        ("hidden", "512,abc", "--hidden"),
        ("hidden", "512,0", "--hidden"),
        ("binarize", "random", "--binarize fixed or dynamic"),
        ("threshold", 1.5, "--threshold"),
        ("data", "mnist", "expected --data"),
        ("nonsense", 1, "unknown vae option"),
    ],
)
def test_resolve_config_rejects_bad_values_in_one_line(key, value, needle):
    with pytest.raises(UserError, match=needle) as info:
        vae.resolve_config({key: value})
    assert "\n" not in str(info.value)


def test_softmax_is_accepted_as_an_extra_method():
    assert vae.resolve_config({"methods": "softmax,st,st"})["methods"] == ["softmax", "st"]


# --------------------------------------------------------------------------- model and objectives


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    a = vae.build_model(12, 3, 4, [16, 8], seed=0, device="cpu")
    b = vae.build_model(12, 3, 4, [16, 8], seed=0, device="cpu")
    c = vae.build_model(12, 3, 4, [16, 8], seed=1, device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)
    assert [m.out_features for m in a.encoder if isinstance(m, torch.nn.Linear)] == [16, 8, 12]
    assert [m.out_features for m in a.decoder if isinstance(m, torch.nn.Linear)] == [8, 16, 12]


OPTIONS = {"reinforce": {"n": 4}, "gumbel_rao": {"k": 5}}


@pytest.mark.parametrize("method", list(gumbelkit.estimators.SPECS))
def test_objective_is_finite_and_trains_both_networks(method):
    model = vae.build_model(12, 3, 4, [16, 8], seed=0, device="cpu")
    x = toy_dataset().train[:10]
    g = torch.Generator().manual_seed(0)
    obj = model(x, method, 0.7, generator=g, **OPTIONS.get(method, {}))
    assert obj.shape == (10,) and bool(torch.isfinite(obj).all())
    obj.mean().backward()
    enc_grad = model.encoder[0].weight.grad
    dec_grad = model.decoder[-1].weight.grad
    assert enc_grad is not None and float(enc_grad.abs().sum()) > 0
    assert dec_grad is not None and float(dec_grad.abs().sum()) > 0


def test_objective_value_is_a_neg_elbo_sample_for_one_hot_methods():
    # For the straight-through family the forward is an exact one-hot sample, so the objective's
    # value is -log p(x|z) + KL for that z: recompute it with the same noise through gumbel_max.
    model = vae.build_model(12, 3, 4, [16, 8], seed=0, device="cpu")
    x = toy_dataset().train[:10]
    logits = model.encode(x)
    for method in ("st_gumbel", "gumbel_rao", "reinmax", "st"):
        obj = model(x, method, 0.7, generator=torch.Generator().manual_seed(3), **OPTIONS.get(method, {}))
        idx = gumbelkit.gumbel_max(logits, generator=torch.Generator().manual_seed(3))
        z = F.one_hot(idx, 4).float()
        rec = F.binary_cross_entropy_with_logits(model.decode(z), x, reduction="none").sum(-1)
        kl = gumbelkit.kl_categorical(logits, torch.zeros_like(logits)).sum(-1)
        torch.testing.assert_close(obj, rec + kl)


def test_reinforce_gradient_matches_the_exact_gradient_on_average():
    # Encoder-only check on a tiny model: the mean of many REINFORCE+LOO gradients of the
    # reconstruction term approaches the gradient of the exact expectation (enumerated).
    torch.manual_seed(0)
    model = vae.build_model(4, 2, 3, [6], seed=0, device="cpu").double()
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    w = model.encoder[-1].bias

    def exact():
        logits = model.encode(x)[0]
        codes = torch.cartesian_prod(torch.arange(3), torch.arange(3))
        z = F.one_hot(codes, 3).double()
        rec = F.binary_cross_entropy_with_logits(model.decode(z), x.expand(9, 4), reduction="none").sum(-1)
        logp = torch.log_softmax(logits, -1)
        p = (logp[0][codes[:, 0]] + logp[1][codes[:, 1]]).exp()
        return (p * rec).sum() + model.kl_to_uniform(logits[None])[0]

    (true,) = torch.autograd.grad(exact(), w)
    g = torch.Generator().manual_seed(0)
    xs = x.expand(4000, 4)
    obj = model(xs, "reinforce", 1.0, generator=g, n=4)
    (est,) = torch.autograd.grad(obj.mean(), w)
    # 4000 independent 4-sample estimates averaged: error ~ std/63; compare with a loose bound.
    assert torch.allclose(est, true, atol=0.06 * float(true.abs().max()) + 0.02), (est, true)


def test_train_step_decreases_the_objective():
    ds = toy_dataset()
    model = vae.build_model(12, 3, 4, [32, 16], seed=0, device="cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    sampler = vae.EpochSampler(ds.train.shape[0], 20, torch.Generator().manual_seed(1))
    losses = [vae.train_step(model, opt, ds.train[sampler.next()], "st_gumbel", 1.0, g) for _ in range(150)]
    # 12 * log 2 = 8.3 nats untrained; observed ~7.75 -> ~6.5 (window noise ~0.2).
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.8


# --------------------------------------------------------------------------- data order


def test_epoch_sampler_permutes_and_resumes():
    g = torch.Generator().manual_seed(0)
    s = vae.EpochSampler(10, 3, g)
    epoch = torch.cat([s.next() for _ in range(3)])
    assert (
        sorted(epoch.tolist()) == sorted(set(epoch.tolist())) and len(epoch) == 9
    )  # no repeats, last partial batch dropped
    state, gstate = s.state_dict(), g.get_state()
    cont = [s.next() for _ in range(5)]
    g2 = torch.Generator()
    g2.set_state(gstate)
    s2 = vae.EpochSampler(10, 3, g2)
    s2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(cont, [s2.next() for _ in range(5)]))
    with pytest.raises(UserError, match="--batch-size"):
        vae.EpochSampler(10, 11, g)


# --------------------------------------------------------------------------- evaluation


def _direct_log_px(model, x):
    """log p(x) and the exact -ELBO by the definitions, looping over codes (no matrix tricks)."""
    N, K = model.n_latent, model.n_classes
    codes = torch.cartesian_prod(*[torch.arange(K)] * N).reshape(-1, N)
    z = F.one_hot(codes, K).float()
    out_nll, out_elbo = [], []
    for xi in x:
        logits = model.encode(xi[None])[0]
        logq = torch.log_softmax(logits, -1)
        log_q_code = sum(logq[n][codes[:, n]] for n in range(N)).double()
        log_px_z = (
            -F.binary_cross_entropy_with_logits(model.decode(z), xi.expand(len(codes), -1), reduction="none")
            .sum(-1)
            .double()
        )
        log_joint = log_px_z - N * math.log(K)
        out_nll.append(float(-torch.logsumexp(log_joint, 0)))
        out_elbo.append(float(-(log_q_code.exp() * (log_joint - log_q_code)).sum()))
    return sum(out_nll) / len(x), sum(out_elbo) / len(x)


@torch.no_grad()
def test_exact_evaluation_matches_the_definition_and_bounds_are_ordered():
    ds = toy_dataset()
    model = vae.build_model(12, 3, 3, [16, 8], seed=0, device="cpu")
    # Train a little so q is not uniform (the bounds are then far from tight).
    with torch.enable_grad():
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for i in range(40):
            vae.train_step(model, opt, ds.train[(i * 20) % 100 : (i * 20) % 100 + 20], "st_gumbel", 1.0, g)
    x = ds.test[:25]
    res = vae.evaluate(model, x, generator=torch.Generator().manual_seed(0), iw_samples=0, exact=True)
    nll, neg_elbo = _direct_log_px(model, x)
    assert res["exact_nll"] == pytest.approx(nll, abs=1e-4)
    assert res["exact_neg_elbo"] == pytest.approx(neg_elbo, abs=1e-4)
    assert res["exact_nll"] <= res["exact_neg_elbo"]
    # Monte Carlo numbers agree with the exact ones: many single-sample -ELBOs average to the
    # exact -ELBO; the IW bound decreases with m towards the exact NLL.
    big = x.repeat(200, 1)
    mc = vae.evaluate(model, big, generator=torch.Generator().manual_seed(1), iw_samples=1)
    assert mc["neg_elbo"] == pytest.approx(res["exact_neg_elbo"], abs=0.05)
    assert mc["iw_bound"] == pytest.approx(res["exact_neg_elbo"], abs=0.05)  # m = 1: the -ELBO again
    iw = {
        m: vae.evaluate(model, x.repeat(20, 1), generator=torch.Generator().manual_seed(2), iw_samples=m)["iw_bound"]
        for m in (1, 10, 200)
    }
    assert iw[1] > iw[10] > iw[200] >= res["exact_nll"] - 0.02
    assert iw[200] - res["exact_nll"] < 0.25 * (iw[1] - res["exact_nll"])


def test_evaluate_is_reproducible_and_chunking_does_not_change_it():
    ds = toy_dataset()
    model = vae.build_model(12, 3, 3, [16, 8], seed=0, device="cpu")
    a = vae.evaluate(model, ds.test, generator=torch.Generator().manual_seed(0), iw_samples=7, exact=True)
    b = vae.evaluate(model, ds.test, generator=torch.Generator().manual_seed(0), iw_samples=7, exact=True)
    assert a == b
    c = vae.evaluate(model, ds.test, generator=torch.Generator().manual_seed(0), iw_samples=0, exact=True, rows=3)
    assert c["exact_nll"] == pytest.approx(a["exact_nll"], rel=1e-9)
    assert set(a) == {"neg_elbo", "iw_bound", "exact_neg_elbo", "exact_nll"}


# --------------------------------------------------------------------------- runs and resume


def _strip(rec):
    return {k: v for k, v in rec.items() if k not in TIMING}


def test_run_is_deterministic_and_seed_dependent(tmp_path):
    ds = toy_dataset()
    ctx = DistContext(device=torch.device("cpu"))
    cfg = tiny_config(tmp_path, latent="3x3")
    a = vae.run_one(cfg, ds, "gumbel_rao", 0, ctx, tmp_path / "a")
    b = vae.run_one(cfg, ds, "gumbel_rao", 0, ctx, tmp_path / "b")
    c = vae.run_one(cfg, ds, "gumbel_rao", 1, ctx, tmp_path / "c")
    assert _strip(a) == _strip(b)
    assert a["test_neg_elbo"] != c["test_neg_elbo"]
    assert [p[0] for p in a["train_curve"]] == [2, 4, 6, 8]
    assert [p[0] for p in a["val_curve"]] == [4, 8]
    assert {"test_exact_nll", "test_exact_neg_elbo", "initial_test_exact_nll"} <= set(a)  # 3^3 codes
    assert a["test_exact_nll"] <= a["test_exact_neg_elbo"]


def test_exact_numbers_are_reported_up_to_65536_codes(tmp_path):
    ds = toy_dataset()
    ctx = DistContext(device=torch.device("cpu"))
    at = vae.run_one(tiny_config(tmp_path, latent="16x2", steps=1, eval_samples=0), ds, "st", 0, ctx, tmp_path / "a")
    over = vae.run_one(tiny_config(tmp_path, latent="17x2", steps=1, eval_samples=0), ds, "st", 0, ctx, tmp_path / "b")
    assert vae.MAX_ENUMERATE == 2**16
    assert at["test_exact_nll"] <= at["test_exact_neg_elbo"] and "initial_test_exact_nll" in at
    assert not any("exact" in k for k in over)
    assert at["test_iw_bound"] is None  # --eval-samples 0 skips the IW bound


class _Crash(Exception):
    pass


@pytest.mark.parametrize("method,binarize", [("reinforce", "fixed"), ("gumbel_rao", "dynamic")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch, method, binarize):
    ds = toy_dataset()
    if binarize == "dynamic":
        ds = Dataset("toy", ds.train * 0.8 + 0.1, ds.val, ds.test, (3, 4), "synthetic", "shipped", ["dynamic"])
    ctx = DistContext(device=torch.device("cpu"))
    cfg = tiny_config(tmp_path, steps=10, checkpoint_every=3, binarize=binarize)
    straight = vae.run_one(cfg, ds, method, 0, ctx, tmp_path / "straight")

    real_step, calls = vae.train_step, []

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:  # dies during step 8: the last checkpoint is from step 6
            raise _Crash()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(vae, "train_step", crashing_step)
    with pytest.raises(_Crash):
        vae.run_one(cfg, ds, method, 0, ctx, tmp_path / "resumed")
    monkeypatch.setattr(vae, "train_step", real_step)
    ckpt = read_checked_torch(tmp_path / "resumed" / "checkpoints" / f"{method}-seed0.pt")
    assert ckpt["state"]["step"] == 6
    resumed = vae.run_one({**cfg, "resume": True}, ds, method, 0, ctx, tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 6
    assert _strip(resumed) == _strip(straight)  # every number, curve and the fingerprint
    final_a = read_checked_torch(tmp_path / "straight" / "checkpoints" / f"{method}-seed0.pt")
    final_b = read_checked_torch(tmp_path / "resumed" / "checkpoints" / f"{method}-seed0.pt")
    for k, v in final_a["model"].items():
        assert torch.equal(v, final_b["model"][k]), k
    assert torch.equal(final_a["rng"]["noise"], final_b["rng"]["noise"])


def test_resume_refuses_a_checkpoint_from_another_configuration(tmp_path):
    ds = toy_dataset()
    ctx = DistContext(device=torch.device("cpu"))
    vae.run_one(tiny_config(tmp_path, steps=4), ds, "st", 0, ctx, tmp_path)
    (tmp_path / "runs" / "st-seed0.json").unlink()
    with pytest.raises(UserError, match="different configuration.*lr"):
        vae.run_one(tiny_config(tmp_path, steps=4, lr=0.01, resume=True), ds, "st", 0, ctx, tmp_path)
    (tmp_path / "checkpoints" / "st-seed0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="checkpoint .* is not a gumbelkit state file"):
        vae.run_one(tiny_config(tmp_path, steps=4, resume=True), ds, "st", 0, ctx, tmp_path)


def test_resume_reuses_completed_runs_without_training(tmp_path, monkeypatch):
    ds = toy_dataset()
    ctx = DistContext(device=torch.device("cpu"))
    cfg = tiny_config(tmp_path, steps=4)
    first = vae.run_one(cfg, ds, "st", 0, ctx, tmp_path)

    def no_training(*a, **k):
        raise AssertionError("a completed run was trained again")

    monkeypatch.setattr(vae, "train_step", no_training)
    again = vae.run_one({**cfg, "resume": True}, ds, "st", 0, ctx, tmp_path)
    assert json.loads(json.dumps(first)) == again


def test_main_writes_results_and_leaves_global_state_alone(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn (digits) is not installed")
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    res = vae.main(dict(tiny_config(tmp_path / "out", methods="st,reinforce", seeds=2, steps=4)))
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    out = tmp_path / "out"
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["methods"] == ["st", "reinforce"] and len(data["runs"]) == 4
    assert {(r["method"], r["seed"]) for r in data["runs"]} == {
        ("st", 0),
        ("st", 1),
        ("reinforce", 0),
        ("reinforce", 1),
    }
    for r in data["runs"]:
        for key in ("test_neg_elbo", "initial_test_neg_elbo", "test_iw_bound", "seconds", "steps_per_second"):
            assert math.isfinite(r[key]), key
        assert r["train_curve"] and r["test_neg_elbo"] < r["initial_test_neg_elbo"] + 5
    assert data["data"]["name"] == "digits" and data["environment"]["threads"] == 1
    assert data["command"].startswith("gumbelkit vae --data digits --latent 3x3 --steps 4")
    md = (out / "results.md").read_text()
    assert "| st |" in md and "| reinforce |" in md and " ± " in md
    assert (out / "train_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "tau_schedule.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| method |" in printed and "| reinforce |" in printed
    assert res["summary"][0]["method"] == "st" and res["summary"][0]["seeds"] == 2


def test_methods_with_options_and_the_deprecated_option_flags():
    cfg = vae.resolve_config({"methods": "st,gumbel_rao,gumbel_rao:k=5,reinforce:n=8"})
    assert cfg["methods"] == ["st", "gumbel_rao", "gumbel_rao:k=5", "reinforce:n=8"]
    assert cfg.choice("gumbel_rao").options == {"k": 10} and cfg.choice("reinforce:n=8").options == {"n": 8}
    # --gumbel-rao-k / --reinforce-samples still work: they set the option where it is not given
    # (and leave the label alone when the value is the default)
    old = vae.resolve_config(
        {"methods": "st,gumbel_rao,gumbel_rao:k=5,reinforce", "gumbel_rao_k": 20, "reinforce_samples": 4}
    )
    assert old["methods"] == ["st", "gumbel_rao:k=20", "gumbel_rao:k=5", "reinforce"]
    assert vae.resolve_config(old) == old  # idempotent
    with pytest.raises(UserError, match="--methods 'reinforce:n=1': expected n to be an integer with 2 <= n <= 10000"):
        vae.resolve_config({"methods": "reinforce:n=1"})
    with pytest.raises(UserError, match="--gumbel-rao-k <= 10000"):
        vae.resolve_config({"gumbel_rao_k": 10**6})


def test_a_method_with_options_runs_and_is_labelled_with_them(tmp_path):
    ds = toy_dataset()
    ctx = DistContext(device=torch.device("cpu"))
    cfg = tiny_config(tmp_path, steps=2, methods="gumbel_rao:k=3")
    rec = vae.run_one(cfg, ds, "gumbel_rao:k=3", 0, ctx, tmp_path)
    assert rec["method"] == "gumbel_rao:k=3" and rec["fingerprint"]["options"] == {"k": 3}
    assert (tmp_path / "runs" / "gumbel_rao_k3-seed0.json").exists()
    assert (tmp_path / "checkpoints" / "gumbel_rao_k3-seed0.pt").exists()
    # k changes the estimator, so the numbers differ from the default k with the same seed
    default = vae.run_one(cfg, ds, "gumbel_rao", 0, ctx, tmp_path / "default")
    assert default["fingerprint"]["options"] == {"k": 10} and default["test_neg_elbo"] != rec["test_neg_elbo"]
