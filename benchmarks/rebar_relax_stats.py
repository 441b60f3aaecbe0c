"""Bias and variance of REBAR, RELAX and I-MLE against exact gradients (the numbers of the docs page).

1. The RELAX paper's Bernoulli toy, f(b) = (b - t)^2, one bit at theta = 0, t = 0.45 and 0.499:
   mean, bias in standard errors and variance of single estimates, with the exact gradient
   sigmoid'(theta)((1 - t)^2 - t^2) and the exact variance of single-sample REINFORCE; REBAR and
   RELAX at their initial controls and after tuning them (Adam on the variance gradient alone,
   theta fixed), beside REINFORCE-LOO and DisARM.
2. Training on the toy as in the RELAX paper's code (batch 1, Adam lr 0.01 on theta and on the
   control, t = 0.499, from theta = 0): the final P(b = 1) (the optimum is 0).
3. One-of-K by enumeration: two 4-class variables per row (one class masked), a non-linear f;
   the largest bias in standard errors and the summed variance of each estimator.
4. I-MLE on the k-subset exact-gradient toy (n = 10, k = 5, theta ~ N(0, 1), b = |N(0, 1)|,
   loss ||z - b||^2, the gradient of the exponential family by enumerating the 252 subsets):
   bias = 1 - cos(mean estimate, exact) and the norm ratio for several lambda, SIMPLE beside it;
   and the total variation of its forward law to the two exact laws on the subset histogram
   (n = 4, k = 2, weights 1..4).

    python benchmarks/rebar_relax_stats.py [--samples 200000] [--tune-steps 500] [--train-steps 5000]
        [--json rebar_relax_stats.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from typing import Any

import torch

import gumbelkit as gk
from gumbelkit import binary


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- 1. the Bernoulli toy


def toy_f(t: float):
    return lambda b: ((b - t) ** 2).sum(-1)


def single_estimates(method: str, t: float, rows: int, control=None, seed: int = 1, **options) -> torch.Tensor:
    logits = torch.zeros(rows, 1, requires_grad=True)
    s = binary.surrogate(logits, toy_f(t), method, generator=gen(seed), control=control, **options)
    (g,) = torch.autograd.grad(s.sum(), logits)
    return g[:, 0].double()


def tune(method: str, t: float, steps: int, lr: float, rows: int = 256):
    control = binary.METHODS[method].new_control((1,))
    opt = torch.optim.Adam(control.parameters(), lr=lr)
    g = gen(7)
    for _ in range(steps):
        opt.zero_grad()
        binary.surrogate(
            torch.zeros(rows, 1, requires_grad=True), toy_f(t), method, generator=g, control=control
        ).mean().backward()
        opt.step()
    return control


def toy_rows(samples: int, tune_steps: int) -> list[dict]:
    rows: list[dict[str, Any]] = []
    for t in (0.45, 0.499):
        exact = 0.25 * ((1 - t) ** 2 - t**2)
        reinforce_var = 0.5 * ((1 - t) ** 2 / 2) ** 2 + 0.5 * (t**2 / 2) ** 2 - exact**2
        rows.append({"t": t, "estimator": "reinforce (1 sample, exact)", "mean": exact, "z": 0.0, "var": reinforce_var})
        cells: list[tuple[str, str, tuple[str, float] | None, dict[str, Any]]] = [
            ("reinforce_loo:n=2", "reinforce_loo", None, {"n": 2}),
            ("disarm:n=1", "disarm", None, {"n": 1}),
            ("rebar (eta=1, lambda=0.5)", "rebar", None, {}),
            ("rebar (eta=1, lambda=0.5, independent)", "rebar", None, {"noise": "independent"}),
            (f"rebar tuned ({tune_steps} steps, lr 0.2)", "rebar", ("rebar", 0.2), {}),
            ("relax (untrained default)", "relax", None, {}),
            (f"relax tuned ({tune_steps} steps, lr 0.03)", "relax", ("relax", 0.03), {}),
        ]
        for index, (label, method, tuned, options) in enumerate(cells):
            control = None if tuned is None else tune(tuned[0], t, tune_steps, tuned[1])
            # an independent stream per cell: the biases in standard errors are independent too
            est = single_estimates(method, t, samples, control, seed=100 + index, **options)
            mean, var = float(est.mean()), float(est.var())
            z = (mean - exact) / math.sqrt(var / samples) if var > 0 else 0.0  # DisARM is exact for one bit
            row: dict[str, Any] = {"t": t, "estimator": label, "mean": mean, "z": z, "var": var}
            if isinstance(control, gk.estimators.RebarControl):
                row["eta"], row["lambda"] = float(control.eta.detach()), float(control.temperature.detach())
            rows.append(row)
        for row in rows[-len(cells) - 1 :]:
            row["var_vs_reinforce"] = row["var"] / reinforce_var
    return rows


# --------------------------------------------------------------------------- 2. training at t = 0.499


def train_rows(steps: int, t: float = 0.499) -> list[dict]:
    rows = []
    train_cells: tuple[tuple[str, str, dict[str, Any]], ...] = (
        ("reinforce_loo:n=2", "reinforce_loo", {}),
        ("rebar tuned", "rebar", {}),
        ("relax tuned", "relax", {}),
        ("relax:f_term=false tuned", "relax", {"f_term": False}),
    )
    for label, method, options in train_cells:
        theta = torch.zeros(1, 1, requires_grad=True)
        spec = binary.METHODS[method]
        control = spec.new_control((1,), **options) if spec.has_control else None
        params = [theta] + (list(control.parameters()) if control is not None else [])
        opt = torch.optim.Adam(params, lr=0.01)
        g = gen(11)
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            binary.surrogate(theta, toy_f(t), method, generator=g, control=control).sum().backward()
            opt.step()
        rows.append(
            {
                "estimator": label,
                "steps": steps,
                "p_final": float(torch.sigmoid(theta.detach())),
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


# --------------------------------------------------------------------------- 3. one-of-K by enumeration

THETA = torch.tensor([[0.5, -1.0, 1.2, 0.0], [0.3, float("-inf"), -0.7, 1.5]], dtype=torch.float64)
W = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.5, 2.0]], dtype=torch.float64)


def onehot_f(z: torch.Tensor) -> torch.Tensor:
    a = (z * W.to(z.dtype)).sum(-1)
    return a[..., 0] * a[..., 1] + torch.sin(a.sum(-1)) + (z[..., 0, 2] - 0.3) ** 2


def exact_onehot() -> torch.Tensor:
    th = THETA.clone().requires_grad_()
    lp = torch.log_softmax(th, -1)
    total = torch.zeros((), dtype=torch.float64)
    for i, j in itertools.product(range(4), repeat=2):
        if not torch.isinf(THETA[1, j]):
            z = torch.zeros(2, 4, dtype=torch.float64)
            z[0, i] = z[1, j] = 1.0
            total = total + torch.exp(lp[0, i] + lp[1, j]) * onehot_f(z)
    return torch.autograd.grad(total, th)[0]


def onehot_rows(samples: int, tune_steps: int) -> list[dict]:
    exact = exact_onehot()
    rows = []
    onehot_cells: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
        ("reinforce:n=2", "reinforce", {"n": 2}, False),
        ("rebar (eta=1, lambda=0.5)", "rebar", {}, False),
        ("rebar (independent)", "rebar", {"noise": "independent"}, False),
        (f"rebar tuned ({tune_steps} steps)", "rebar", {}, True),
        (f"relax tuned ({tune_steps} steps)", "relax", {}, True),
    )
    for label, method, options, tuned in onehot_cells:
        control = None
        if tuned:
            control = gk.get_spec(method).new_control((2, 4)).double()
            opt = torch.optim.Adam(control.parameters(), lr=0.03)
            tune_gen = gen(5)
            for _ in range(tune_steps):
                opt.zero_grad()
                x = THETA.expand(256, 2, 4).clone().requires_grad_()
                gk.surrogate(x, onehot_f, method, generator=tune_gen, control=control).mean().backward()
                opt.step()
        x = THETA.expand(samples, 2, 4).clone().requires_grad_()
        (g,) = torch.autograd.grad(
            gk.surrogate(x, onehot_f, method, generator=gen(9), control=control, **options).sum(), x
        )
        keep = torch.isfinite(THETA)
        mean, se = g.mean(0)[keep], g.std(0)[keep] / math.sqrt(samples)
        rows.append(
            {
                "estimator": label,
                "max_abs_z": float(((mean - exact[keep]) / se).abs().max()),
                "var_sum": float(g.var(0)[keep].sum()),
                "masked_grad_max": float(g[:, 1, 1].abs().max()),
            }
        )
    return rows


# --------------------------------------------------------------------------- 4. I-MLE


def imle_rows(samples: int) -> dict:
    g = gen(0)
    theta = torch.randn(10, generator=g, dtype=torch.float64)
    b = torch.randn(10, generator=g, dtype=torch.float64).abs()
    subsets = torch.tensor(
        [[1.0 if i in c else 0.0 for i in range(10)] for c in itertools.combinations(range(10), 5)], dtype=torch.float64
    )
    th = theta.clone().requires_grad_()
    log_p = torch.log_softmax(subsets @ th, 0)
    (exact,) = torch.autograd.grad((log_p.exp() * ((subsets - b) ** 2).sum(-1)).sum(), th)

    def stats(grads: torch.Tensor) -> dict:
        mean, sd = grads.mean(0), grads.std(0)
        keep = sd > 0  # an item whose estimate never varies has no standard error
        return {
            "bias_1_minus_cos": 1 - float(torch.nn.functional.cosine_similarity(mean, exact, dim=0)),
            "norm_ratio": float(mean.norm() / exact.norm()),
            "max_abs_z": float(((mean - exact)[keep] / (sd[keep] / math.sqrt(samples))).abs().max()),
        }

    grad_rows = []
    for lam in (0.1, 0.3, 1.0, 3.0, 10.0, 100.0):
        x = theta.expand(samples, 10).clone().requires_grad_()
        z = gk.subsets.imle(x, 5, generator=gen(1), lam=lam)
        ((z - b) ** 2).sum().backward()
        assert x.grad is not None
        grad_rows.append({"estimator": f"imle lam={lam:g}", **stats(x.grad)})
    x = theta.expand(samples, 10).clone().requires_grad_()
    ((gk.subsets.simple(x, 5, generator=gen(1)) - b) ** 2).sum().backward()
    assert x.grad is not None
    grad_rows.append({"estimator": "simple (reference)", **stats(x.grad)})

    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    pairs = list(itertools.combinations(range(4), 2))
    cond = torch.tensor([w[i] * w[j] for i, j in pairs])
    cond = cond / cond.sum()
    p = w / w.sum()
    pl = torch.tensor([p[i] * w[j] / (w.sum() - w[i]) + p[j] * w[i] / (w.sum() - w[j]) for i, j in pairs])
    law_rows = []
    for s in (10, 100):
        z = gk.subsets.imle(w.log().expand(samples, 4), 2, generator=gen(2), s=s)
        counts = torch.bincount(
            (z * torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)).sum(-1).long(), minlength=16
        )
        emp = torch.stack([counts[(1 << i) + (1 << j)] for i, j in pairs]).double() / samples
        law_rows.append(
            {
                "s": s,
                "tv_gumbel_topk": 0.5 * float((emp - pl).abs().sum()),
                "tv_conditional": 0.5 * float((emp - cond).abs().sum()),
            }
        )
    return {"gradient": grad_rows, "law": law_rows, "tv_between_exact_laws": 0.5 * float((pl - cond).abs().sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--tune-steps", type=int, default=500)
    ap.add_argument("--train-steps", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="rebar_relax_stats.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"args": vars(args), "torch": torch.__version__}

    out["toy"] = toy_rows(args.samples, args.tune_steps)
    print(f"1. Bernoulli toy at theta = 0, {args.samples} single estimates each (z: bias / standard error)")
    for r in out["toy"]:
        extra = f"  eta {r['eta']:.3g} lambda {r['lambda']:.3g}" if "eta" in r else ""
        print(
            f"  t={r['t']:<6} {r['estimator']:<44} mean {r['mean']:+.5f}  z {r['z']:+6.2f}  var {r['var']:.3e}  "
            f"({r['var_vs_reinforce']:.3g} x REINFORCE){extra}"
        )
    out["train"] = train_rows(args.train_steps)
    print(f"2. training at t = 0.499, batch 1, Adam lr 0.01, {args.train_steps} steps: final P(b = 1) (optimum 0)")
    for r in out["train"]:
        print(f"  {r['estimator']:<26} {r['p_final']:.4f}  ({r['seconds']:.0f} s)")
    out["onehot"] = onehot_rows(args.samples // 2, args.tune_steps // 2)
    print(f"3. one-of-K by enumeration (2 variables of 4 classes, one masked), {args.samples // 2} estimates")
    for r in out["onehot"]:
        print(
            f"  {r['estimator']:<28} max |z| {r['max_abs_z']:.2f}  summed variance {r['var_sum']:.3f}  "
            f"masked-class gradient {r['masked_grad_max']:g}"
        )
    out["imle"] = imle_rows(args.samples // 10)
    print(f"4. I-MLE on the k-subset toy (n = 10, k = 5, tau = 1, s = 10), {args.samples // 10} estimates")
    for r in out["imle"]["gradient"]:
        print(
            f"  {r['estimator']:<20} 1 - cos {r['bias_1_minus_cos']:.4f}  norm ratio {r['norm_ratio']:.3f}  "
            f"max |z| {r['max_abs_z']:.1f}"
        )
    for r in out["imle"]["law"]:
        print(
            f"  forward law, s = {r['s']}: TV to Gumbel-top-k {r['tv_gumbel_topk']:.4f}, to conditional {r['tv_conditional']:.4f}"
        )
    print(f"  TV between the two exact laws: {out['imle']['tv_between_exact_laws']:.4f}")
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
