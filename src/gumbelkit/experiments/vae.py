"""Categorical VAE benchmark: which gradient estimator should I use for discrete latent variables?

The model and training follow Jang, Gu, Poole (ICLR 2017) and their public notebook (DESIGN §6):
encoder D-512-256-(N*K), decoder (N*K)-256-512-D, ReLU, Bernoulli likelihood on binarised pixels,
N independent K-way categorical latents with a uniform prior and the KL term computed
analytically, Adam(lr 1e-3), batch 100, tau = max(0.5, exp(-3e-5 t)) updated every 1000 steps.
Every one of these is a flag with that default.

Training objective per datapoint x (what each method's gradient estimates):
    -ELBO(x) = E_{q(z|x)}[-log p(x|z)] + KL(q(z|x) || Uniform),
the expectation replaced by the method's own objective from the estimator registry
(:meth:`gumbelkit.MethodSpec.objective`): one sample z from ``gumbelkit.sample`` (relaxed or
exactly one-hot), or, for a score-function method, its n one-hot samples and surrogate. Methods
and their options come from ``--methods NAME[:OPTION=VALUE,...]`` (any registered method,
plugins included); nothing here depends on a method's name.

Evaluation on the test split always uses *discrete* latents:
- ``test_neg_elbo``: one z ~ q(z|x) per test image, -log p(x|z) + analytic KL, averaged.
- ``test_iw_bound``: -log (1/m) sum_j p(x, z_j) / q(z_j|x), z_j ~ q(z|x), m = --eval-samples
  (an upper bound on -log p(x) that tightens as m grows; Burda et al., 2016).
- when K^N <= 65,536: ``test_exact_neg_elbo`` and ``test_exact_nll`` = -log sum_z p(x|z) p(z),
  summing over every code, so the comparison carries no sampling noise at all.
The same numbers for the untrained model are reported as ``initial_*``.

Reproducibility: one ``torch.Generator`` for the estimator noise and one for the data order (and
dynamic binarisation), both seeded from the run seed; evaluation uses a freshly seeded generator
each time, so evaluating never disturbs training. The global RNG is not used (model initialisation
runs under ``torch.random.fork_rng``). Checkpoints hold the model, optimiser, both generator states,
the sampler position and the logs, so ``--resume`` continues bit-identically. Checkpoints and the
finished-run records carry a SHA-256 digest (:func:`._common.write_checked_torch`); on ``--resume``
every one is verified, then checked against the model's tensor shapes and the configuration, before
anything trains; a damaged, unchecksummed or ill-fitting file is refused in one line.

Structure: :func:`main` validates the :class:`VAEConfig`, checks the optional packages, then runs
the phases of the job (load the data, prepare the grid and verify resume files, train every run,
assemble, write results and then plots). One run (:func:`run_one`) is itself phases: reuse a
finished record, start or resume, train, evaluate, record. For torch.distributed,
:func:`build_model`, :class:`EpochSampler` plus ``shard_batch``, :func:`train_step` (the model's
``forward`` returns the per-example objective so a DDP wrapper sees the call) and
``DistContext.is_main`` (only the main process writes files) are separate and small.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

import gumbelkit

from ..estimators import get_spec
from . import _harness as H
from ._common import (
    MIN_TAU,
    UserError,
    environment_info,
    markdown_table,
    mean_std,
    read_checked_json,
    read_checked_torch,
    resolve_device,
    save_figure,
    write_checked_json,
    write_checked_torch,
)
from ._defaults import VAE_METHODS, VAE_OPTION_ALIASES
from ._distributed import (
    DistContext,
    init_distributed,
    partition,
    rank_seed,
    shard_batch,
)
from ._enumerate import all_one_hot
from ._methods import (
    MethodChoice,
    apply_option_aliases,
    describe_methods,
    parse_method,
    parse_methods,
)
from .data import (
    DataError,
    Dataset,
    binarize,
    binarize_dataset,
    load_dataset,
    parse_data_spec,
)

__all__ = [
    "DEFAULTS",
    "DEFAULT_METHODS",
    "DEFAULT_STEPS",
    "MAX_ENUMERATE",
    "CategoricalVAE",
    "EpochSampler",
    "VAEConfig",
    "add_arguments",
    "build_model",
    "check_resume",
    "config_from_args",
    "evaluate",
    "main",
    "resolve_config",
    "run_one",
    "train_step",
]

#: The methods compared by default, in the order of the tables.
DEFAULT_METHODS = VAE_METHODS

#: Default training length, chosen so that the default job (6 methods x 1 seed on mnist5k)
#: finishes within ~10 minutes on a 2-core CPU (measured; see docs/vae.md).
DEFAULT_STEPS = 3000

#: Exact enumeration of the latent space when K^N is at most this.
MAX_ENUMERATE = 65536

#: Upper limit of every integer method option (samples, draws): far above any useful run, low
#: enough that a typo cannot ask for an allocation that takes the machine down.
MAX_OPTION = 10_000
MAX_HIDDEN = 65536

# 2: the torch.save payload inside a SHA-256-checked frame (see _common.write_checked_bytes).
_CHECKPOINT_FORMAT = 2
_CHECKPOINT_KEYS = ("format", "fingerprint", "model", "optimizer", "rng", "sampler", "state")
_RESUME_HINT = "delete it or run without --resume"


# --------------------------------------------------------------------------- config


def parse_latent(text: Any) -> tuple[int, int]:
    """``"30x10"`` -> (30, 10): N latent variables with K >= 2 classes each.

    Examples:
        >>> from gumbelkit.experiments.vae import parse_latent
        >>> parse_latent("30x10")
        (30, 10)
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not match:
        raise UserError(f"expected --latent NxK (e.g. 30x10), got {text!r}")
    n, k = int(match.group(1)), int(match.group(2))
    if n < 1 or k < 2:
        raise UserError(f"expected --latent NxK with N >= 1 and K >= 2, got {text!r}")
    if n * k > 1_000_000:
        raise UserError(f"expected --latent with N*K <= 1000000, got {text!r}")
    return n, k


def _check_latent(value: Any, flag: str) -> str:
    n, k = parse_latent(value)
    return f"{n}x{k}"


def _parse_hidden(value: Any) -> list[int]:
    bad = f"expected --hidden as comma-separated positive integers (e.g. 512,256), got {value!r}"
    try:
        sizes = [int(h) for h in H.parse_list(value, "--hidden")]
    except ValueError:
        raise UserError(bad) from None
    if not sizes or any(h < 1 for h in sizes):
        raise UserError(bad)
    if len(sizes) > 16 or max(sizes) > MAX_HIDDEN:
        raise UserError(f"expected --hidden with at most 16 layers of at most {MAX_HIDDEN} units, got {value!r}")
    return sizes


def _check_hidden(value: Any, flag: str) -> str:
    return ",".join(map(str, _parse_hidden(value)))


def _check_data(value: Any, flag: str) -> str:
    parse_data_spec(value)
    return str(value)


def _check_methods(value: Any, flag: str) -> list[str]:
    return [m.label for m in parse_methods(value, flag, cap=MAX_OPTION)]


def _check_schedule(value: Any, flag: str) -> str:
    try:
        return gumbelkit.schedules.parse_schedule(value).spec
    except (ValueError, TypeError, OverflowError) as exc:
        raise UserError(f"--tau-schedule: {exc}") from None


def _methods_help() -> str:
    return (
        "comma-separated methods NAME[:OPTION=VALUE,...], any of: "
        + describe_methods()
        + " (the same method may appear with different options)"
    )


@dataclasses.dataclass(frozen=True)
class VAEConfig(H.Config):
    """Everything ``gumbelkit vae`` does, as validated values (see :func:`resolve_config`)."""

    COMMAND: ClassVar[str] = "vae"
    DERIVED: ClassVar[tuple[str, ...]] = ("latent_nk", "hidden_sizes", "method_choices")
    ALIASES: ClassVar[dict[str, tuple[str, str]]] = VAE_OPTION_ALIASES

    data: str = H.setting("mnist5k", "mnist5k, digits, fashion-mnist or idx:FOLDER", H.Custom(_check_data))
    latent: str = H.setting("30x10", "N x K categorical latents", H.Custom(_check_latent, "N >= 1, K >= 2"))
    steps: int = H.setting(
        DEFAULT_STEPS,
        f"training steps per run ({DEFAULT_STEPS}: ~10 min for all default methods on 2 CPU cores)",
        H.Int(1, 10**9),
    )
    methods: list = dataclasses.field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata=H.meta(_methods_help, H.Custom(_check_methods), fingerprint=False),
    )
    seeds: int = H.setting(1, "number of seeds R (runs seeds 0..R-1)", H.Int(1, 10_000), fingerprint=False)
    tau_schedule: str = H.setting(
        "exp:tau0=1,rate=3e-5,floor=0.5,interval=1000",
        f"temperature schedule spec; tau must stay >= {MIN_TAU:g} (the default is Jang et al.'s max(0.5, exp(-3e-5 t)) "
        "every 1000 steps)",
        H.Custom(_check_schedule),
        show_default=False,
    )
    batch_size: int = H.setting(100, "images per step", H.Int(1))
    lr: float = H.setting(1e-3, "Adam learning rate", H.Float(positive=True))
    eval_samples: int = H.setting(100, "m of the importance-weighted test bound (0 skips it)", H.Int(0, 100_000))
    out: str = H.setting("runs/vae", "output folder", H.Path(), fingerprint=False)
    resume: bool = H.setting(
        False,
        "continue from the checkpoints in --out (bit-identical to an uninterrupted run); a checkpoint that "
        "fails its SHA-256 check or does not fit the model is refused",
        H.Flag(),
        fingerprint=False,
        in_command=False,
    )
    device: str = H.setting(
        "auto", "cpu, cuda or auto (CUDA when available)", H.Custom(lambda v, f: str(v)), fingerprint=False
    )
    hidden: str = H.setting(
        "512,256", f"encoder hidden sizes (1..{MAX_HIDDEN} each); the decoder mirrors them", H.Custom(_check_hidden)
    )
    binarize: str = H.setting(
        "fixed", "fixed (threshold) or dynamic (Bernoulli draw at every use)", H.Choice(("fixed", "dynamic"))
    )
    threshold: float = H.setting(
        0.5, "fixed binarisation threshold on grey levels in [0,1]", H.Float(minimum=0.0, below=1.0)
    )
    log_every: int = H.setting(100, "steps per point of the training curve", H.Int(1))
    val_every: int = H.setting(500, "steps between validation -ELBO evaluations", H.Int(1))
    checkpoint_every: int = H.setting(500, "steps between checkpoints", H.Int(1))
    # One thread: on a shared 2-core machine two OpenMP threads spin-wait for a descheduled partner;
    # measured 3-15x slower steps than one thread whenever another process was running.
    threads: int = H.threads_setting()
    # torch.distributed (under torchrun): spread whole (method, seed) runs over the ranks instead
    # of splitting each batch.
    sweep_parallel: bool = H.setting(
        False,
        "under torchrun: spread whole (method, seed) runs over the ranks instead of DDP",
        H.Flag(),
        fingerprint=False,
    )
    # Long enough for a sweep's ranks to wait for the slowest share; torchrun itself stops the
    # job at once when a worker process dies.
    dist_timeout: int = H.setting(
        1800, "seconds a rank waits in a collective before failing", H.Int(1, 7 * 24 * 3600), fingerprint=False
    )
    progress: bool | None = H.setting(
        None, "progress bars (default: only when stderr is a terminal)", H.Tri(), fingerprint=False, in_command=False
    )
    plots: bool | None = H.plots_setting()

    @classmethod
    def cross_check(cls, values: dict, given: Mapping[str, Any]) -> dict:
        values["methods"] = apply_option_aliases(values["methods"], given, cls.ALIASES, cap=MAX_OPTION)
        # The schedules are monotone, so the ends decide; 1000 steps in between guard the rest.
        schedule = gumbelkit.schedules.parse_schedule(values["tau_schedule"])
        last = values["steps"] - 1
        try:
            taus = [schedule(t) for t in sorted({0, last, *range(0, last, max(1, last // 1000))})]
        except (ValueError, TypeError, OverflowError) as exc:
            raise UserError(f"--tau-schedule: {exc}") from None
        if not all(math.isfinite(t) and t >= MIN_TAU for t in taus):
            low = min(taus, key=lambda t: t if math.isfinite(t) else -math.inf)
            raise UserError(
                f"expected --tau-schedule to stay finite and >= {MIN_TAU:g} over the {values['steps']} steps, "
                f"got tau from {taus[0]:g} to {taus[-1]:g} (lowest {low:g})"
            )
        return values

    @property
    def latent_nk(self) -> list[int]:
        return list(parse_latent(self.latent))

    @property
    def hidden_sizes(self) -> list[int]:
        return _parse_hidden(self.hidden)

    @functools.cached_property
    def method_choices(self) -> dict[str, MethodChoice]:
        """label -> :class:`MethodChoice` of every method of the job."""
        return {m.label: m for m in parse_methods(self.methods, cap=MAX_OPTION)}

    def choice(self, label: str) -> MethodChoice:
        """The method called ``label`` (any ``NAME[:OPTION=VALUE]``, also one not in ``methods``)."""
        return self.method_choices.get(label) or parse_method(label, cap=MAX_OPTION)


#: Every default, as a dict; the config's entry points (see :func:`._harness.command_api`).
DEFAULTS, resolve_config, add_arguments, config_from_args = H.command_api(VAEConfig)


def requirements(cfg: VAEConfig) -> list[H.Requirement]:
    """The optional packages this configuration needs (checked at start)."""
    return H.common_requirements(cfg.progress, cfg.data)


# --------------------------------------------------------------------------- model


class CategoricalVAE(torch.nn.Module):
    """VAE with N independent K-way categorical latents and a Bernoulli decoder.

    ``forward(x, method, tau, generator=..., **options)`` returns the per-example training
    objective (an estimate of -ELBO whose gradient is the chosen estimator), so that a
    DistributedDataParallel wrapper sees the call that produces the gradients.
    """

    def __init__(self, input_dim: int, n_latent: int, n_classes: int, hidden=(512, 256)):
        super().__init__()
        self.input_dim, self.n_latent, self.n_classes = int(input_dim), int(n_latent), int(n_classes)
        code = self.n_latent * self.n_classes
        enc, width = [], self.input_dim
        for h in hidden:
            enc += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        self.encoder = torch.nn.Sequential(*enc, torch.nn.Linear(width, code))
        dec, width = [], code
        for h in reversed(tuple(hidden)):
            dec += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        self.decoder = torch.nn.Sequential(*dec, torch.nn.Linear(width, self.input_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(z|x), shape (B, N, K)."""
        return self.encoder(x).view(x.shape[0], self.n_latent, self.n_classes)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of p(x|z), shape (..., D), for codes z of shape (..., N, K)."""
        lead = z.shape[:-2]
        return self.decoder(z.reshape(-1, self.n_latent * self.n_classes)).view(*lead, self.input_dim)

    def kl_to_uniform(self, logits: torch.Tensor) -> torch.Tensor:
        """Analytic KL(q(z|x) || Uniform(K)^N), summed over the N latents: shape (B,)."""
        # Uniform prior: all-zero logits (an expanded view, no copy).
        return gumbelkit.kl_categorical(logits, logits.new_zeros(()).expand_as(logits), dim=-1).sum(-1)

    def forward(self, x: torch.Tensor, method: str, tau: float, *, generator=None, **options: Any) -> torch.Tensor:
        """The training objective per example: reconstruction (the method's objective) + KL.

        Args:
            x: binary images (B, D).
            method: a registered method name (any kind).
            tau: temperature.
            generator: the noise generator.
            **options: the method's options.
        """
        logits = self.encode(x)
        kl = self.kl_to_uniform(logits)

        def reconstruction(z: torch.Tensor) -> torch.Tensor:
            # z: (..., B, N, K) with any leading sample dimensions -> -log p(x|z), shape (..., B)
            return _bernoulli_nll(self.decode(z), x.expand(*z.shape[:-2], x.shape[-1]))

        rec, _ = get_spec(method).objective(logits, reconstruction, tau, dim=-1, generator=generator, **options)
        return rec + kl


def _bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) summed over pixels, via the stable BCE-with-logits (no log(sigmoid) underflow)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def build_model(input_dim: int, n_latent: int, n_classes: int, hidden, seed: int, device) -> CategoricalVAE:
    """The model initialised from ``seed`` (PyTorch's default init) without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rank_seed(seed, 0, _STREAMS["init"]))
        model = CategoricalVAE(input_dim, n_latent, n_classes, hidden)
    return model.to(device)


def train_step(model, optimizer, x, method: str, tau: float, generator, **options) -> float:
    """One Adam step on the batch ``x``; returns the batch mean of the objective (a Python float)."""
    model.train()
    loss = model(x, method, tau, generator=generator, **options).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _ddp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """Wrap ``model`` in DistributedDataParallel for ``ctx`` (gloo on CPU, NCCL on one GPU per rank)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Parameters start identical on every rank (same init seed); DDP's constructor also
    # broadcasts them from rank 0.
    return DistributedDataParallel(model, device_ids=ids)


def _all_reduce_window(window: list, device: torch.device) -> list:
    """Sum the (loss sum, count) log window over ranks so the curve is the global-batch mean."""
    t = torch.tensor([float(window[0]), float(window[1])], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return [float(t[0]), int(t[1])]


def _param_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal digests mean bit-identical replicas."""
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _generator_digest(generator: torch.Generator) -> str:
    """SHA-256 of 256 Gumbel draws from a copy of ``generator`` (the generator itself is not advanced)."""
    import hashlib

    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    g = gumbelkit.gumbel_noise((256,), generator=copy, device=generator.device)
    return hashlib.sha256(g.cpu().numpy().tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- data order


class EpochSampler:
    """Batches of indices: a fresh permutation of the training set each epoch (last partial batch dropped).

    All randomness comes from ``generator``; the state (permutation, position, epoch) is saved in
    checkpoints together with the generator's state.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        if not 1 <= batch_size <= n:
            raise UserError(f"expected 1 <= --batch-size <= {n} (training images), got {batch_size}")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.epoch = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.perm.numel():
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
            self.epoch += 1
        out = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return out

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos, self.epoch = state["perm"].clone(), int(state["pos"]), int(state["epoch"])


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: CategoricalVAE,
    x: torch.Tensor,
    *,
    generator: torch.Generator,
    iw_samples: int = 0,
    exact: bool = False,
    rows: int = 16384,
) -> dict:
    r"""Mean test numbers (nats per image) with discrete latents.

    - ``neg_elbo``: -log p(x|z) + KL(q||p), one z ~ q(z|x) per image.
    - ``iw_bound`` (``iw_samples`` = m > 0): -log (1/m) sum_j p(x|z_j) p(z_j) / q(z_j|x), z_j ~ q(z|x).
    - ``exact_neg_elbo`` and ``exact_nll`` (``exact``): sums over all K^N codes.

    Args:
        model: the VAE (its parameters' device is used).
        x: binary images, (n, D), any device.
        generator: noise for the samples (seed it freshly for reproducible numbers).
        iw_samples: m for the importance-weighted bound (0: skip).
        exact: also enumerate every code (needs K^N <= MAX_ENUMERATE).
        rows: decoder rows per chunk (bounds memory).

    Returns:
        dict of floats.

    Reference: Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    """
    model.eval()
    device = next(model.parameters()).device
    N, K = model.n_latent, model.n_classes
    log_prior = -N * math.log(K)  # log p(z) of every code under the uniform prior
    m = int(iw_samples)
    per_chunk = max(1, rows // max(1, m))
    sums = {"neg_elbo": 0.0}
    if m:
        sums["iw_bound"] = 0.0
    if exact:
        table = _ExactTable(model, device)
        sums["exact_neg_elbo"] = 0.0
        sums["exact_nll"] = 0.0
        per_chunk = min(per_chunk, table.rows_per_chunk)
    for start in range(0, x.shape[0], per_chunk):
        xb = x[start : start + per_chunk].to(device)
        logits = model.encode(xb)
        kl = model.kl_to_uniform(logits)
        index = gumbelkit.gumbel_max(logits, dim=-1, generator=generator)
        rec = _bernoulli_nll(model.decode(F.one_hot(index, K).to(logits.dtype)), xb)
        sums["neg_elbo"] += float((rec + kl).double().sum())
        if m:
            log_q = torch.log_softmax(logits, -1)
            idx = gumbelkit.gumbel_max(logits.unsqueeze(0).expand(m, *logits.shape), dim=-1, generator=generator)
            log_q_z = log_q.unsqueeze(0).expand(m, *log_q.shape).gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)
            log_px = -_bernoulli_nll(
                model.decode(F.one_hot(idx, K).to(logits.dtype)), xb.unsqueeze(0).expand(m, *xb.shape)
            )
            log_w = (log_px + log_prior - log_q_z).double()
            # log-mean-exp over the m samples: logsumexp keeps the largest weight at exp(0).
            sums["iw_bound"] += float(-(torch.logsumexp(log_w, 0) - math.log(m)).sum())
        if exact:
            e_elbo, e_nll = table.evaluate(xb, logits, kl, log_prior)
            sums["exact_neg_elbo"] += e_elbo
            sums["exact_nll"] += e_nll
    n = x.shape[0]
    return {k: v / n for k, v in sums.items()}


class _ExactTable:
    """Every code z (K^N of them) decoded once: log p(x|z) for a batch is then one matrix product."""

    def __init__(self, model: CategoricalVAE, device):
        N, K = model.n_latent, model.n_classes
        if K**N > MAX_ENUMERATE:
            raise ValueError(f"expected K^N <= {MAX_ENUMERATE} to enumerate, got {K}^{N}")
        codes = all_one_hot(N, K, dtype=torch.float32, device=device)  # (C, N, K)
        self.index = codes.argmax(-1)  # (C, N)
        dec = torch.cat([model.decode(codes[i : i + 8192]) for i in range(0, codes.shape[0], 8192)])
        # float64 for the enumeration sums: each log p(x|z) is a difference of terms of size ~D.
        self.logits = dec.double()  # (C, D)
        # log Bernoulli(x | sigmoid(l)) = x * l - softplus(l), so log p(x|z) = x @ l - sum softplus(l).
        self.softplus_sum = F.softplus(self.logits).sum(-1)  # (C,)
        self.rows_per_chunk = max(1, (1 << 22) // codes.shape[0])

    def evaluate(self, xb, logits, kl, log_prior):
        log_px = xb.double() @ self.logits.T - self.softplus_sum  # (b, C)
        log_q = torch.log_softmax(logits.double(), -1)  # (b, N, K)
        log_q_code = torch.zeros_like(log_px)
        for n in range(self.index.shape[1]):
            log_q_code += log_q[:, n, :].index_select(1, self.index[:, n])
        q = log_q_code.exp()
        neg_elbo = -(q * log_px).sum(-1) + kl.double()
        nll = -torch.logsumexp(log_px + log_prior, -1)
        return float(neg_elbo.sum()), float(nll.sum())


# --------------------------------------------------------------------------- one run

_STREAMS = {"init": 1, "noise": 2, "data": 3, "eval": 4, "val": 5}


def _fingerprint(
    cfg: VAEConfig, ds: Dataset, choice: MethodChoice, seed: int, device: torch.device, world_size: int = 1
) -> dict:
    """Everything that decides what a run computes: resume files must match it exactly."""
    fp = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.fingerprint().items()}
    fp.update(
        method=choice.label,
        options=choice.options,
        seed=seed,
        device_type=device.type,
        data_digest=ds.digest,
        world_size=world_size,
    )
    return fp


def _describe_mismatch(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    diff = [k for k in keys if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in diff[:3])


def _load_checkpoint(path: Path) -> dict:
    """The checkpoint dict after its SHA-256 digest and top-level layout are verified (UserError otherwise)."""
    ckpt = read_checked_torch(path, what="checkpoint", hint=_RESUME_HINT)
    try:
        if not isinstance(ckpt, dict):
            raise _Bad(f"holds a {type(ckpt).__name__}, expected a dict")
        missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
        if missing:
            raise _Bad(f"has no {missing[0]!r} entry")
        if ckpt["format"] != _CHECKPOINT_FORMAT:
            raise _Bad(f"has format {ckpt['format']!r}, expected {_CHECKPOINT_FORMAT}")
        if not isinstance(ckpt["fingerprint"], dict):
            raise _Bad("has no configuration fingerprint")
    except _Bad as exc:
        raise UserError(f"checkpoint {path} is unusable: {exc}; {_RESUME_HINT}") from None
    return ckpt


class _Bad(Exception):
    """A structural problem in a resume file (the message says what)."""


def _shape(t) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_tensors(saved, expected: dict, where: str) -> None:
    """``saved`` must be a dict with exactly ``expected``'s keys, tensors of the same shape and dtype."""
    if not isinstance(saved, dict):
        raise _Bad(f"{where} is a {type(saved).__name__}, expected a dict of tensors")
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected), key=str)
    if missing or extra:
        raise _Bad(f"{where} has {'no ' + repr(missing[0]) if missing else 'an unexpected ' + repr(extra[0])} entry")
    for key, want in expected.items():
        got = saved[key]
        if not isinstance(got, torch.Tensor):
            raise _Bad(f"{where}[{key!r}] is a {type(got).__name__}, expected a tensor")
        if got.shape != want.shape or got.dtype != want.dtype:
            raise _Bad(f"{where}[{key!r}] is {got.dtype} {_shape(got)}, the model needs {want.dtype} {_shape(want)}")


def _check_curve(curve, where: str) -> None:
    if not isinstance(curve, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and _is_int(p[0]) and _is_num(p[1]) for p in curve
    ):
        raise _Bad(f"{where} is not a list of [step, value] pairs")


def _check_rng_state(state, where: str) -> None:
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
        raise _Bad(f"{where} is not a generator state (a 1-d uint8 tensor)")


def _validate_checkpoint(
    ckpt: dict, model, optimizer, *, n_train: int, world_size: int, steps: int, initial_keys: set
) -> None:
    """Everything ``run_one`` takes from a checkpoint has the type and shape this run needs (_Bad otherwise)."""
    _check_tensors(ckpt["model"], model.state_dict(), "model")
    opt = ckpt["optimizer"]
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("state"), dict)
        or not isinstance(opt.get("param_groups"), list)
    ):
        raise _Bad("optimizer is not an optimizer state (state and param_groups)")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    groups = opt["param_groups"]
    if len(groups) != len(optimizer.param_groups) or not all(isinstance(g, dict) for g in groups):
        raise _Bad(f"optimizer has {len(groups)} parameter group(s), expected {len(optimizer.param_groups)}")
    for g, mine in zip(groups, optimizer.param_groups):
        ids = g.get("params")
        if not isinstance(ids, list) or len(ids) != len(mine["params"]) or not all(_is_int(i) for i in ids):
            raise _Bad(
                f"optimizer parameter group lists {len(ids) if isinstance(ids, list) else 'no'} parameters, "
                f"expected {len(mine['params'])}"
            )
    ids = [i for g in groups for i in g["params"]]
    if sorted(ids) != list(range(len(params))):
        raise _Bad("optimizer parameter ids are not 0..n-1")
    by_id = dict(zip(ids, params))
    for i, st in opt["state"].items():
        if i not in by_id or not isinstance(st, dict):
            raise _Bad(f"optimizer state has an entry for unknown parameter {i!r}")
        p = by_id[i]
        for key, v in st.items():
            if not isinstance(v, torch.Tensor):
                raise _Bad(f"optimizer state {i}[{key!r}] is a {type(v).__name__}, expected a tensor")
            if key != "step" and v.shape != p.shape:
                raise _Bad(f"optimizer state {i}[{key!r}] has shape {_shape(v)}, the parameter has {_shape(p)}")
    rng = ckpt["rng"]
    if not isinstance(rng, dict) or "noise" not in rng or "data" not in rng:
        raise _Bad("rng is not a dict with the noise and data generator states")
    noise = rng["noise"]
    if world_size > 1:
        if not isinstance(noise, list) or len(noise) != world_size:
            raise _Bad(f"rng['noise'] does not hold one state for each of the {world_size} ranks")
        for r, st in enumerate(noise):
            _check_rng_state(st, f"rng['noise'][{r}]")
    else:
        _check_rng_state(noise, "rng['noise']")
    _check_rng_state(rng["data"], "rng['data']")
    smp = ckpt["sampler"]
    if not isinstance(smp, dict) or not {"perm", "pos", "epoch"} <= set(smp):
        raise _Bad("sampler is not a dict with perm, pos and epoch")
    perm = smp["perm"]
    if (
        not isinstance(perm, torch.Tensor)
        or perm.dtype != torch.long
        or perm.dim() != 1
        or perm.numel() not in (0, n_train)
    ):
        raise _Bad(f"sampler['perm'] is not a permutation of the {n_train} training images")
    if perm.numel() and not torch.equal(perm.sort().values, torch.arange(n_train)):
        raise _Bad(f"sampler['perm'] is not a permutation of the {n_train} training images")
    if not (_is_int(smp["pos"]) and 0 <= smp["pos"] <= perm.numel() and _is_int(smp["epoch"]) and smp["epoch"] >= 0):
        raise _Bad("sampler position or epoch is out of range")
    st = ckpt["state"]
    want = {"step", "train_curve", "val_curve", "window", "train_seconds", "initial"}
    if not isinstance(st, dict) or not want <= set(st):
        raise _Bad(f"state is not a dict with {', '.join(sorted(want))}")
    if not (_is_int(st["step"]) and 0 <= st["step"] <= steps):
        raise _Bad(f"state['step'] is {st['step']!r}, expected an integer from 0 to {steps}")
    _check_curve(st["train_curve"], "state['train_curve']")
    _check_curve(st["val_curve"], "state['val_curve']")
    w = st["window"]
    if not (isinstance(w, list) and len(w) == 2 and _is_num(w[0]) and _is_int(w[1])):
        raise _Bad("state['window'] is not [loss sum, count]")
    if not _is_num(st["train_seconds"]):
        raise _Bad("state['train_seconds'] is not a number")
    init = st["initial"]
    if init is not None and not (
        isinstance(init, dict) and set(init) == initial_keys and all(_is_num(v) for v in init.values())
    ):
        raise _Bad(f"state['initial'] is not the evaluation numbers {', '.join(sorted(initial_keys))}")
    if st["step"] == steps and not st["val_curve"]:
        raise _Bad("state says training finished but holds no validation number")


_RECORD_NUMBERS = ("test_neg_elbo", "initial_test_neg_elbo", "val_neg_elbo", "seconds", "steps_per_second")


def _load_record(path: Path, fp: dict) -> dict | None:
    """The finished-run record at ``path`` if it belongs to this configuration (None if it does not);
    UserError when it is damaged, has no checksum, or lacks what the results table needs."""
    rec = read_checked_json(path, what="run record", hint=_RESUME_HINT)
    if rec.get("fingerprint") != fp:
        return None
    bad = [k for k in _RECORD_NUMBERS if not _is_num(rec.get(k))]
    bad += [k for k in ("train_curve", "val_curve") if not isinstance(rec.get(k), list)]
    bad += [k for k in ("test_iw_bound",) if k not in rec or not (rec[k] is None or _is_num(rec[k]))]
    if bad:
        raise UserError(f"run record {path} is unusable: {bad[0]!r} is missing or not a number; {_RESUME_HINT}")
    return rec


@dataclasses.dataclass(frozen=True)
class _RunPlan:
    """What identifies one (method, seed) run and where its files go."""

    choice: MethodChoice
    seed: int
    tag: str
    record_path: Path
    checkpoint_path: Path
    fingerprint: dict


def _plan(cfg: VAEConfig, ds: Dataset, method: str, seed: int, ctx: DistContext, out: Path) -> _RunPlan:
    choice = cfg.choice(method)
    # The tag (file names, log lines) is the label in a file-name-friendly form: st_gumbel-seed0.
    tag = f"{choice.tag}-seed{seed}"
    fp = _fingerprint(cfg, ds, choice, seed, ctx.device, ctx.world_size)
    return _RunPlan(choice, seed, tag, out / "runs" / f"{tag}.json", out / "checkpoints" / f"{tag}.pt", fp)


def _fresh_run(cfg: VAEConfig, ds: Dataset, seed: int, ctx: DistContext):
    """The model, optimiser, both generators and the sampler of a run at step 0."""
    device = ctx.device
    n_latent, n_classes = cfg.latent_nk
    model = build_model(ds.input_dim, n_latent, n_classes, cfg.hidden_sizes, seed, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    noise_gen = torch.Generator(device=device).manual_seed(rank_seed(seed, ctx.rank, _STREAMS["noise"]))
    # Data order is global (every rank draws the same permutation and takes its own share).
    data_gen = torch.Generator().manual_seed(rank_seed(seed, 0, _STREAMS["data"]))
    sampler = EpochSampler(ds.train.shape[0], cfg.batch_size, data_gen)
    return model, optimizer, noise_gen, data_gen, sampler


def _restore(cfg: VAEConfig, ds: Dataset, ctx: DistContext, ckpt_path: Path, fp: dict, run) -> dict:
    """Load the verified checkpoint at ``ckpt_path`` into ``run`` (the objects of :func:`_fresh_run`);
    returns the saved training state. UserError (one line) if it is damaged, belongs to another
    configuration, or does not fit this run."""
    model, optimizer, noise_gen, data_gen, sampler = run
    ckpt = _load_checkpoint(ckpt_path)
    if ckpt["fingerprint"] != fp:
        why = _describe_mismatch(ckpt["fingerprint"], fp)
        raise UserError(
            f"checkpoint {ckpt_path} was written by a different configuration ({why}); "
            "run without --resume or use another --out"
        )
    n_latent, n_classes = cfg.latent_nk
    initial_keys = {"neg_elbo"} | ({"iw_bound"} if cfg.eval_samples else set())
    initial_keys |= {"exact_neg_elbo", "exact_nll"} if n_classes**n_latent <= MAX_ENUMERATE else set()
    try:
        _validate_checkpoint(
            ckpt,
            model,
            optimizer,
            n_train=ds.train.shape[0],
            world_size=ctx.world_size,
            steps=cfg.steps,
            initial_keys=initial_keys,
        )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        noise_states = ckpt["rng"]["noise"]
        # Each rank saved its own noise stream (a list indexed by rank); one process: one state.
        noise_gen.set_state(noise_states[ctx.rank] if isinstance(noise_states, list) else noise_states)
        data_gen.set_state(ckpt["rng"]["data"])
        sampler.load_state_dict(ckpt["sampler"])
    except _Bad as exc:
        raise UserError(f"checkpoint {ckpt_path} is unusable: {exc}; {_RESUME_HINT}") from None
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # e.g. a generator state of the wrong size
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"checkpoint {ckpt_path} is unusable: {type(exc).__name__}: {first}; {_RESUME_HINT}") from None
    return ckpt["state"]


def check_resume(cfg: VAEConfig, ds: Dataset, method: str, seed: int, ctx: DistContext, out: Path) -> None:
    """Verify the resume files of one (method, seed) without training: the run record if there is
    one, else the checkpoint, loaded into a throwaway model. UserError (one line) when damaged.

    :func:`main` calls this for every run before the first one starts, so a damaged checkpoint
    of the last method is reported at once, not after the earlier methods have trained.
    """
    plan = _plan(cfg, ds, method, seed, ctx, out)
    if plan.record_path.exists() and _load_record(plan.record_path, plan.fingerprint) is not None:
        return
    if plan.checkpoint_path.exists():
        _restore(cfg, ds, ctx, plan.checkpoint_path, plan.fingerprint, _fresh_run(cfg, ds, seed, ctx))


@dataclasses.dataclass
class _Training:
    """The live objects of one run and its logged state (what a checkpoint holds)."""

    model: CategoricalVAE
    optimizer: torch.optim.Optimizer
    noise_gen: torch.Generator
    data_gen: torch.Generator
    sampler: EpochSampler
    trainer: torch.nn.Module
    state: dict
    resumed_from: int | None = None
    noise_digest: str | None = None
    eval_seconds: float = 0.0


def _eval_generator(seed: int, stream: str, device: torch.device) -> torch.Generator:
    """A freshly seeded generator per evaluation: evaluating never disturbs training."""
    return torch.Generator(device=device).manual_seed(rank_seed(seed, 0, _STREAMS[stream]))


def _enumerable(cfg: VAEConfig) -> bool:
    n_latent, n_classes = cfg.latent_nk
    return n_classes**n_latent <= MAX_ENUMERATE


def run_one(
    cfg: VAEConfig | dict,
    ds: Dataset,
    method: str,
    seed: int,
    ctx: DistContext,
    out: Path,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train and evaluate one (method, seed); resume from its checkpoint when ``cfg.resume``.

    Phases: reuse a finished record, start (or resume), train, evaluate, record.

    Args:
        cfg: the job's configuration (a mapping is validated first).
        ds: the binarised dataset.
        method: a method label, ``NAME[:OPTION=VALUE,...]``.
        seed: the run seed.
        ctx: this process's place in the job.
        out: the output folder.
        log: where progress lines go (None: nowhere).

    Returns:
        The run's record for results.json. Files are written by the main process only.
    """
    cfg = cfg if isinstance(cfg, VAEConfig) else resolve_config(cfg)
    plan = _plan(cfg, ds, method, seed, ctx, out)
    done = _finished_record(cfg, plan, log)
    if done is not None:
        return done
    run = _start(cfg, ds, ctx, plan, log)
    _train(cfg, ds, ctx, plan, run)
    final = _evaluate_final(cfg, ds, ctx, plan, run)
    record = _record(cfg, ctx, plan, run, final)
    if ctx.is_main:
        write_checked_json(plan.record_path, record)
    return record


def _finished_record(cfg: VAEConfig, plan: _RunPlan, log) -> dict | None:
    """Phase 1: with --resume, the verified record of this run if it already finished."""
    if not (cfg.resume and plan.record_path.exists()):
        return None
    done = _load_record(plan.record_path, plan.fingerprint)
    if done is not None and log:
        log(f"{plan.tag}: already complete, reusing {plan.record_path}")
    return done


def _start(cfg: VAEConfig, ds: Dataset, ctx: DistContext, plan: _RunPlan, log) -> _Training:
    """Phase 2: a fresh run (or the verified checkpoint's), and the untrained model's test numbers."""
    objects = _fresh_run(cfg, ds, plan.seed, ctx)
    model, optimizer, noise_gen, data_gen, sampler = objects
    # Under torchrun: DDP averages the gradients of the ranks' shares of each global batch, so
    # every rank applies the same update and the parameters stay identical.
    trainer = _ddp(model, ctx) if ctx.enabled else model
    state = {"step": 0, "train_curve": [], "val_curve": [], "window": [0.0, 0], "train_seconds": 0.0, "initial": None}
    run = _Training(model, optimizer, noise_gen, data_gen, sampler, trainer, state)
    if cfg.resume and plan.checkpoint_path.exists():
        run.state = _restore(cfg, ds, ctx, plan.checkpoint_path, plan.fingerprint, objects)
        run.resumed_from = run.state["step"]
        if log:
            log(f"{plan.tag}: resuming from step {run.resumed_from}")
    # Fingerprint of the noise this rank is about to use (for the DDP record; costs 256 draws of a copy).
    run.noise_digest = _generator_digest(noise_gen) if ctx.enabled else None
    with H.Timer(ctx.device) as timer:
        if run.state["initial"] is None:
            run.state["initial"] = evaluate(
                model,
                ds.test,
                generator=_eval_generator(plan.seed, "eval", ctx.device),
                iw_samples=cfg.eval_samples,
                exact=_enumerable(cfg),
            )
    run.eval_seconds = timer.seconds
    return run


def _save_checkpoint(ctx: DistContext, plan: _RunPlan, run: _Training) -> None:
    """Collective: every rank hands its noise-generator state to the main process, which alone writes."""
    noise_states = ctx.all_gather_object(run.noise_gen.get_state()) if ctx.enabled else run.noise_gen.get_state()
    if not ctx.is_main:
        return
    write_checked_torch(
        {
            "format": _CHECKPOINT_FORMAT,
            "fingerprint": plan.fingerprint,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "rng": {"noise": noise_states, "data": run.data_gen.get_state()},
            "sampler": run.sampler.state_dict(),
            "state": run.state,
        },
        plan.checkpoint_path,
    )


def _train(cfg: VAEConfig, ds: Dataset, ctx: DistContext, plan: _RunPlan, run: _Training) -> None:
    """Phase 3: the optimisation steps left, with the curves, validation and checkpoints on schedule."""
    schedule = gumbelkit.schedules.parse_schedule(cfg.tau_schedule)
    steps, state = cfg.steps, run.state
    bar = H.progress(steps, f"{plan.choice.label} seed {plan.seed}", enabled=cfg.progress)
    bar.update(state["step"])
    try:
        while state["step"] < steps:
            tau = schedule(state["step"])
            loss = _step(cfg, ds, ctx, plan, run, tau)
            state["step"] = step = state["step"] + 1
            state["window"][0] += loss
            state["window"][1] += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == steps:
                if ctx.enabled:  # the curve shows the global batch: average the ranks' windows
                    state["window"] = _all_reduce_window(state["window"], ctx.device)
                w_sum, w_n = state["window"]
                state["train_curve"].append([step, w_sum / w_n])
                state["window"] = [0.0, 0]
                bar.set_postfix(loss=f"{w_sum / w_n:.2f}", tau=f"{tau:.3f}")
            if step % cfg.val_every == 0 or step == steps:
                with H.Timer(ctx.device) as timer:
                    val = evaluate(run.model, ds.val, generator=_eval_generator(plan.seed, "val", ctx.device))[
                        "neg_elbo"
                    ]
                run.eval_seconds += timer.seconds
                state["val_curve"].append([step, val])
            if step % cfg.checkpoint_every == 0 or step == steps:
                _save_checkpoint(ctx, plan, run)
    finally:
        bar.close()


def _step(cfg: VAEConfig, ds: Dataset, ctx: DistContext, plan: _RunPlan, run: _Training, tau: float) -> float:
    """One optimisation step on this rank's share of the next batch; its time is added to the state."""
    with H.Timer(ctx.device) as timer:
        index = shard_batch(run.sampler.next(), ctx.rank, ctx.world_size)
        xb = ds.train[index]
        if cfg.binarize == "dynamic":
            xb = binarize(xb, "dynamic", generator=run.data_gen)
        try:
            loss = train_step(
                run.trainer,
                run.optimizer,
                xb.to(ctx.device),
                plan.choice.name,
                tau,
                run.noise_gen,
                **plan.choice.options,
            )
        except ValueError as exc:  # e.g. NaN logits after divergence: a clear message, not a traceback
            raise UserError(f"{plan.tag} failed at step {run.state['step'] + 1}: {exc} (try a smaller --lr)") from None
    run.state["train_seconds"] += timer.seconds
    return loss


def _evaluate_final(cfg: VAEConfig, ds: Dataset, ctx: DistContext, plan: _RunPlan, run: _Training) -> dict:
    """Phase 4: the trained model's test numbers."""
    with H.Timer(ctx.device) as timer:
        final = evaluate(
            run.model,
            ds.test,
            generator=_eval_generator(plan.seed, "eval", ctx.device),
            iw_samples=cfg.eval_samples,
            exact=_enumerable(cfg),
        )
    run.eval_seconds += timer.seconds
    return final


def _record(cfg: VAEConfig, ctx: DistContext, plan: _RunPlan, run: _Training, final: dict) -> dict:
    """Phase 5: the run's record for results.json (and, under DDP, the replicas' digests)."""
    state, steps = run.state, cfg.steps
    initial = state["initial"]
    record = {
        "method": plan.choice.label,
        "seed": plan.seed,
        "steps": steps,
        "test_neg_elbo": final["neg_elbo"],
        "initial_test_neg_elbo": initial["neg_elbo"],
        "test_iw_bound": final.get("iw_bound"),
        "initial_test_iw_bound": initial.get("iw_bound"),
        "eval_samples": cfg.eval_samples,
    }
    if _enumerable(cfg):
        record.update(
            test_exact_neg_elbo=final["exact_neg_elbo"],
            test_exact_nll=final["exact_nll"],
            initial_test_exact_neg_elbo=initial["exact_neg_elbo"],
            initial_test_exact_nll=initial["exact_nll"],
        )
    record.update(
        val_neg_elbo=state["val_curve"][-1][1],
        tau_final=gumbelkit.schedules.parse_schedule(cfg.tau_schedule)(steps - 1),
        # A relaxed method trains on the relaxed objective, not on a discrete -ELBO sample.
        train_objective="-ELBO estimate" if plan.choice.one_hot else "relaxed -ELBO (one sample)",
        train_curve=state["train_curve"],
        val_curve=state["val_curve"],
        seconds=state["train_seconds"],
        steps_per_second=steps / state["train_seconds"] if state["train_seconds"] > 0 else float("nan"),
        eval_seconds=run.eval_seconds,
        resumed_from_step=run.resumed_from,
        world_size=ctx.world_size,
        fingerprint=plan.fingerprint,
    )
    if ctx.enabled:
        # Evidence that DDP kept the replicas in sync and that ranks drew different noise.
        record["param_digest_per_rank"] = ctx.all_gather_object(_param_digest(run.model))
        record["noise_digest_per_rank"] = ctx.all_gather_object(run.noise_digest)
    return record


# --------------------------------------------------------------------------- the job


def main(config: dict | VAEConfig) -> dict:
    """Run every (method, seed); write results.json and results.md, then the plots, into ``--out``.

    The options are validated and the optional packages checked before anything is written.
    Under torchrun this joins the process group (gloo on CPU, NCCL on CUDA; each rank of a CUDA
    job takes cuda:LOCAL_RANK); otherwise it is a single-process job.

    Returns:
        The results dict (also written to ``results.json``).
    """
    cfg = resolve_config(config)
    device = resolve_device(cfg.device)
    H.check_requirements(requirements(cfg))
    plots = H.plots_plan(cfg.plots)
    ctx = init_distributed(device, timeout_s=cfg.dist_timeout)
    try:
        result = _main(cfg, ctx, plots)
    except BaseException:
        ctx.shutdown(clean=False)
        raise
    ctx.shutdown()
    return result


def _agree(ctx: DistContext, fn):
    """Run ``fn`` on every rank; if it raises UserError on any rank, raise it on all of them
    (otherwise the healthy ranks would wait in the next collective until the timeout)."""
    error, value = None, None
    try:
        value = fn()
    except UserError as exc:
        error = str(exc)
    if ctx.enabled:
        try:
            ctx.agree(error)
        except RuntimeError as exc:
            raise UserError(str(exc)) from None
    elif error:
        raise UserError(error)
    return value


@dataclasses.dataclass(frozen=True)
class _Job:
    """Where a job writes and which (method, seed) runs this process trains."""

    out: Path
    grid: list
    mine: list
    run_ctx: DistContext
    sweep: bool
    env: dict
    log: Callable[[str], None] | None


def _main(cfg: VAEConfig, ctx: DistContext, plots: tuple[bool, str | None]) -> dict:
    wall = H.Timer().start()
    # Pixels that are 0 in every image (MNIST's border) give their first-layer weights exactly zero
    # gradients, so Adam's moment estimates for them decay geometrically into the subnormal range
    # (~15% of all Adam entries after ~900 steps on mnist5k), and CPU arithmetic on subnormals is
    # slow: measured here, one Adam step over 1.2M entries, a third subnormal, 12 ms -> 4-6 ms with
    # flushing. Flushed values are < 1.2e-38, far below anything that changes an update.
    with H.compute_settings(cfg.threads, flush_denormal=ctx.device.type == "cpu"):
        ds = _load_data(cfg)
        job = _prepare(cfg, ctx, ds)
        runs = _run_all(cfg, ctx, ds, job)
    results = _results(cfg, ctx, ds, job, runs, wall.stop())
    if ctx.is_main:
        _write(cfg, job.out, results, plots)
    return results


def _load_data(cfg: VAEConfig) -> Dataset:
    """Phase 1: the binarised dataset, and the batch size checked against it."""
    try:
        ds = binarize_dataset(load_dataset(cfg.data), cfg.binarize, threshold=cfg.threshold)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    if cfg.batch_size > ds.train.shape[0]:
        raise UserError(f"expected --batch-size <= {ds.train.shape[0]} (training images), got {cfg.batch_size}")
    return ds


def _prepare(cfg: VAEConfig, ctx: DistContext, ds: Dataset) -> _Job:
    """Phase 2: the output folder, this process's share of the grid, every resume file verified."""
    sweep = ctx.enabled and cfg.sweep_parallel
    prefix = f"vae[rank {ctx.rank}]" if sweep else "vae"
    log = (lambda msg: print(f"{prefix}: {msg}", file=sys.stderr, flush=True)) if (ctx.is_main or sweep) else None
    # In a sweep every rank writes its own runs' checkpoints; in DDP only the main process writes.
    out = _agree(ctx, lambda: H.prepare_out_dir(cfg.out) if (ctx.is_main or sweep) else Path(cfg.out))
    grid = [(method, seed) for method in cfg.methods for seed in range(cfg.seeds)]
    # --sweep-parallel: each rank trains its round-robin share of whole runs as a one-process
    # job (same numbers as a serial run of that (method, seed)); rank 0 gathers the records.
    mine = partition(grid, ctx.rank, ctx.world_size) if sweep else grid
    run_ctx = DistContext(device=ctx.device) if sweep else ctx
    if cfg.resume:  # every resume file is verified before anything trains

        def verify() -> None:
            for method, seed in mine:
                check_resume(cfg, ds, method, seed, run_ctx, out)

        _agree(ctx, verify)
    env = environment_info(ctx.device)
    if log:
        s = ds.summary()
        log(
            f"{s['name']}: {s['n_train']} train / {s['n_val']} val / {s['n_test']} test images of {s['input_dim']} pixels; "
            f"{len(cfg.methods)} method(s) x {cfg.seeds} seed(s) x {cfg.steps} steps; "
            f"{env['threads']} thread(s) on {ctx.device}"
        )
    return _Job(out, grid, mine, run_ctx, sweep, env, log)


def _run_all(cfg: VAEConfig, ctx: DistContext, ds: Dataset, job: _Job) -> list:
    """Phase 3: train this process's runs; in a sweep, gather every rank's records in grid order."""

    def run_share() -> list:
        done = []
        for method, seed in job.mine:
            rec = run_one(cfg, ds, method, seed, job.run_ctx, job.out, log=job.log)
            done.append(rec)
            if job.log:
                iw = f", IW{cfg.eval_samples} {rec['test_iw_bound']:.2f}" if rec["test_iw_bound"] is not None else ""
                job.log(
                    f"{method} seed {seed}: test -ELBO {rec['test_neg_elbo']:.2f}{iw} "
                    f"(untrained {rec['initial_test_neg_elbo']:.2f}); {rec['seconds']:.0f} s, {rec['steps_per_second']:.1f} steps/s"
                )
        return done

    if not job.sweep:
        return run_share()
    # One collective after the whole share (ranks may own different numbers of runs).
    shares = ctx.all_gather_object(_agree(ctx, run_share))
    order = {key: i for i, key in enumerate(job.grid)}
    return sorted((r for share in shares for r in share), key=lambda r: order[(r["method"], r["seed"])])


def _results(cfg: VAEConfig, ctx: DistContext, ds: Dataset, job: _Job, runs: list, wall_seconds: float) -> dict:
    """Phase 4: the results dict."""
    _, _, summary = summarize(cfg, runs)
    return {
        "config": cfg.to_dict(),
        "command": command_line(cfg),
        "data": ds.summary() | {"binarization": ds.notes[-1]},
        "environment": job.env,
        "summary": summary,
        "runs": runs,
        "world_size": ctx.world_size,
        "distributed": {"mode": ("sweep" if job.sweep else "ddp") if ctx.enabled else None, "backend": ctx.backend},
        "wall_seconds": wall_seconds,
    }


def _write(cfg: VAEConfig, out: Path, results: dict, plots: tuple[bool, str | None]) -> None:
    """Phase 5 (main process): results.json and results.md, then the plots; the table on stdout."""
    headers, rows, _ = summarize(cfg, results["runs"])
    table = markdown_table(headers, rows)
    H.write_results(
        out,
        results,
        command="vae",
        plan=plots,
        markdown=lambda res: _markdown(cfg, res, table),
        plots=[
            ("train_curves.png", lambda p: _plot_curves(cfg, results["runs"], p)),
            ("tau_schedule.png", lambda p: _plot_schedule(cfg, p)),
        ],
    )
    print(table, end="")


def command_line(cfg: VAEConfig) -> str:
    """The explicit ``gumbelkit vae`` command that reproduces ``cfg``."""
    return H.command_line(cfg, first=("data", "latent", "steps"))


def _fmt(values, digits=2):
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    m, s = mean_std(vals)
    return f"{m:.{digits}f}" if len(vals) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def summarize(cfg: VAEConfig, runs: list) -> tuple[list, list, list]:
    """(headers, rows of strings, per-method summary dicts) of the results table: mean ± std over seeds."""
    m = cfg.eval_samples
    exact = any("test_exact_nll" in r for r in runs)
    headers = ["method", "test −ELBO"] + ([f"IW bound (m={m})"] if m else [])
    if exact:
        headers += ["exact −ELBO", "exact NLL"]
    headers += ["initial −ELBO", "val −ELBO", "train s", "steps/s"]
    rows, summary = [], []
    for method in cfg.methods:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        row = [method, _fmt([r["test_neg_elbo"] for r in rs])]
        if m:
            row.append(_fmt([r["test_iw_bound"] for r in rs]))
        if exact:
            row += [_fmt([r.get("test_exact_neg_elbo") for r in rs]), _fmt([r.get("test_exact_nll") for r in rs])]
        row += [
            _fmt([r["initial_test_neg_elbo"] for r in rs]),
            _fmt([r["val_neg_elbo"] for r in rs]),
            _fmt([r["seconds"] for r in rs], 0),
            _fmt([r["steps_per_second"] for r in rs], 1),
        ]
        rows.append(row)
        entry = {"method": method, "seeds": len(rs)}
        for key in (
            "test_neg_elbo",
            "test_iw_bound",
            "test_exact_neg_elbo",
            "test_exact_nll",
            "initial_test_neg_elbo",
            "seconds",
        ):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                entry[key], entry[key + "_std"] = mean_std(vals)
        summary.append(entry)
    return headers, rows, summary


def _plot_curves(cfg: VAEConfig, runs: list, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for method in cfg.methods:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        for ax, key in ((ax1, "train_curve"), (ax2, "val_curve")):
            steps = [p[0] for p in rs[0][key]]
            mean = [sum(r[key][i][1] for r in rs) / len(rs) for i in range(len(steps))]
            ax.plot(steps, mean, label=method, marker="o" if key == "val_curve" else None, ms=3)
    ax1.set(title=f"training objective (mean of every {cfg.log_every} steps)", xlabel="step", ylabel="nats / image")
    ax2.set(title="validation −ELBO (discrete latents)", xlabel="step", ylabel="nats / image")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"categorical VAE, {cfg.data}, latent {cfg.latent}, {cfg.seeds} seed(s)")
    return save_figure(fig, path)


def _plot_schedule(cfg: VAEConfig, path: Path) -> Path:
    from matplotlib.figure import Figure

    schedule = gumbelkit.schedules.parse_schedule(cfg.tau_schedule)
    steps = list(range(0, cfg.steps, max(1, cfg.steps // 500))) + [cfg.steps - 1]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(steps, [schedule(s) for s in steps])
    ax.set(title=f"τ schedule: {cfg.tau_schedule}", xlabel="step", ylabel="τ")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _methods_line(cfg: VAEConfig) -> str:
    """Every method with all its options, e.g. ``gumbel_rao (k=10); reinforce (n=4)``."""
    parts = []
    for choice in cfg.method_choices.values():
        opts = ", ".join(f"{k}={v}" for k, v in choice.options.items())
        parts.append(f"{choice.label} ({opts})" if opts else choice.label)
    return "; ".join(parts)


def _markdown(cfg: VAEConfig, results: dict, table: str) -> str:
    d, env = results["data"], results["environment"]
    lines = [
        f"# Categorical VAE: {cfg.data}, latent {cfg.latent}",
        "",
        f"Command: `{results['command']}`",
        "",
        (
            f"Data: {d['source']}; {d['n_train']} train / {d['n_val']} val / {d['n_test']} test images "
            f"({d['test_split']}); binarisation {d['binarization']}."
        ),
        f"Training: {cfg.steps} steps of batch {cfg.batch_size}, Adam lr {cfg.lr}, τ {cfg.tau_schedule}.",
        f"Methods and their options: {_methods_line(cfg)}.",
        f"Machine: torch {env['torch']} on {env['device']}, {env['threads']} thread(s); job wall time {results['wall_seconds']:.0f} s.",
        "",
        "Test numbers in nats per image (lower is better), discrete latents, mean ± std over "
        f"{cfg.seeds} seed(s). −ELBO: one sample per image; IW bound: importance-weighted with m samples"
        + ("; exact: summed over all K^N codes." if "exact NLL" in table else "."),
        "",
        table,
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m gumbelkit.experiments.vae ... == gumbelkit vae ...
    from gumbelkit.cli import main as _cli_main

    sys.exit(_cli_main(["vae", *sys.argv[1:]]))
