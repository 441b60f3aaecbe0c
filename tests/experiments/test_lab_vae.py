"""The categorical VAE: its objective for every method, its evaluation against the definitions, the
data order, and torchrun (DDP replicas in step, resume, sweeps, a failing rank)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from experiments.config import UserError
from experiments.vae import VaeConfig, parse_latent
from experiments.vae_bernoulli import BernoulliVAE
from experiments.vae_model import CategoricalVAE, EpochSampler, bernoulli_nll, evaluate
from lab_helpers import _stateful, numbers, results, smoke
from lab_helpers import run as run_cli
from test_lab_resume import _kill_after

import gumbelkit as gk
from experiments import methods as M

ROOT = Path(__file__).resolve().parents[2]


def _model(n=2, k=3, d=6, seed=0) -> CategoricalVAE:
    torch.manual_seed(seed)
    return CategoricalVAE(d, n, k, [5])


def test_the_config_defaults_are_jang_et_al_and_every_categorical_method():
    cfg = VaeConfig.make()
    assert (cfg.latent, cfg.hidden, cfg.batch_size, cfg.lr, cfg.steps) == ("30x10", [512, 256], 100, 1e-3, 3000)
    assert cfg.tau_schedule == gk.schedules.parse_schedule("exp:tau0=1,rate=3e-5,floor=0.5,interval=1000").spec
    assert not cfg.enumerable
    assert cfg.methods == list(gk.estimators.methods("categorical"))
    assert parse_latent(" 4 x 3 ") == (4, 3)
    with pytest.raises(UserError, match="expected each key once in --tau-schedule"):  # 23/15: a repeated key
        VaeConfig.make(tau_schedule="exp:tau0=1,rate=1e-3,floor=0.5,floor=0.6")


@pytest.mark.parametrize("method", list(gk.estimators.methods("categorical")))
def test_the_objective_is_finite_and_trains_both_networks(method):
    model, x = _model(), (torch.rand(7, 6) > 0.5).float()
    spec = gk.get_spec(method, family="categorical")
    if spec.has_control:  # a method with state trains its control too (every parameter gets a gradient)
        model.control = spec.new_control((2, 3))
    obj = model(x, M.parse(method, "categorical"), 0.5, generator=torch.Generator().manual_seed(0))
    assert obj.shape == (7,) and bool(torch.isfinite(obj).all())
    obj.mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert model.encoder[0].weight.grad.abs().sum() > 0 and model.decoder[-1].weight.grad.abs().sum() > 0


def test_exact_evaluation_matches_the_definitions_and_the_bounds_are_ordered():
    model, x = _model(), (torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    res = evaluate(model, x, generator=torch.Generator().manual_seed(0), iw_samples=2000, exact=True)
    # by hand: sum over the 9 codes of q(z|x) and p(x|z) p(z)
    logits = model.encode(x).detach().double()
    log_q = torch.log_softmax(logits, -1)
    nll = elbo = 0.0
    for i in range(5):
        terms = []
        for a, b in itertools.product(range(3), range(3)):
            z = torch.zeros(2, 3)
            z[0, a] = z[1, b] = 1
            log_px = -float(bernoulli_nll(model.decode(z).detach().double(), x[i].double()))
            q = math.exp(float(log_q[i, 0, a] + log_q[i, 1, b]))
            elbo -= q * (log_px - math.log(q) - 2 * math.log(3))
            terms.append(log_px - 2 * math.log(3))
        nll -= float(torch.logsumexp(torch.tensor(terms), 0))
    assert res["exact_nll"] == pytest.approx(nll / 5, rel=1e-6) and res["exact_neg_elbo"] == pytest.approx(
        elbo / 5, rel=1e-6
    )
    assert res["exact_nll"] <= res["iw_bound"] + 0.05 and res["iw_bound"] <= res["exact_neg_elbo"] + 1e-6


def test_evaluation_is_reproducible_and_leaves_the_generators_of_training_alone():
    model, x = _model(), torch.rand(40, 6).round()
    a = evaluate(model, x, generator=torch.Generator().manual_seed(3), iw_samples=4)
    b = evaluate(model, x, generator=torch.Generator().manual_seed(3), iw_samples=4)
    assert a == b and set(a) == {"neg_elbo", "iw_bound"}


def test_the_epoch_sampler_permutes_and_resumes():
    s = EpochSampler(10, 4, torch.Generator().manual_seed(0))
    first = torch.cat([s.next(), s.next()])
    assert len(set(first.tolist())) == 8 and s.epoch == 1
    state, gen_state = s.state_dict(), s.generator.get_state()
    later = [s.next() for _ in range(3)]
    t = EpochSampler(10, 4, torch.Generator())
    t.load_state_dict(state)
    t.generator.set_state(gen_state)
    assert all(torch.equal(a, b) for a, b in zip(later, [t.next() for _ in range(3)])) and t.epoch == 3


# --------------------------------------------------------------------------- the Bernoulli VAE (--family bernoulli)


def test_the_bernoulli_config_takes_d_bits_and_every_bernoulli_method():
    cfg = VaeConfig.make(family="bernoulli")
    assert (cfg.latent, cfg.latent_bits, cfg.enumerable) == ("200", 200, False)
    assert (
        cfg.methods == list(gk.estimators.methods("bernoulli"))
        and VaeConfig.make(family="bernoulli", latent=12).enumerable
    )
    assert "--family bernoulli --latent 200" in cfg.command()
    with pytest.raises(UserError, match="expected --latent D, a number of bits"):
        VaeConfig.make(family="bernoulli", latent="4x3")
    with pytest.raises(UserError, match="expected --latent NxK"):
        VaeConfig.make(latent="8")
    categorical_only = next(
        m for m in gk.estimators.methods("categorical") if m not in gk.estimators.methods("bernoulli")
    )
    with pytest.raises(UserError, match="unknown --methods"):
        VaeConfig.make(family="bernoulli", methods=categorical_only)


@pytest.mark.parametrize("method", list(gk.estimators.methods("bernoulli")))
def test_the_bernoulli_objective_is_finite_and_trains_both_networks(method):
    torch.manual_seed(0)
    model, x = BernoulliVAE(6, 3, [5]), (torch.rand(7, 6) > 0.5).float()
    spec = gk.get_spec(method, family="bernoulli")
    if spec.has_control:  # the control is a submodule: trained by the same backward, saved with the model
        model.control = spec.new_control((3,))
        assert any(k.startswith("control.") for k in model.state_dict())
    obj = model(x, M.parse(method, "bernoulli"), 0.5, generator=torch.Generator().manual_seed(0))
    assert obj.shape == (7,) and bool(torch.isfinite(obj).all())
    obj.mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert model.encoder[0].weight.grad.abs().sum() > 0 and model.decoder[-1].weight.grad.abs().sum() > 0


def test_the_bernoulli_exact_evaluation_and_kl_match_the_definitions():
    torch.manual_seed(0)
    model, x = BernoulliVAE(6, 3, [5]), (torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    res = evaluate(model, x, generator=torch.Generator().manual_seed(0), iw_samples=2000, exact=True)
    q = torch.sigmoid(model.encode(x).detach().double())  # (5, 3)
    kl = (q * torch.log(2 * q) + (1 - q) * torch.log(2 * (1 - q))).sum(-1)
    assert torch.allclose(model.kl_to_prior(model.encode(x)).detach().double(), kl, rtol=1e-5)
    nll = elbo = 0.0
    for i in range(5):  # by hand: the 8 codes, q(b|x) and p(x|b) p(b) with p(b) = 1/8
        terms = []
        for bits in itertools.product((0.0, 1.0), repeat=3):
            b = torch.tensor(bits, dtype=torch.float64)
            log_px = -float(bernoulli_nll(model.decode(b.float()).detach().double(), x[i].double()))
            q_b = float(torch.prod(q[i] ** b * (1 - q[i]) ** (1 - b)))
            elbo -= q_b * (log_px - math.log(q_b) - 3 * math.log(2))
            terms.append(log_px - 3 * math.log(2))
        nll -= float(torch.logsumexp(torch.tensor(terms), 0))
    assert res["exact_nll"] == pytest.approx(nll / 5, rel=1e-6)
    assert res["exact_neg_elbo"] == pytest.approx(elbo / 5, rel=1e-6)
    assert res["exact_nll"] <= res["iw_bound"] + 0.05 and res["iw_bound"] <= res["exact_neg_elbo"] + 1e-6


def test_a_bernoulli_vae_smoke_run_and_a_killed_run_resumes_bit_identical(tmp_path, capsys, monkeypatch):
    pathwise = next(s.name for s in gk.estimators.specs("bernoulli", "sample"))
    # the method with a control first: the kill (after the first saved state) lands inside its run
    args = ["--no-plots", "--family", "bernoulli", "--latent", "3", "--methods", f"{_stateful('bernoulli')},{pathwise}"]
    rc, _, err = smoke("vae", tmp_path / "straight", capsys, *args)
    assert rc == 0, err
    straight = results(tmp_path / "straight")
    assert [r["method"] for r in straight["runs"]] == [_stateful("bernoulli"), pathwise]
    assert [r["trained_control"] for r in straight["runs"]] == [True, False]
    for r in straight["runs"]:
        assert r["test_exact_nll"] <= r["test_exact_neg_elbo"] and all(math.isfinite(r[k]) for k in r if "test_" in k)
    with monkeypatch.context() as m:
        _kill_after(m, 1)
        rc, _, err = smoke("vae", tmp_path / "killed", capsys, *args)
    assert rc == 130 and "interrupted" in err
    rc, _, err = smoke("vae", tmp_path / "killed", capsys, *args)
    assert rc == 0, err
    resumed = results(tmp_path / "killed")
    assert resumed["runs"][0]["resumed_from_step"] == 2 and numbers(resumed) == numbers(straight)


# --------------------------------------------------------------------------- torchrun: two gloo processes on CPU

# The lab's command line inside each worker; GK_TEST_CRASH_AT=n makes the n-th training step raise
# (on GK_TEST_CRASH_RANK only, if set): a crash or a failing rank.
LAUNCHER = r"""
import os, sys
from experiments import vae_model
crash_at, crash_rank = int(os.environ.get("GK_TEST_CRASH_AT", "0")), os.environ.get("GK_TEST_CRASH_RANK")
if crash_at and crash_rank in (None, os.environ.get("RANK")):
    real, calls = vae_model._step, []
    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == crash_at:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)
    vae_model._step = step
from experiments.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
ARGS = ["vae", "--data", "digits", "--latent", "4x3", "--hidden", "16", "--steps", "8", "--batch-size", "20",
        "--eval-samples", "4", "--log-every", "2", "--val-every", "4", "--checkpoint-every", "3", "--no-progress"]  # fmt: skip


def _launch(tmp_path: Path, args: list[str], nproc: int = 2, **env_extra: str) -> subprocess.CompletedProcess:
    pytest.importorskip("sklearn", reason="the torchrun runs use scikit-learn's digits")
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)


def _runs(out: Path) -> list:
    return [
        {k: v for k, v in r.items() if not k.endswith("_per_rank")}
        for r in numbers(json.loads((out / "results.json").read_text())["runs"])
    ]


def test_ddp_keeps_the_replicas_in_step_a_failing_rank_fails_the_job_and_resume_is_bit_identical(tmp_path):
    args = ARGS + ["--methods", "st_gumbel,reinforce"]
    straight = _launch(tmp_path, args + ["--out", "a"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["world_size"] == 2 and res["distributed"] == {"mode": "ddp", "backend": "gloo"}
    for run in res["runs"]:
        assert len(set(run["param_digest_per_rank"])) == 1 and len(set(run["noise_digest_per_rank"])) == 2
    assert straight.stdout.count("| st_gumbel |") == 1  # the table is printed once, by rank 0
    # rank 1 fails at step 7 of reinforce (its 15th step; the state of step 6 is saved): the job fails, no hang
    start = time.monotonic()
    crashed = _launch(
        tmp_path, args + ["--out", "b", "--dist-timeout", "60"], GK_TEST_CRASH_AT="15", GK_TEST_CRASH_RANK="1"
    )
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr and time.monotonic() - start < 150
    assert not (tmp_path / "b" / "results.json").exists()
    resumed = _launch(tmp_path, args + ["--out", "b"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["cells_resumed"] == 1 and again["runs"][1]["resumed_from_step"] == 6
    assert _runs(tmp_path / "b") == _runs(tmp_path / "a")
    assert [r["param_digest_per_rank"] for r in again["runs"]] == [r["param_digest_per_rank"] for r in res["runs"]]


def test_a_sweep_equals_a_serial_run(tmp_path, capsys):
    args = ARGS + ["--methods", "st,reinmax", "--seeds", "2"]
    sweep = _launch(tmp_path, args + ["--out", "sweep", "--sweep-parallel"])
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert run_cli(args + ["--out", tmp_path / "serial"], capsys)[0] == 0
    res = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert res["distributed"]["mode"] == "sweep" and "vae[rank 1]" in sweep.stderr
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [("st", 0), ("st", 1), ("reinmax", 0), ("reinmax", 1)]
    assert _runs(tmp_path / "sweep") == _runs(tmp_path / "serial")
