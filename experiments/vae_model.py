"""The categorical VAE's model, data order, evaluation and training state (see :mod:`.vae`)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F

import gumbelkit as gk

from . import methods as M
from .config import UserError
from .data import Dataset, binarize
from .distributed import DistContext, rank_seed, shard_batch
from .exact import all_one_hot
from .runner import Timer

__all__ = [
    "CategoricalVAE",
    "DecodedCodes",
    "EpochSampler",
    "evaluate",
    "new_model",
    "rank_generator",
    "start",
    "train",
    "train_state",
]

_STREAMS = {"init": 1, "noise": 2, "data": 3, "eval": 4, "val": 5}


class CategoricalVAE(torch.nn.Module):
    """N independent K-way categorical latents and a Bernoulli decoder; ``forward`` returns the
    per-example training objective, so a DistributedDataParallel wrapper sees the call.

    ``control``: the learnable state of a method that has one (``spec.new_control((N, K))``), held
    as a submodule so that the optimiser trains it (the surrogate gives it its variance gradient)
    and the saved state holds it; None for a method without state."""

    def __init__(self, input_dim: int, n_latent: int, n_classes: int, hidden: list[int], control=None):
        super().__init__()
        self.input_dim, self.n_latent, self.n_classes = input_dim, n_latent, n_classes
        self.encoder = _mlp([input_dim, *hidden, n_latent * n_classes])
        self.decoder = _mlp([n_latent * n_classes, *reversed(hidden), input_dim])
        self.control = control

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).view(x.shape[0], self.n_latent, self.n_classes)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits (..., D) of codes z (..., N, K)."""
        return self.decoder(z.reshape(-1, self.n_latent * self.n_classes)).view(*z.shape[:-2], self.input_dim)

    def kl_to_prior(self, logits: torch.Tensor) -> torch.Tensor:
        """Analytic KL(q(z|x) || Uniform(K)^N): shape (B,). The prior is an expanded zero, no copy."""
        return gk.kl_categorical(logits, logits.new_zeros(()).expand_as(logits), dim=-1).sum(-1)

    @property
    def log_prior(self) -> float:
        """log p(z) of every code under the uniform prior."""
        return -self.n_latent * math.log(self.n_classes)

    def draw(self, logits: torch.Tensor, generator) -> torch.Tensor:
        """One exact one-hot code per row of q(z|x) (Gumbel-Max)."""
        return F.one_hot(gk.gumbel_max(logits, dim=-1, generator=generator), self.n_classes).to(logits.dtype)

    def log_q(self, logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) of one-hot codes z, summed over the latents."""
        return (torch.log_softmax(logits, -1) * z).sum(-1).sum(-1)

    def code_table(self, device) -> _ExactTable:
        return _ExactTable(self, device)

    def forward(self, x: torch.Tensor, method: M.Method, tau: float, *, generator=None) -> torch.Tensor:
        logits = self.encode(x)

        def reconstruction(z: torch.Tensor) -> torch.Tensor:  # z: (..., B, N, K) -> (..., B)
            return bernoulli_nll(self.decode(z), x.expand(*z.shape[:-2], x.shape[-1]))

        rec, _ = method.objective(logits, reconstruction, tau, dim=-1, generator=generator, control=self.control)
        return rec + self.kl_to_prior(logits)


def _mlp(sizes: list[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(sizes[:-1]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-2], sizes[-1]))


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) summed over pixels (BCE with logits: no log(sigmoid) underflow)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


class EpochSampler:
    """Batches of indices: a fresh permutation of the training set each epoch (last partial batch dropped)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm, self.pos, self.epoch = torch.empty(0, dtype=torch.long), 0, 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.perm.numel():
            self.perm, self.pos, self.epoch = torch.randperm(self.n, generator=self.generator), 0, self.epoch + 1
        self.pos += self.batch_size
        return self.perm[self.pos - self.batch_size : self.pos]

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos, self.epoch = state["perm"].clone(), int(state["pos"]), int(state["epoch"])


@torch.no_grad()
@torch.no_grad()
def evaluate(model: Any, x: torch.Tensor, *, generator, iw_samples: int = 0, exact: bool = False) -> dict:
    r"""Mean numbers (nats per image) with discrete latents: ``neg_elbo`` (one code per image),
    ``iw_bound`` (m = ``iw_samples``: :math:`-\log \frac1m \sum_j p(x|z_j) p(z_j) / q(z_j|x)`, Burda et
    al. 2016) and, with ``exact``, ``exact_neg_elbo`` and ``exact_nll`` summed over every code.

    ``model`` is a :class:`CategoricalVAE` or a :class:`~experiments.vae_bernoulli.BernoulliVAE`:
    either gives ``encode``, ``decode``, ``kl_to_prior``, ``log_prior``, ``draw`` (an exact code),
    ``log_q`` and ``code_table`` (every code decoded once)."""
    model.eval()
    device, m = next(model.parameters()).device, int(iw_samples)
    log_prior = model.log_prior
    sums = dict.fromkeys(["neg_elbo"] + ["iw_bound"] * bool(m) + ["exact_neg_elbo", "exact_nll"] * exact, 0.0)
    table = model.code_table(device) if exact else None
    per_chunk = min(max(1, 16384 // max(1, m)), table.rows_per_chunk if table else 1 << 30)
    for start in range(0, x.shape[0], per_chunk):
        xb = x[start : start + per_chunk].to(device)
        logits = model.encode(xb)
        kl = model.kl_to_prior(logits)
        sums["neg_elbo"] += float((bernoulli_nll(model.decode(model.draw(logits, generator)), xb) + kl).double().sum())
        if m:
            rep = logits.unsqueeze(0).expand(m, *logits.shape)
            z = model.draw(rep, generator)
            log_px = -bernoulli_nll(model.decode(z), xb.unsqueeze(0).expand(m, *xb.shape))
            log_w = (log_px + log_prior - model.log_q(rep, z)).double()
            # log-mean-exp over the m samples: logsumexp keeps the largest weight at exp(0)
            sums["iw_bound"] += float(-(torch.logsumexp(log_w, 0) - math.log(m)).sum())
        if table is not None:
            e_elbo, e_nll = table.evaluate(xb, logits, kl, log_prior)
            sums["exact_neg_elbo"] += e_elbo
            sums["exact_nll"] += e_nll
    return {key: v / x.shape[0] for key, v in sums.items()}


class DecodedCodes:
    """Every code decoded once, so that log p(x|z) of a batch over all codes is one matrix product."""

    def __init__(self, model: Any, codes: torch.Tensor):
        # float64 for the sums over codes: each log p(x|z) is a difference of terms of size ~D
        self.logits = torch.cat([model.decode(codes[i : i + 8192]) for i in range(0, codes.shape[0], 8192)]).double()
        self.softplus_sum = F.softplus(self.logits).sum(-1)  # log p(x|z) = x @ l - sum softplus(l)
        self.rows_per_chunk = max(1, (1 << 22) // codes.shape[0])

    def log_px(self, xb: torch.Tensor) -> torch.Tensor:
        return xb.double() @ self.logits.T - self.softplus_sum  # (b, C)

    def numbers(self, log_q_code, log_px, kl, log_prior) -> tuple[float, float]:
        """(exact -ELBO, exact NLL) summed over the batch, from log q of every code."""
        neg_elbo = -(log_q_code.exp() * log_px).sum(-1) + kl.double()
        return float(neg_elbo.sum()), float(-torch.logsumexp(log_px + log_prior, -1).sum())


class _ExactTable(DecodedCodes):
    """The K^N one-hot codes; log q of each is a sum of gathered log-probabilities."""

    def __init__(self, model: CategoricalVAE, device):
        codes = all_one_hot(model.n_latent, model.n_classes, dtype=torch.float32, device=device)  # (C, N, K)
        super().__init__(model, codes)
        self.index = codes.argmax(-1)

    def evaluate(self, xb, logits, kl, log_prior) -> tuple[float, float]:
        log_px = self.log_px(xb)
        log_q = torch.log_softmax(logits.double(), -1)
        log_q_code = torch.zeros_like(log_px)
        for n in range(self.index.shape[1]):
            log_q_code += log_q[:, n, :].index_select(1, self.index[:, n])
        return self.numbers(log_q_code, log_px, kl, log_prior)


# --------------------------------------------------------------------------- one run


@dataclasses.dataclass
class _Training:
    """The live objects of one run and its logged state (what a saved state holds)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    noise: torch.Generator
    data: torch.Generator
    sampler: EpochSampler
    trainer: torch.nn.Module
    state: dict
    resumed_from: int | None = None
    eval_seconds: float = 0.0


def rank_generator(seed: int, rank: int, stream: str, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(rank_seed(seed, rank, _STREAMS[stream]))


def new_model(cfg: Any, input_dim: int) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The untrained model of ``cfg.family`` and the event shape of its latent (a control's shape)."""
    if cfg.family == "bernoulli":
        from .vae_bernoulli import BernoulliVAE

        return BernoulliVAE(input_dim, cfg.latent_bits, cfg.hidden), (cfg.latent_bits,)
    n_latent, n_classes = cfg.latent_nk
    return CategoricalVAE(input_dim, n_latent, n_classes, cfg.hidden), (n_latent, n_classes)


def start(cfg: Any, ds: Dataset, ctx: DistContext, method: M.Method, seed: int, saved, cid: str) -> _Training:
    """The run at step 0, or at the saved state (the model, and the method's control when it has
    one, initialised without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rank_seed(seed, 0, _STREAMS["init"]))
        model, event_shape = new_model(cfg, ds.input_dim)
        if method.spec.has_control:  # after the model: its weights are those of a run without state
            model.control = method.spec.new_control(event_shape, **method.options)
        model = model.to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # data order is global: every rank draws the same permutation and takes its own share
    data = rank_generator(seed, 0, "data", "cpu")
    noise, sampler = (
        rank_generator(seed, ctx.rank, "noise", ctx.device),
        EpochSampler(len(ds.train), cfg.batch_size, data),
    )
    run = _Training(model, optimizer, noise, data, sampler, model, {"step": 0, "initial": None})
    if ctx.enabled:  # DDP averages the ranks' gradients, so every rank applies the same update
        from torch.nn.parallel import DistributedDataParallel

        run.trainer = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    run.state |= {"train_curve": [], "val_curve": [], "window": [0.0, 0], "train_seconds": 0.0}
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            noise = saved["noise"]  # one state per rank under DDP
            run.noise.set_state(noise[ctx.rank] if isinstance(noise, list) else noise)
            data.set_state(saved["data"])
            run.sampler.load_state_dict(saved["sampler"])
            run.state, run.resumed_from = saved["state"], saved["state"]["step"]
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise UserError(
                f"the saved state of {cid} does not fit this run ({type(exc).__name__}); delete it or pass --fresh"
            ) from None
    return run


def train_state(run: _Training, ctx: DistContext) -> dict:
    """What a saved state holds. Collective under DDP: every rank hands in its noise state."""
    noise = ctx.all_gather_object(run.noise.get_state()) if ctx.enabled else run.noise.get_state()
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "noise": noise}
    return state | {"data": run.data.get_state(), "sampler": run.sampler.state_dict(), "state": run.state}


def _step(cfg: Any, ds: Dataset, ctx: DistContext, method: M.Method, run: _Training, tau: float) -> float:
    """One Adam step on this rank's share of the next batch; returns the batch mean of the objective."""
    xb = ds.train[shard_batch(run.sampler.next(), ctx.rank, ctx.world_size)]
    if cfg.binarize == "dynamic":
        xb = binarize(xb, "dynamic", generator=run.data)
    run.trainer.train()
    try:
        loss = run.trainer(xb.to(ctx.device), method, tau, generator=run.noise).mean()
    except ValueError as exc:  # e.g. NaN logits after divergence: a clear message, not a traceback
        raise UserError(f"{method.label} failed at step {run.state['step'] + 1}: {exc} (try a smaller --lr)") from None
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return float(loss.detach())


def train(cfg: Any, ds: Dataset, ctx: DistContext, method: M.Method, seed: int, run: _Training, save) -> None:
    """The steps left, with the training curve, validation and saved states on schedule."""
    schedule, state = gk.schedules.parse_schedule(cfg.tau_schedule), run.state
    while state["step"] < cfg.steps:
        with Timer(ctx.device) as timer:
            loss = _step(cfg, ds, ctx, method, run, schedule(state["step"]))
        state["train_seconds"] += timer.seconds
        state["step"] = step = state["step"] + 1
        state["window"] = [state["window"][0] + loss, state["window"][1] + 1]
        if step % cfg.log_every == 0 or step == cfg.steps:
            if ctx.enabled:  # the curve shows the global batch: sum the ranks' windows
                total = torch.tensor(state["window"], dtype=torch.float64, device=ctx.device)
                torch.distributed.all_reduce(total)
                state["window"] = [float(total[0]), int(total[1])]
            state["train_curve"].append([step, state["window"][0] / state["window"][1]])
            state["window"] = [0.0, 0]
        if step % cfg.val_every == 0 or step == cfg.steps:
            with Timer(ctx.device) as timer:
                val = evaluate(run.model, ds.val, generator=rank_generator(seed, 0, "val", ctx.device))
            run.eval_seconds += timer.seconds
            state["val_curve"].append([step, val["neg_elbo"]])
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save()
