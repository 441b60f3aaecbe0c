"""Tests of the gradient estimator lab (gumbelkit.experiments.gradients and ._enumerate)."""

from __future__ import annotations

import argparse
import json
import math
from statistics import NormalDist

import pytest
import torch

import gumbelkit
from gumbelkit.experiments import gradients as G
from gumbelkit.experiments._common import UserError
from gumbelkit.experiments._enumerate import all_one_hot, exact_expectation, exact_gradient


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine is shared and has 2 cores: two torch threads per process oversubscribe it
    # (observed: the demo test 30x slower), and the lab itself measures with one thread.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _jt(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J(p)^T v for the softmax Jacobian at probabilities p (last dim)."""
    return p * v - p * (p * v).sum(-1, keepdim=True)


# --------------------------------------------------------------------------- enumeration


def test_all_one_hot_lists_every_outcome_once():
    codes = all_one_hot(3, 4)
    assert codes.shape == (64, 3, 4)
    assert torch.equal(codes.sum(-1), torch.ones(64, 3, dtype=codes.dtype))
    index = codes.argmax(-1)
    assert len({tuple(r) for r in index.tolist()}) == 64


def test_all_one_hot_refuses_huge_enumerations():
    with pytest.raises(UserError, match="outcomes"):
        all_one_hot(10, 10)


def test_exact_gradient_matches_closed_form_linear_and_product():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    c = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    p = torch.softmax(theta, -1)
    # Linear f(z) = <c, z>: E = sum_n <c_n, p_n>, gradient J(p_n)^T c_n.
    value, grad = exact_gradient(theta, lambda t: t, lambda z: (z * c).sum((-1, -2)))
    assert torch.allclose(value, (c * p).sum(), rtol=1e-12)
    assert torch.allclose(grad, _jt(p, c), rtol=1e-10, atol=1e-14)
    # Product f(z) = z_1[a] z_2[b]: E = p_1[a] p_2[b], a cross-variable term.
    a, b = 1, 3
    value, grad = exact_gradient(theta, lambda t: t, lambda z: z[:, 0, a] * z[:, 1, b])
    assert torch.allclose(value, p[0, a] * p[1, b], rtol=1e-12)
    expected = torch.stack(
        [_jt(p[0], torch.eye(5, dtype=p.dtype)[a]) * p[1, b], _jt(p[1], torch.eye(5, dtype=p.dtype)[b]) * p[0, a]]
    )
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-14)


def test_quadratic_problem_truth_is_the_closed_form():
    # On one-hot z, ||z - t||^2 = 1 - 2 <z, t> + ||t||^2 per variable, so g = J(p)^T (-2 t).
    prob = G.make_problem("quadratic", seed=3)
    k = prob.k
    eye = torch.eye(k, dtype=torch.float64)
    # Recover t up to a per-variable constant from f: moving variable n from class 0 to class j
    # (the others held at class 0) changes f by -2 (t[n, j] - t[n, 0]).
    base = torch.zeros(1, prob.n, k, dtype=torch.float64)
    base[..., 0] = 1
    lin = torch.zeros(prob.n, k, dtype=torch.float64)
    for n in range(prob.n):
        for j in range(k):
            z = base.clone()
            z[0, n] = eye[j]
            lin[n, j] = -0.5 * (prob.f(z) - prob.f(base))  # = t[n, j] - t[n, 0]
    _, grad = exact_gradient(prob.params, prob.logits, prob.f)
    p = torch.softmax(prob.params, -1)
    assert torch.allclose(grad, _jt(p, -2 * lin), rtol=1e-9, atol=1e-12)  # J^T kills the constant t[n, 0]


def test_tied_70_30_truth_is_the_mmd_closed_form():
    # E over an i.i.d. pair = p^T A p - 2 p^T b + c, so the gradient is J(p)^T (2 A p - 2 b).
    prob = G.make_problem("70_30", seed=1)
    cb, y, w, s2, kyy = G._mmd_parts()
    A = torch.exp(-(torch.cdist(cb, cb) ** 2) / s2)
    b = torch.exp(-(torch.cdist(cb, y) ** 2) / s2) @ w
    p = torch.softmax(prob.params, -1)
    value, grad = exact_gradient(prob.params, prob.logits, prob.f)
    assert grad.shape == (prob.k,)
    assert torch.allclose(value, p @ A @ p - 2 * p @ b + kyy, rtol=1e-10)
    assert torch.allclose(grad, _jt(p, 2 * A @ p - 2 * b), rtol=1e-9, atol=1e-13)
    # MMD^2 >= 0 and exactly 0 at the 70/30 distribution over the codes of x1 and x2.
    target = torch.log(torch.tensor([0.7, 0.3, 1e-300, 1e-300], dtype=torch.float64))
    assert abs(float(exact_expectation(target.expand(2, 4), prob.f))) < 1e-12
    assert float(value) > 0


# --------------------------------------------------------------------------- the estimators in the lab


def _z_scores(prob, label, tau, samples, seed):
    _, truth = exact_gradient(prob.params, prob.logits, prob.f)
    truth = truth.reshape(-1)
    res = G.estimate(
        prob,
        label,
        tau,
        float(truth.norm()),
        generator=torch.Generator().manual_seed(seed),
        samples=samples,
        chunk=4096,
    )
    mom = res["moments"]
    return (mom.mean() - truth) / (mom.variances() / res["samples"]).sqrt()


# Bonferroni over the P coordinates: P(max |z| > c) <= P * 2 (1 - Phi(c)) = ALPHA for an unbiased
# estimator (normal approximation of the mean of 20k draws), so an unbiased estimator fails this
# test with probability at most ALPHA = 1e-4 per call with a fresh seed (the seed here is fixed).
ALPHA = 1e-4


def _threshold(p: int) -> float:
    return NormalDist().inv_cdf(1 - ALPHA / (2 * p))


@pytest.mark.parametrize("problem", ["quadratic", "70_30"])
def test_reinforce_is_statistically_unbiased(problem):
    prob = G.make_problem(problem, seed=0)
    z = _z_scores(prob, "reinforce_n2", None, 20_000, seed=11)
    assert z.numel() == prob.params.numel()
    assert float(z.abs().max()) < _threshold(z.numel()), z


def test_the_unbiasedness_test_can_fail():
    # Power check of the same test: straight-through Gumbel at tau = 1 is biased (about 40% of ||g||).
    prob = G.make_problem("quadratic", seed=0)
    z = _z_scores(prob, "st_gumbel", 1.0, 20_000, seed=11)
    assert float(z.abs().max()) > _threshold(z.numel())


@pytest.mark.parametrize("problem", G.PROBLEMS)
def test_softmax_has_zero_variance_and_the_exact_relaxed_gradient(problem):
    prob = G.make_problem(problem, seed=0)
    tau = 0.5
    res = G.estimate(prob, "softmax", tau, 1.0, generator=torch.Generator().manual_seed(0), samples=300, chunk=128)
    mom = res["moments"]
    assert mom.variance_trace() == 0.0
    # Its one deterministic value is the gradient of f(softmax(theta / tau)).
    theta = prob.params.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prob.f(torch.softmax(prob.logits(theta) / tau, -1).unsqueeze(0)).sum(), theta)
    assert torch.allclose(mom.mean(), g.reshape(-1), rtol=1e-4, atol=1e-6)


def test_gumbel_softmax_is_unbiased_for_its_relaxed_objective():
    # The mean Gumbel-Softmax gradient must match an independent float64 estimate of the relaxed gradient.
    prob = G.make_problem("70_30", seed=0)
    tau = 1.0
    res = G.estimate(
        prob, "gumbel_softmax", tau, 1.0, generator=torch.Generator().manual_seed(5), samples=20_000, chunk=5000
    )
    theta = prob.params.expand(20_000, prob.k).clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(6)
    u = torch.rand(20_000, prob.n, prob.k, generator=gen, dtype=torch.float64)
    y = torch.softmax((prob.logits(theta) - torch.log(-torch.log(u))) / tau, -1)
    (g,) = torch.autograd.grad(prob.f(y).sum(), theta)
    se = (res["moments"].variances() / 20_000 + g.var(0) / 20_000).sqrt()
    z = (res["moments"].mean() - g.mean(0)) / se
    assert float(z.abs().max()) < _threshold(prob.k)


def test_estimator_gradients_are_per_sample_and_reproducible():
    prob = G.make_problem("decoder", seed=0)
    g1, v1 = G.estimator_gradients(prob, "st_gumbel", 0.5, 16, generator=torch.Generator().manual_seed(3))
    g2, v2 = G.estimator_gradients(prob, "st_gumbel", 0.5, 16, generator=torch.Generator().manual_seed(3))
    assert g1.shape == (16, prob.params.numel()) and v1.shape == (16,)
    assert torch.equal(g1, g2) and torch.equal(v1, v2)


def test_reinforce_per_sample_gradients_follow_the_loo_formula():
    # Replay the lab's draws (same generator state, same shapes) and rebuild each estimate by hand:
    # g_b = (1/n) sum_i (f_i - mean_{j != i} f_j) (onehot(z_i) - p), per variable.
    prob = G.make_problem("decoder", seed=0)
    n, batch = 3, 8
    grads, losses = G.estimator_gradients(prob, "reinforce_n3", None, batch, generator=torch.Generator().manual_seed(9))
    logits = prob.params.float().expand(batch, prob.n, prob.k)
    rep = logits.unsqueeze(0).expand(n, *logits.shape)
    index = gumbelkit.gumbel_max(rep, generator=torch.Generator().manual_seed(9))
    codes = torch.nn.functional.one_hot(index, prob.k).float()  # (n, B, N, K)
    f = prob.f(codes.reshape(n * batch, prob.n, prob.k)).reshape(n, batch)
    baseline = (f.sum(0, keepdim=True) - f) / (n - 1)
    p = torch.softmax(logits, -1)
    manual = (((f - baseline)[..., None, None]) * (codes - p)).mean(0).reshape(batch, -1)
    assert torch.allclose(grads, manual, rtol=1e-5, atol=1e-6)
    assert torch.allclose(losses, f.mean(0))
    assert not torch.allclose(grads[0], grads[1])  # independent samples


def test_moments_match_direct_statistics():
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + torch.randn(500, 7, generator=gen, dtype=torch.float64)
    truth = torch.randn(7, generator=gen, dtype=torch.float64)
    mom = G._Moments()
    for chunk in x.split(128):
        mom.add(chunk, chunk[:, 0])
    assert torch.allclose(mom.mean(), x.mean(0))
    assert math.isclose(mom.variance_trace(), float(x.var(0).sum()), rel_tol=1e-10)
    assert math.isclose(mom.sq_error(truth), float(((x - truth) ** 2).sum(1).mean()), rel_tol=1e-10)
    m, se = mom.value_mean_stderr()
    assert math.isclose(m, float(x[:, 0].mean()), rel_tol=1e-12)
    assert math.isclose(se, float(x[:, 0].std() / math.sqrt(500)), rel_tol=1e-10)


def test_auto_samples_reach_the_target_stderr():
    prob = G.make_problem("70_30", seed=0)
    _, truth = exact_gradient(prob.params, prob.logits, prob.f)
    norm = float(truth.norm())
    res = G.estimate(
        prob,
        "reinforce_n2",
        None,
        norm,
        generator=torch.Generator().manual_seed(0),
        samples="auto",
        target_stderr=0.05,
        min_samples=500,
        max_samples=50_000,
        chunk=1000,
    )
    se = math.sqrt(res["moments"].variance_trace() / res["samples"]) / norm
    assert 500 < res["samples"] < 50_000
    assert se < 0.05 * 1.15  # the pilot's variance estimate is itself noisy


# --------------------------------------------------------------------------- 70/30 demonstration


def test_demo_softmax_collapses_and_st_gumbel_reproduces_70_30():
    soft = G._demo_run("softmax", 0.5, 0, steps=150, batch=64, device=torch.device("cpu"), n_eval=2000)
    # No noise: every generated output is the same blend, near neither data point.
    assert soft["as_trained"]["other"] == 1.0
    assert max(soft["proj_hist"]) == 1.0
    st = G._demo_run("st_gumbel", 0.5, 0, steps=300, batch=64, device=torch.device("cpu"), n_eval=2000)
    assert abs(st["hard"]["x1"] - 0.7) < 0.08 and abs(st["hard"]["x2"] - 0.3) < 0.08
    assert st["mmd2_hard"] < 0.1 * soft["mmd2_hard"]


# --------------------------------------------------------------------------- command line


def _parse(argv):
    parser = argparse.ArgumentParser()
    G.add_arguments(parser)
    return G.config_from_args(parser.parse_args(argv))


TINY = [
    "--problems",
    "quadratic,70_30",
    "--methods",
    "softmax,st_gumbel,gumbel_rao:k=3,reinforce:n=2",
    "--taus",
    "0.5,1",
    "--samples",
    "64",
    "--chunk",
    "32",
    "--demo-steps",
    "5",
    "--demo-seeds",
    "1",
    "--demo-methods",
    "softmax,st_gumbel",
    "--demo-batch",
    "8",
]
REQUIRED = {"problem", "method", "tau", "rel_bias", "variance", "cosine", "mse", "stderr_bias", "us_per_grad"}


def test_command_smoke_writes_the_schema_and_resumes(tmp_path, capsys):
    out, figs = tmp_path / "out", tmp_path / "img"
    results = G.main(_parse(TINY + ["--out", str(out), "--fig-dir", str(figs)]))
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * (3 * 2 + 1)
    for row in rows:
        assert set(row) >= REQUIRED
        assert row["samples"] == 64
        assert row["rel_bias"] >= 0 and row["variance"] >= 0 and row["us_per_grad"] > 0
        assert -1.0 - 1e-9 <= row["cosine"] <= 1.0 + 1e-9
        assert (row["tau"] is None) == row["method"].startswith("reinforce")
        assert row["f_evals"] == (2 if row["method"] == "reinforce:n=2" else 1)
        assert (row["rel_bias_relaxed"] is not None) == (row["method"] in ("st_gumbel", "gumbel_rao:k=3"))
        assert (
            row["options"]
            == {"st_gumbel": {}, "softmax": {}, "gumbel_rao": {"k": 3}, "reinforce": {"n": 2}}[row["estimator"]]
        )
    assert {r["method"] for r in rows if r["variance"] == 0.0} == {"softmax"}
    assert set(data["problems"]) == {"quadratic", "70_30"}
    assert set(data["demo"]["summary"]) == {"softmax", "st_gumbel"}
    md = (out / "results.md").read_text()
    assert "| st_gumbel |" in md and "## 70_30" in md
    for name in ("gradients_quadratic.png", "gradients_70_30.png", "gradients_70_30_demo.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    # A second run finds every cell in the checkpoint; a fresh one recomputes the same numbers
    # (every cell has its own seeded stream); only the timings differ.
    again = G.main(_parse(TINY + ["--out", str(out), "--no-plots"]))
    assert again["cells_computed"] == 0 and again["rows"] == results["rows"] and again["figures"] == []
    fresh = G.main(_parse(TINY + ["--out", str(out), "--no-plots", "--fresh"]))
    assert fresh["cells_computed"] > 0
    key = ("problem", "method", "tau", "rel_bias", "variance", "mse", "cosine")
    assert [[r[k] for k in key] for r in fresh["rows"]] == [[r[k] for k in key] for r in results["rows"]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--taus", "0.5,-1"], "expected tau > 0, got -1.0"),
        (["--methods", "softmax,bogus"], "unknown --methods 'bogus'"),
        (["--methods", "reinforce_n1"], "2 <= n <= 1000"),
        (["--methods", "reinforce:n=1"], "2 <= n <= 1000"),
        (["--methods", "gumbel_rao:q=3"], "unknown option 'q' for method 'gumbel_rao'; valid options: k"),
        (["--methods", "st:k=3"], "st takes no options"),
        (["--methods", "gumbel_rao:k=three"], "expected k to be an integer"),
        (["--problems", "quadratic,nope"], "unknown problem 'nope'"),
        (["--samples", "1"], "expected --samples >= 2"),
        (["--samples", "lots"], "expected --samples 'auto' or an integer"),
        (["--demo-methods", "softmax,reinforce"], "unknown --demo-methods 'reinforce'"),
    ],
)
def test_bad_input_is_a_user_error(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _parse(argv)


def test_unwritable_out_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        G.main(_parse(TINY + ["--out", str(blocker)]))


def test_cli_entry_point(tmp_path, capsys, monkeypatch):
    from gumbelkit import cli

    try:
        cli.build_parser()
    except ModuleNotFoundError as exc:  # the sibling experiments (vae, bench) are written separately
        if exc.name not in ("gumbelkit.experiments.vae", "gumbelkit.experiments.bench"):
            raise
        monkeypatch.setattr(cli, "COMMANDS", {"gradients": cli.COMMANDS["gradients"]})
    assert cli.main(["gradients", *TINY, "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "results.json").exists()
    capsys.readouterr()
    assert cli.main(["gradients", "--taus", "-1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gumbelkit gradients: error: expected tau > 0, got -1.0"]


def test_relaxed_bias_is_nan_not_a_crash_when_the_reference_gradient_vanishes():
    # At tiny tau a float32 relaxed gradient can underflow to exactly zero: the relative bias
    # against it is undefined (NaN in the table), never a ZeroDivisionError.
    problem = G.make_problem("quadratic", 0)
    _, truth = G.exact_gradient(problem.params, problem.logits, problem.f)
    truth = truth.reshape(-1)
    res = G.estimate(problem, "st_gumbel", 0.5, 1.0, generator=torch.Generator().manual_seed(0), samples=8, chunk=8)
    ref = {"grad": torch.zeros_like(truth), "variance": 0.0, "samples": 8}
    row = G._row("quadratic", "st_gumbel", 0.5, truth, res, ref)
    assert math.isnan(row["rel_bias_relaxed"]) and math.isnan(row["stderr_bias_relaxed"])
    assert math.isfinite(row["rel_bias"])
    zero = G._row("quadratic", "st_gumbel", 0.5, torch.zeros_like(truth), res, None)
    assert math.isnan(zero["rel_bias"]) and math.isnan(zero["rel_variance"])


def test_taus_below_the_documented_minimum_are_refused_and_the_minimum_runs(tmp_path):
    from gumbelkit.experiments._common import MIN_TAU

    with pytest.raises(UserError, match="expected tau >= 0.001"):
        _parse(["--taus", "1e-8"])
    with pytest.raises(UserError, match="expected --demo-tau >= 0.001"):
        _parse(["--demo-tau", "1e-8"])
    parser = argparse.ArgumentParser()
    G.add_arguments(parser)
    assert f">= {MIN_TAU:g}" in parser.format_help()
    res = G.main(
        _parse(
            [
                "--problems",
                "quadratic,70_30",
                "--methods",
                "gumbel_softmax,st_gumbel,gumbel_rao_k3",
                "--taus",
                str(MIN_TAU),
                "--samples",
                "16",
                "--chunk",
                "16",
                "--no-demo",
                "--no-plots",
                "--out",
                str(tmp_path),
            ]
        )
    )
    for row in res["rows"]:
        for key in ("rel_bias", "variance", "mse"):
            assert not math.isinf(row[key]), (row["method"], key)


def test_method_labels_options_and_the_deprecated_syntax():
    cfg = _parse(["--methods", "st,gumbel_rao:k=100,gumbel_rao,reinforce:n=8,gumbel_rao_k10,reinforce_n2,st"])
    # the same method with different options is allowed; duplicates are dropped; the former
    # NAME_<option><value> labels are read as NAME:<option>=<value>
    assert cfg["methods"] == [
        "st",
        "gumbel_rao:k=100",
        "gumbel_rao",
        "reinforce:n=8",
        "gumbel_rao:k=10",
        "reinforce:n=2",
    ]
    assert _parse([])["methods"] == [
        "softmax",
        "gumbel_softmax",
        "st",
        "st_gumbel",
        "gumbel_rao:k=10",
        "gumbel_rao:k=100",
        "reinmax",
        "reinforce:n=2",
        "reinforce:n=8",
    ]
    # Random streams are keyed by the former label (the tag), so old and new spellings draw the same numbers.
    prob = G.make_problem("quadratic", seed=0)
    for old, new in (("gumbel_rao_k3", "gumbel_rao:k=3"), ("reinforce_n3", "reinforce:n=3")):
        a = G.estimator_gradients(prob, old, 0.5, 8, generator=torch.Generator().manual_seed(1))
        b = G.estimator_gradients(prob, new, 0.5, 8, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert G._choice(old).tag == G._choice(new).tag == old
