"""The gradient lab's problems: three enumerable losses and the 70/30 training demonstration (see :mod:`.gradients`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

import gumbelkit as gk

from . import methods as M
from .exact import exact_expectation
from .runner import Timer, generator

__all__ = ["SEVENTY_THIRTY", "Problem", "demo_run", "make_problem", "tuned_control"]


@dataclasses.dataclass
class Problem:
    """N categorical variables with K classes and a loss f of their codes (M, N, K) -> (M,).
    ``params`` are the free logits, (N, K), or (K,) when ``tied`` (N draws sharing one set)."""

    name: str
    description: str
    n: int
    k: int
    tied: bool
    params: torch.Tensor
    f: Callable[[torch.Tensor], torch.Tensor]

    def logits(self, p: torch.Tensor) -> torch.Tensor:
        return p.unsqueeze(-2).expand(*p.shape[:-1], self.n, self.k) if self.tied else p


class _Cast:
    """float64 tensors handed out in any dtype and device (cached), for f."""

    def __init__(self, **tensors: torch.Tensor):
        self.base, self.cache = tensors, {}  # type: dict[str, torch.Tensor], dict[tuple, torch.Tensor]

    def __call__(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.dtype, like.device)
        if key not in self.cache:
            self.cache[key] = self.base[name].to(device=like.device, dtype=like.dtype)
        return self.cache[key]


def _quadratic(gen: torch.Generator, device) -> Problem:
    n, k = 3, 6  # a soft target t in [0, 1]^(N x K): the categorical REBAR toy
    t = torch.rand(n, k, generator=gen, dtype=torch.float64).to(device)
    theta = (0.5 * torch.randn(n, k, generator=gen, dtype=torch.float64)).to(device)
    c = _Cast(t=t)
    return Problem(
        "quadratic",
        f"f(z) = ‖z − t‖², N={n} variables, K={k} classes",
        n,
        k,
        False,
        theta,
        lambda z: ((z - c("t", z)) ** 2).sum((-1, -2)),
    )


def _decoder(gen: torch.Generator, device) -> Problem:
    n, k, hidden, d = 4, 8, 64, 20

    def w(shape, fan_in, gain):
        return gain * torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)

    w1, b1, w2, b2 = w((n * k, hidden), n, 1.5), w((hidden,), 1, 0.1), w((hidden, d), hidden, 2.0), w((d,), 1, 0.1)
    theta = 0.5 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    # the target: a sample of the decoder's own output for a random code, so the loss is in range
    code = torch.nn.functional.one_hot(torch.randint(0, k, (n,), generator=gen), k).to(torch.float64)
    x = torch.bernoulli(torch.sigmoid(torch.relu(code.reshape(-1) @ w1 + b1) @ w2 + b2), generator=gen)
    c = _Cast(w1=w1.to(device), b1=b1.to(device), w2=w2.to(device), b2=b2.to(device), x=x.to(device))

    def f(z):
        out = torch.relu(z.reshape(*z.shape[:-2], -1) @ c("w1", z) + c("b1", z)) @ c("w2", z) + c("b2", z)
        return torch.nn.functional.binary_cross_entropy_with_logits(
            out, c("x", z).expand_as(out), reduction="none"
        ).sum(-1)

    desc = f"f(z) = BCE(x, sigmoid(MLP(z))), MLP {n * k}-{hidden}-{d} fixed random, N={n}, K={k}"
    return Problem("decoder", desc, n, k, False, theta.to(device), f)


#: The 70/30 task: codes -> points (x1, x2, their midpoint, a distractor); data x1 (70%), x2 (30%).
SEVENTY_THIRTY: dict[str, Any] = {
    "codebook": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 1.0]],
    "data": [[1.0, 0.0], [0.0, 1.0]],
    "weights": [0.7, 0.3],
    "bandwidth": math.sqrt(2.0),  # sigma = ||x1 - x2||
}


def _mmd_parts():
    cb, y, w = (torch.tensor(SEVENTY_THIRTY[k], dtype=torch.float64) for k in ("codebook", "data", "weights"))
    s2 = 2.0 * SEVENTY_THIRTY["bandwidth"] ** 2
    return cb, y, w, s2, float((w[:, None] * w[None, :] * torch.exp(-(torch.cdist(y, y) ** 2) / s2)).sum())


def _seventy_thirty_loss(device) -> Callable[[torch.Tensor], torch.Tensor]:
    cb, y, w, s2, kyy = _mmd_parts()
    c = _Cast(cb=cb.to(device), y=y.to(device), w=w.to(device))

    def f(z):  # (M, 2, K) -> the pair's MMD^2 term (M,)
        x = z @ c("cb", z)
        k12 = torch.exp(-((x[..., 0, :] - x[..., 1, :]) ** 2).sum(-1) / s2)
        return k12 - (torch.exp(-((x.unsqueeze(-2) - c("y", z)) ** 2).sum(-1) / s2) @ c("w", z)).sum(-1) + kyy

    return f


def _seventy_thirty(gen: torch.Generator, device) -> Problem:
    k = len(SEVENTY_THIRTY["codebook"])
    theta = (0.5 * torch.randn(k, generator=gen, dtype=torch.float64)).to(device)
    desc = (
        "pair MMD^2 (Gaussian kernel) between generated points and data {x1: 0.7, x2: 0.3}; "
        f"K={k} codes -> fixed points, N=2 independent draws sharing the logits"
    )
    return Problem("70_30", desc, 2, k, True, theta, _seventy_thirty_loss(device))


def make_problem(name: str, seed: int = 0, device="cpu") -> Problem:
    """Problem ``name`` of :data:`PROBLEMS`, built deterministically from ``seed``."""
    build = {"quadratic": _quadratic, "decoder": _decoder, "70_30": _seventy_thirty}[name]
    return build(generator(seed, name), torch.device(device))


def _classify(x: torch.Tensor, data: torch.Tensor, radius: float) -> torch.Tensor:
    """0 near x1, 1 near x2, 2 elsewhere (a blend or the distractor)."""
    near, which = torch.cdist(x, data).min(-1)
    return torch.where(near < radius, which, torch.full_like(which, 2))


def demo_run(method: M.Method, tau: float, seed: int, steps: int, batch: int, device, n_eval: int = 20_000) -> dict:
    """Train the 70/30 generator's logits with a sample method; where its outputs land."""
    cb, y, w, s2, kyy = _mmd_parts()
    cb, y, w = (t.to(device=device, dtype=torch.float32) for t in (cb, y, w))
    k, gen, timer = cb.shape[0], generator(seed, "demo", method.tag, tau, device=device), Timer().start()
    theta = torch.zeros(k, device=device, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    # cosine decay to zero: the last steps average out the sampling noise of the batch loss
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    off_diag = ~torch.eye(batch, dtype=torch.bool, device=device)
    for _ in range(steps):
        x = gk.sample(theta.expand(batch, k), method.name, tau, generator=gen, **method.options) @ cb
        # the unbiased U-statistic of MMD^2: the mean over pairs i != j of the pair loss f
        loss = torch.exp(-(torch.cdist(x, x) ** 2) / s2)[off_diag].mean()
        loss = loss - 2 * (torch.exp(-(torch.cdist(x, y) ** 2) / s2) @ w).mean() + kyy
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        x = gk.sample(theta.expand(n_eval, k), method.name, tau, generator=gen, **method.options) @ cb
        cls = _classify(x, y, 0.1 * float(torch.linalg.vector_norm(y[0] - y[1])))
        frac = [float((cls == c).float().mean()) for c in range(3)]
        d = y[1] - y[0]
        hist = torch.histc(((x - y[0]) @ d) / float(d @ d), bins=44, min=-0.05, max=1.05) / n_eval
        p = torch.softmax(theta.detach().double(), 0)
    # the trained logits deployed as a discrete generator: exact code probabilities and MMD^2
    mmd = float(exact_expectation(theta.detach().double().expand(2, k), _seventy_thirty_loss(device)))
    return {
        "as_trained": dict(zip(("x1", "x2", "other"), frac)),
        "hard": {"x1": float(p[0]), "x2": float(p[1]), "other": float(p[2:].sum())},
        "code_probs": p.tolist(),
        "mean_output": x.mean(0).tolist(),
        "proj_hist": hist.tolist(),
        "mmd2_hard": mmd,
        "final_loss": float(loss.detach()),
        "wall_s": timer.stop(),
    }


def tuned_control(problem: Problem, method: M.Method, tau, steps: int, lr: float, rows: int, *, generator):
    """The learnable control of a method that has one (``spec.new_control``; None otherwise), its
    variance tuned at the problem's fixed logits: ``steps`` Adam steps at ``lr``, each on the mean of
    ``rows`` estimates (the surrogate carries the control's variance gradient), then frozen, so the
    estimates measured with it are of one fixed estimator. Initialised from ``generator``'s seed
    (the global RNG is left as it was)."""
    if not method.spec.has_control:
        return None
    event = tuple(problem.logits(problem.params.unsqueeze(0)).shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(generator.initial_seed()))
        control = method.spec.new_control(event, **method.options).to(problem.params.device)
    opt = torch.optim.Adam(control.parameters(), lr=lr)

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return problem.f(z.reshape(-1, problem.n, problem.k)).reshape(z.shape[:-2])

    for _ in range(steps):
        leaf = problem.params.expand(rows, *problem.params.shape).clone().requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        method.objective(problem.logits(leaf), loss_fn, tau, generator=generator, control=control)[0].mean().backward()
        opt.step()
    return control.requires_grad_(False)
