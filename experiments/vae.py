"""Categorical VAE: which gradient estimator for discrete latent variables?

Jang, Gu, Poole (ICLR 2017) and their notebook: encoder D-512-256-(N*K), decoder (N*K)-256-512-D,
ReLU, Bernoulli likelihood on binarised pixels, N independent K-way latents with a uniform prior
and the analytic KL, Adam(lr 1e-3), batch 100, tau = max(0.5, exp(-3e-5 t)) every 1000 steps; each
is a flag with that default. The objective per image, -ELBO = E_q[-log p(x|z)] + KL(q || uniform),
takes its expectation from the method's own objective (:meth:`gumbelkit.MethodSpec.objective`):
one sample, or a score-function method's samples and surrogate. Every categorical method of the
registry is accepted (``--methods``; default: all of them).

``--family bernoulli`` trains the Bernoulli VAE instead (:mod:`.vae_bernoulli`): ``--latent D`` bits
(default 200, the REBAR / RELAX papers' size), a Bernoulli(1/2) prior with the analytic KL, and
every method of the registry's ``bernoulli`` family: pathwise through
:func:`gumbelkit.binary.sample`, score-function (REBAR / RELAX with their control) through
:func:`gumbelkit.binary.surrogate`. Its numbers are the same, with 2^D codes for the exact ones.

Test numbers always use discrete latents: ``test_neg_elbo`` (one z per image), ``test_iw_bound``
(the importance-weighted bound with m = ``--eval-samples``, Burda et al. 2016) and, when K^N <=
65,536, ``test_exact_neg_elbo`` and ``test_exact_nll`` summed over every code; ``initial_*`` are
the untrained model's. A cell is one (method, seed) run: one generator for the estimator noise and
one for the data order, both from the seed; evaluation draws from freshly seeded generators. The
cell's state (model, optimiser, generators, sampler, logs) is saved every ``--checkpoint-every``
steps, so a resumed run ends bit-identical. Under torchrun each batch is split over the ranks
(DDP), or with ``--sweep-parallel`` whole runs are.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import re
import sys
from typing import Any

import torch

import gumbelkit as gk

from . import config as R
from . import methods as M
from .config import Config, UserError, option, parse_list
from .data import Dataset, binarize_dataset, data_option, load_dataset
from .distributed import DistContext, init_distributed, partition
from .runner import Run, Timer, means, resolve_device, save_figure, table
from .vae_model import CategoricalVAE, evaluate, rank_generator, start, train, train_state

__all__ = ["CategoricalVAE", "VaeConfig", "evaluate", "main", "parse_latent"]

#: Exact enumeration of the latent space when K^N is at most this.
MAX_ENUMERATE = 65536
#: The latent families (the registry's families of the methods that train them).
FAMILIES = ("categorical", "bernoulli")
#: The most bits of a Bernoulli latent.
MAX_BITS = 1_000_000
#: Upper limit of an integer method option: a typo must not ask for a machine-sized allocation.
MAX_OPTION = 10_000


def parse_latent(text: Any) -> tuple[int, int]:
    """``"30x10"`` -> (30, 10): N latent variables with K >= 2 classes each."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m or int(m[1]) < 1 or int(m[2]) < 2 or int(m[1]) * int(m[2]) > 1_000_000:
        raise UserError(f"expected --latent NxK with N >= 1, K >= 2 and N*K <= 1000000 (e.g. 30x10), got {text!r}")
    return int(m[1]), int(m[2])


def _latent(value: Any, flag: str) -> str:
    """``"30x10"`` -> "30x10" (N x K categoricals) or ``"200"`` -> "200" (D bits); the family decides which it must be."""
    if "x" in str(value).lower() or "×" in str(value):
        return "x".join(map(str, parse_latent(value)))
    return str(R.Int(1, MAX_BITS)(value, f"{flag} (D bits)"))


def _methods_help() -> str:
    return (
        "methods NAME[:OPTION=VALUE,...] of --family (default: every one); categorical: "
        f"{M.describe('categorical')}; bernoulli: {M.describe('bernoulli')}"
    )


def _hidden(value: Any, flag: str) -> list[int]:
    sizes = [R.Int(1, 65536)(h, f"each {flag} size") for h in parse_list(value, flag)]
    if len(sizes) > 16:
        raise UserError(f"expected {flag} as 1 to 16 comma-separated sizes, got {value!r}")
    return sizes


def _schedule(value: Any, flag: str) -> str:
    keys = re.findall(r"(\w+)=", str(value))
    if len(keys) != len(set(keys)):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise UserError(f"expected each key once in {flag} {value!r}, got {twice!r} twice")
    try:
        return gk.schedules.parse_schedule(value).spec
    except (ValueError, TypeError, OverflowError) as exc:
        raise UserError(f"{flag}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class VaeConfig(Config):
    """Every option of ``python -m experiments vae``."""

    COMMAND, FIRST = "vae", ("data", "family", "latent", "steps")
    HELP = "train and evaluate a categorical (or Bernoulli) VAE with each estimator"

    out: str = option("runs/vae", "output folder", R.PathText(), role="run")
    data: str = option("mnist5k", "mnist5k, digits, fashion-mnist or idx:FOLDER", data_option)
    latent: str = option(
        None, "NxK categorical latents (default 30x10), or D bits with --family bernoulli (default 200)", _latent
    )
    steps: int = option(3000, "training steps per run", R.Int(1, 10**9))
    family: str = option("categorical", "the latent: N K-way categoricals or D bits", R.OneOf(FAMILIES))
    methods: list = option(None, _methods_help, lambda v, f: v)  # checked by cross_check, in --family
    seeds: int = option(1, "number of seeds R (runs seeds 0..R-1)", R.Int(1, 10_000), role="grid")
    tau_schedule: str = option(
        "exp:tau0=1,rate=3e-5,floor=0.5,interval=1000",
        f"temperature schedule (tau must stay >= {R.MIN_TAU:g}); the default is Jang et al.'s",
        _schedule,
    )
    batch_size: int = option(100, "images per step", R.Int(1))
    lr: float = option(1e-3, "Adam learning rate", R.Float(positive=True))
    eval_samples: int = option(100, "m of the importance-weighted test bound (0 skips it)", R.Int(0, 100_000))
    device: str = option("auto", "cpu, cuda or auto (CUDA when available)", lambda v, f: str(v), role="run")
    hidden: list = option([512, 256], "encoder hidden sizes; the decoder mirrors them", _hidden)
    binarize: str = option("fixed", "fixed (threshold) or dynamic (drawn at every use)", R.OneOf(("fixed", "dynamic")))
    threshold: float = option(0.5, "fixed binarisation threshold on grey levels in [0, 1]", R.Float(lo=0.0, below=1.0))
    log_every: int = option(100, "steps per point of the training curve", R.Int(1))
    val_every: int = option(500, "steps between validation -ELBO evaluations", R.Int(1))
    checkpoint_every: int = option(500, "steps between saved states", R.Int(1))
    sweep_parallel: bool = option(
        False, "under torchrun: whole runs over the ranks instead of DDP", R.Flag(), role="run"
    )
    dist_timeout: int = option(1800, "seconds a rank waits in a collective", R.Int(1, 7 * 24 * 3600), role="run")

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        family, latent = values["family"], values["latent"]
        if latent is None:
            latent = values["latent"] = "30x10" if family == "categorical" else "200"
        if ("x" in latent) != (family == "categorical"):
            want = "NxK (e.g. 30x10)" if family == "categorical" else "D, a number of bits (e.g. 200)"
            raise UserError(f"expected --latent {want} with --family {family}, got {latent!r}")
        every = list(gk.estimators.methods(family))
        values["methods"] = M.labels(family, cap=MAX_OPTION)(
            every if values["methods"] is None else values["methods"], "--methods"
        )
        # The schedules are monotone, so the ends decide; 1000 steps in between guard the rest.
        schedule, last = gk.schedules.parse_schedule(values["tau_schedule"]), values["steps"] - 1
        taus = [schedule(t) for t in sorted({0, last, *range(0, last, max(1, last // 1000))})]
        if not all(math.isfinite(t) and t >= R.MIN_TAU for t in taus):
            raise UserError(
                f"expected --tau-schedule to stay finite and >= {R.MIN_TAU:g} over the {values['steps']} steps, "
                f"got tau from {taus[0]:g} to {taus[-1]:g}"
            )
        return values

    @functools.cached_property
    def choices(self) -> list[M.Method]:
        """The :class:`~experiments.methods.Method` objects of ``methods``, in ``family``."""
        return M.choices(self.methods, self.family, cap=MAX_OPTION)

    @property
    def latent_nk(self) -> tuple[int, int]:
        return parse_latent(self.latent)

    @property
    def latent_bits(self) -> int:
        return int(self.latent)

    @property
    def enumerable(self) -> bool:
        if self.family == "bernoulli":
            return 2**self.latent_bits <= MAX_ENUMERATE
        n, k = self.latent_nk
        return k**n <= MAX_ENUMERATE


# --------------------------------------------------------------------------- one (method, seed) cell


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _cell(cfg: VaeConfig, ds: Dataset, ctx: DistContext, method: M.Method, seed: int, store) -> dict:
    """Train and evaluate one (method, seed), from its saved state if there is one; returns its record."""
    cid = f"{method.tag}-seed{seed}"
    run = start(cfg, ds, ctx, method, seed, store.state(cid), cid)
    noise_digest = None
    if ctx.enabled:  # evidence that ranks draw different noise: 256 draws of a copy of the generator
        copy = torch.Generator(device=run.noise.device)
        copy.set_state(run.noise.get_state())
        noise_digest = _digest(gk.gumbel_noise((256,), generator=copy, device=copy.device).cpu().numpy().tobytes())
    test = functools.partial(evaluate, x=ds.test, iw_samples=cfg.eval_samples, exact=cfg.enumerable)
    with Timer(ctx.device) as timer:
        if run.state["initial"] is None:
            run.state["initial"] = test(run.model, generator=rank_generator(seed, 0, "eval", ctx.device))
    run.eval_seconds = timer.seconds
    train(cfg, ds, ctx, method, seed, run, lambda: store.save_state(cid, train_state(run, ctx)))
    with Timer(ctx.device) as timer:
        final = test(run.model, generator=rank_generator(seed, 0, "eval", ctx.device))
    state, initial = run.state, run.state["initial"]
    record = {"method": method.label, "seed": seed, "steps": cfg.steps}
    for key in ("neg_elbo", "iw_bound") + ("exact_neg_elbo", "exact_nll") * cfg.enumerable:
        record |= {f"test_{key}": final.get(key), f"initial_test_{key}": initial.get(key)}
    seconds = state["train_seconds"]
    record |= {
        "eval_samples": cfg.eval_samples,
        "val_neg_elbo": state["val_curve"][-1][1],
        "tau_final": gk.schedules.parse_schedule(cfg.tau_schedule)(cfg.steps - 1),
        # a relaxed method trains on the relaxed objective, not on a discrete -ELBO sample
        "train_objective": "-ELBO estimate" if method.spec.one_hot else "relaxed -ELBO (one sample)",
        "trained_control": method.spec.has_control,
        "train_curve": state["train_curve"],
        "val_curve": state["val_curve"],
        "seconds": seconds,
        "steps_per_second": cfg.steps / seconds if seconds > 0 else float("nan"),
        "eval_seconds": run.eval_seconds + timer.seconds,
        "resumed_from_step": run.resumed_from,
        "world_size": ctx.world_size,
    }
    if ctx.enabled:  # evidence that DDP kept the replicas in sync and that ranks drew different noise
        params = b"".join(p.detach().cpu().contiguous().numpy().tobytes() for p in run.model.parameters())
        record["param_digest_per_rank"] = ctx.all_gather_object(_digest(params))
        record["noise_digest_per_rank"] = ctx.all_gather_object(noise_digest)
    return record


# --------------------------------------------------------------------------- the job


def _load_data(cfg: VaeConfig) -> Dataset:
    ds = binarize_dataset(load_dataset(cfg.data), cfg.binarize, threshold=cfg.threshold)
    if cfg.batch_size > ds.train.shape[0]:
        raise UserError(f"expected --batch-size <= {ds.train.shape[0]} (training images), got {cfg.batch_size}")
    return ds


def main(cfg: VaeConfig) -> dict:
    """Train and evaluate every (method, seed); write the results (main process); return them.

    Under torchrun this joins the process group (gloo on CPU, NCCL on CUDA, cuda:LOCAL_RANK per rank).
    """
    ctx = init_distributed(resolve_device(cfg.device), timeout_s=cfg.dist_timeout)
    try:
        results = _job(cfg, ctx)
    except BaseException:
        ctx.shutdown(clean=False)
        raise
    ctx.shutdown()
    return results


def _job(cfg: VaeConfig, ctx: DistContext) -> dict:
    sweep = ctx.enabled and cfg.sweep_parallel  # each rank trains whole runs, as a one-process job
    grid = [(m, s) for m in cfg.choices for s in range(cfg.seeds)]
    mine = partition(grid, ctx.rank, ctx.world_size) if sweep else grid
    # Pixels that are 0 in every image give their first-layer weights zero gradients, so Adam's
    # moments for them decay into the subnormal range, where CPU arithmetic is slow (measured: one
    # Adam step over 1.2M entries, a third subnormal, 12 ms -> 4-6 ms with flushing).
    flush, writes = ctx.device.type == "cpu", ctx.is_main or sweep
    run = ctx.agreed(lambda: Run(cfg, len(mine), flush_denormal=flush, writes=writes))
    prefix = f"vae[rank {ctx.rank}]" if sweep else "vae"
    log = (lambda msg: print(f"{prefix}: {msg}", file=sys.stderr, flush=True)) if writes else (lambda msg: None)
    with run:
        ds = ctx.agreed(lambda: _load_data(cfg))
        one = DistContext(device=ctx.device) if sweep else ctx
        run.store.key = cfg.key(data=ds.digest, device=ctx.device.type, world_size=one.world_size)
        ctx.agreed(lambda: run.store.verify(f"{m.tag}-seed{s}" for m, s in mine))
        s = ds.summary()
        log(
            f"{s['name']}: {s['n_train']} train / {s['n_val']} val / {s['n_test']} test images of {s['input_dim']} "
            f"pixels; {len(cfg.choices)} method(s) x {cfg.seeds} seed(s) x {cfg.steps} steps on {ctx.device}"
        )
        records = ctx.agreed(
            lambda: [
                _logged(cfg, log, run.cell(f"{m.tag}-seed{s}", functools.partial(_cell, cfg, ds, one, m, s, run.store)))
                for m, s in mine
            ]
        )
    if sweep:  # one collective after the whole share; the records in grid order
        order = {(m.label, s): i for i, (m, s) in enumerate(grid)}
        records = sorted(itertools.chain(*ctx.all_gather_object(records)), key=lambda r: order[r["method"], r["seed"]])
    mode = ("sweep" if sweep else "ddp") if ctx.enabled else None
    results = {"data": ds.summary() | {"binarization": ds.notes[-1]}, "summary": _summary(records), "runs": records}
    results |= {"world_size": ctx.world_size, "distributed": {"mode": mode, "backend": ctx.backend}} | run.meta(
        ctx.device
    )
    if ctx.is_main:
        run.write(results, _markdown, [("train_curves.png", _plot_curves), ("tau_schedule.png", _plot_schedule)])
        print(table(results["summary"], _columns(results["summary"])), end="")
    return results


def _logged(cfg: VaeConfig, log, rec: dict) -> dict:
    iw = f", IW{cfg.eval_samples} {rec['test_iw_bound']:.2f}" if rec["test_iw_bound"] is not None else ""
    log(
        f"{rec['method']} seed {rec['seed']}: test -ELBO {rec['test_neg_elbo']:.2f}{iw} "
        f"(untrained {rec['initial_test_neg_elbo']:.2f}); {rec['seconds']:.0f} s, {rec['steps_per_second']:.1f} steps/s"
    )
    return rec


# --------------------------------------------------------------------------- outputs

#: The table: (header, record key, decimals); a column whose key no run has is left out.
_TABLE = [("test −ELBO", "test_neg_elbo", 2), ("IW bound", "test_iw_bound", 2), ("exact −ELBO", "test_exact_neg_elbo", 2),
          ("exact NLL", "test_exact_nll", 2), ("initial −ELBO", "initial_test_neg_elbo", 2), ("val −ELBO", "val_neg_elbo", 2),
          ("train s", "seconds", 0), ("steps/s", "steps_per_second", 1)]  # fmt: skip


def _summary(runs: list) -> list[dict]:
    """Per method: mean and standard deviation over the seeds of every number of the table."""
    out = []
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        out.append({"method": method, "seeds": len(rs)} | means(rs, (key for _, key, _ in _TABLE)))
    return out


def _columns(summary: list[dict]) -> list:
    def cell(key: str, digits: int):
        return lambda e: f"{e[key]:.{digits}f}" + (f" ± {e[key + '_std']:.{digits}f}" if e["seeds"] > 1 else "")

    return [("method", "method")] + [(h, cell(k, d)) for h, k, d in _TABLE if all(k in e for e in summary)]


def _markdown(res: dict) -> str:
    cfg, d, env = res["config"], res["data"], res["environment"]
    return (
        f"# {cfg['family'].capitalize()} VAE: {cfg['data']}, latent {cfg['latent']}\n\nCommand: `{res['command']}`\n\nData: {d['source']}; "
        f"{d['n_train']} train / {d['n_val']} val / {d['n_test']} test images ({d['test_split']}); binarisation "
        f"{d['binarization']}.\nTraining: {cfg['steps']} steps of batch {cfg['batch_size']}, Adam lr {cfg['lr']}, τ "
        f"{cfg['tau_schedule']}.\nMachine: torch {env['torch']} on {env['device']}, {env['threads']} thread(s); job wall "
        f"time {res['runtime_s']:.0f} s.\n\nTest numbers in nats per image (lower is better), discrete latents, mean ± "
        "std over the seeds. −ELBO: one sample per image; IW bound: importance-weighted with m = --eval-samples samples; "
        f"exact: summed over all {'2^D' if cfg['family'] == 'bernoulli' else 'K^N'} codes.\n\n"
        + table(res["summary"], _columns(res["summary"]))
    )


def _plot_curves(res: dict, path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for method in dict.fromkeys(r["method"] for r in res["runs"]):
        rs = [r for r in res["runs"] if r["method"] == method]
        for ax, key in zip(axes, ("train_curve", "val_curve")):
            steps = [p[0] for p in rs[0][key]]
            mean = [sum(r[key][i][1] for r in rs) / len(rs) for i in range(len(steps))]
            ax.plot(steps, mean, label=method, marker="o" if key == "val_curve" else None, ms=3)
    axes[0].set(title="training objective (mean over each logging window)", xlabel="step", ylabel="nats / image")
    axes[1].set(title="validation −ELBO (discrete latents)", xlabel="step", ylabel="nats / image")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _plot_schedule(res: dict, path) -> None:
    from matplotlib.figure import Figure

    cfg = res["config"]
    schedule = gk.schedules.parse_schedule(cfg["tau_schedule"])
    steps = list(range(0, cfg["steps"], max(1, cfg["steps"] // 500))) + [cfg["steps"] - 1]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(steps, [schedule(s) for s in steps])
    ax.set(title=f"τ schedule: {cfg['tau_schedule']}", xlabel="step", ylabel="τ")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
