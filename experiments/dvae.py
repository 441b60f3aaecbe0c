r"""Discrete VAE with a Gumbel codebook: reconstruction, codebook use and speed of every sampling method.

A small convolutional dVAE (the model family of DALL-E's dVAE and taming-transformers'
``GumbelQuantize``), trained once per method and seed: an encoder of two stride-2 4x4 convolutions
(1 -> c -> 2c channels, ReLU; an H x W image becomes an H/4 x W/4 grid), the quantiser
:class:`gumbelkit.nn.GumbelQuantizer` on the grid (``dim=1``: ``--codes`` logits per position, a
sample with the method, a ``--codes x --embedding-dim`` codebook), and a decoder (a 1x1 convolution
to 2c, ReLU, two stride-2 transposed convolutions) giving one logit per pixel. The loss per image is
the Bernoulli cross-entropy of the grey levels plus ``--kl-weight`` times the analytic KL of each
position's posterior to the uniform prior, summed over the positions (weight 1: the negative ELBO).
Adam, constant ``--tau``; every method of a seed starts from the same weights and sees the same batches.

Recorded every ``--eval-every`` steps: the training reconstruction, the test reconstruction with
deterministic (argmax) codes on the first ``--eval-images`` test images, the perplexity of those
test codes, the codes no training step drew in the window ("dead codes") and the milliseconds per
step; at the end the same on the whole test split. A run *collapsed* when its perplexity is below
``--codes / 10`` (test codes, and sampled training codes). Methods: every categorical sample method
(``--methods``). References: Ramesh et al., ICML 2021; Jang, Gu, Poole, ICLR 2017.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch

import gumbelkit as gk

from . import methods as M
from .config import MIN_TAU, Config, Float, Int, PathText, UserError, option
from .data import DATA_SOURCES, Dataset, data_option, load_dataset
from .runner import Run, Timer, generator, means, save_figure, table

__all__ = ["DVAE", "DvaeConfig", "evaluate", "main", "reconstruction_loss", "train"]

COLLAPSE_DIVISOR = 10
EVAL_CHUNK = 1000


@dataclasses.dataclass(frozen=True)
class DvaeConfig(Config):
    """Every option of ``python -m experiments dvae``."""

    COMMAND, HELP = "dvae", "train a discrete VAE with a Gumbel codebook with each method"

    out: str = option("runs/dvae", "output folder", PathText(), role="run")
    data: str = option(
        "fashion-mnist", f"{', '.join(DATA_SOURCES)} or idx:FOLDER (H and W divisible by 4)", data_option
    )
    methods: list = M.option("categorical", "sample")
    steps: int = option(400, "training steps (Adam) per method and seed", Int(1, 10**7))
    batch_size: int = option(32, "training images per step", Int(1, 10**5))
    lr: float = option(1e-3, "Adam learning rate", Float(positive=True, hi=10.0))
    channels: int = option(16, "encoder channels c (layers c and 2c; the decoder mirrors them)", Int(1, 1024))
    codes: int = option(512, "codebook size (logits per grid position)", Int(2, 65536))
    embedding_dim: int = option(32, "size of each codebook vector", Int(1, 4096))
    tau: float = option(1.0, "temperature of every method (constant)", Float(positive=True, lo=MIN_TAU))
    kl_weight: float = option(1.0, "weight of the KL to the uniform prior (1: the ELBO)", Float(lo=0.0))
    eval_every: int = option(100, "steps between records (also the dead-code window)", Int(1, 10**7))
    eval_images: int = option(1000, "test images of the records during training", Int(1, 10**7))
    seeds: int = option(3, "independently trained models per method", Int(1, 1000), role="grid")
    seed: int = option(0, "base seed of the batches, the initialisation and the noise", Int(0, 2**62))

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        if values["eval_every"] > values["steps"]:
            raise UserError(f"expected --eval-every <= --steps ({values['steps']}), got {values['eval_every']}")
        return values

    choices = M.Chosen("categorical", kind="sample")


class DVAE(torch.nn.Module):
    """The convolutional dVAE of the module docstring: ``forward(x)`` returns (pixel logits, quantiser output)."""

    def __init__(self, method: M.Method, cfg: DvaeConfig, generator: torch.Generator | None = None):
        super().__init__()
        c, nn = cfg.channels, torch.nn
        self.encoder = nn.Sequential(nn.Conv2d(1, c, 4, 2, 1), nn.ReLU(), nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ReLU())
        self.quantizer = gk.nn.GumbelQuantizer(2 * c, cfg.codes, cfg.embedding_dim, method=method.name, tau=cfg.tau,
                                               dim=1, kl_weight=cfg.kl_weight, generator=generator,
                                               dead_window=cfg.eval_every, **method.options)  # fmt: skip
        self.decoder = nn.Sequential(nn.Conv2d(cfg.embedding_dim, 2 * c, 1), nn.ReLU(), nn.ConvTranspose2d(2 * c, c, 4, 2, 1),
                                     nn.ReLU(), nn.ConvTranspose2d(c, 1, 4, 2, 1))  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        q = self.quantizer(self.encoder(x))
        return self.decoder(q.z_q), q


def reconstruction_loss(pixel_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli cross-entropy of grey levels ``x`` in [0, 1], summed over the pixels: one value per image (nats)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(pixel_logits, x, reduction="none").flatten(1).sum(1)


@torch.no_grad()
def evaluate(model: DVAE, images: torch.Tensor, shape: tuple) -> dict:
    """Deterministic (eval-mode, argmax-code) reconstruction and codebook use on ``images`` (N, H*W)."""
    was_training = model.training
    model.eval()
    total, counts = 0.0, torch.zeros(model.quantizer.n_codes, dtype=torch.float64)
    for start in range(0, images.shape[0], EVAL_CHUNK):
        x = images[start : start + EVAL_CHUNK].view(-1, 1, *shape)
        logits, q = model(x)
        total += float(reconstruction_loss(logits, x).sum())
        counts += torch.bincount(q.codes.flatten(), minlength=counts.numel()).double()
    model.train(was_training)
    p = counts[counts > 0] / counts.sum()
    return {
        "recon": total / images.shape[0],
        "perplexity": math.exp(-float((p * p.log()).sum())),
        "codes_unused": int((counts == 0).sum()),
    }


def train(method: M.Method, seed: int, cfg: DvaeConfig, ds: Dataset) -> dict:
    """Train one dVAE: the curves and the final test metrics (batches and initial weights from (cfg.seed, seed))."""
    shape, data = tuple(ds.image_shape), generator(cfg.seed, "batches", seed)
    torch.manual_seed(int(torch.randint(2**62, (), generator=generator(cfg.seed, "init", seed))))
    model = DVAE(method, cfg, generator=generator(cfg.seed, method.tag, seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    keys = ("step", "train_recon", "train_perplexity", "ms_per_step", "test_recon", "test_perplexity", "dead_codes")
    curves: dict[str, list] = {k: [] for k in keys}
    window, seconds = [0.0, 0.0, 0.0, 0], 0.0  # recon, perplexity, seconds, steps since the last record
    for step in range(1, cfg.steps + 1):
        x = ds.train[torch.randint(ds.train.shape[0], (cfg.batch_size,), generator=data)].view(-1, 1, *shape)
        with Timer() as timer:
            logits, q = model(x)
            recon = reconstruction_loss(logits, x).mean()
            loss = recon + cfg.kl_weight * q.kl * q.codes[0].numel()  # q.kl is a mean over positions
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds += timer.seconds
        window = [
            window[0] + float(recon.detach()),
            window[1] + float(q.perplexity),
            window[2] + timer.seconds,
            window[3] + 1,
        ]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate(model, ds.test[: cfg.eval_images], shape)
            values = (step, window[0] / window[3], window[1] / window[3], 1e3 * window[2] / window[3], ev["recon"],
                      ev["perplexity"], int(model.quantizer.dead_codes().numel()))  # fmt: skip
            for key, v in zip(keys, values):
                curves[key].append(v)
            window = [0.0, 0.0, 0.0, 0]
    with Timer() as t_eval:
        final = evaluate(model, ds.test, shape)
    return {
        "test_recon": final["recon"],
        "test_perplexity": final["perplexity"],
        "test_codes_unused": final["codes_unused"],
        "train_recon": curves["train_recon"][-1],
        "train_perplexity": curves["train_perplexity"][-1],
        "dead_codes": curves["dead_codes"][-1],
        "ms_per_step": 1e3 * seconds / cfg.steps,
        "train_s": seconds,
        "eval_s": t_eval.seconds,
        "collapsed": final["perplexity"] < cfg.codes / COLLAPSE_DIVISOR,
        "curves": curves,
    }


_FIELDS = ("test_recon", "test_perplexity", "test_codes_unused", "train_recon", "train_perplexity", "dead_codes",
           "ms_per_step")  # fmt: skip


def main(cfg: DvaeConfig) -> dict:
    """Train every (method, seed); write the results and the plot; return them."""
    with Run(cfg, len(cfg.choices) * cfg.seeds) as run:
        ds = load_dataset(cfg.data)
        if len(ds.image_shape) != 2 or ds.image_shape[0] % 4 or ds.image_shape[1] % 4:
            raise UserError(
                f"--data {cfg.data}: expected images with H and W divisible by 4, got {tuple(ds.image_shape)}"
            )
        run.store.key = cfg.key(data=ds.digest)
        rows = [
            {"method": m.label, "seed": s} | run.cell(f"{m.label}|{s}", functools.partial(train, m, s, cfg, ds))
            for s in range(cfg.seeds)
            for m in cfg.choices
        ]
    floor, summary = cfg.codes / COLLAPSE_DIVISOR, []
    for label in dict.fromkeys(r["method"] for r in rows):
        cells = [r for r in rows if r["method"] == label]
        entry: dict[str, Any] = {
            "method": label,
            "seeds": len(cells),
            "collapsed": sum(r["test_perplexity"] < floor for r in cells),
            "collapsed_train": sum(r["train_perplexity"] < floor for r in cells),
        }
        summary.append(entry | means(cells, _FIELDS))
    results = {
        "data": ds.summary(),
        "summary": summary,
        "rows": rows,
        **run.meta(definitions=DEFINITIONS, compute_s=sum(r["train_s"] + r["eval_s"] for r in rows)),
    }
    run.write(results, _markdown, [("dvae.png", _plot)])
    return results


DEFINITIONS = {
    "test_recon": "Bernoulli cross-entropy of the grey levels, nats per image, deterministic (argmax) codes, "
    "whole test split",
    "train_recon": "the same on the training batches with sampled codes, mean over the last record interval",
    "test_perplexity": "exp(entropy) of the histogram of the test codes over every position (max: codes)",
    "test_codes_unused": "codes that no position of any test image chose",
    "train_perplexity": "exp(entropy) of each training batch's histogram of sampled codes, mean over "
    "the last record interval (at most batch_size x positions)",
    "dead_codes": "codes that no training step drew in the last eval_every steps",
    "ms_per_step": "wall-clock milliseconds per training step (forward, backward, Adam)",
    "collapsed": f"runs whose final test perplexity is below codes / {COLLAPSE_DIVISOR}",
    "collapsed_train": f"runs whose training batch perplexity is below codes / {COLLAPSE_DIVISOR}",
    "std": "standard deviation over the seeds (independently trained models)",
}


def _pm(key: str) -> Any:
    return lambda e: f"{e[key]:.1f} ± {e[key + '_std']:.1f}"


def _markdown(res: dict) -> str:
    cfg, d = res["config"], res["data"]
    cols: list[tuple[str, Any]] = [
        ("method", "method"),
        ("test recon (nats)", _pm("test_recon")),
        ("train recon (nats)", _pm("train_recon")),
        ("test perplexity", _pm("test_perplexity")),
        ("train perplexity", _pm("train_perplexity")),
        ("codes unused (test)", _pm("test_codes_unused")),
        ("dead codes (train)", _pm("dead_codes")),
        ("ms / step", _pm("ms_per_step")),
        ("collapsed (test / train)", lambda e: f"{e['collapsed']} / {e['collapsed_train']} of {e['seeds']}"),
    ]
    runs = [("method", "method"), ("seed", "seed")] + [(k.replace("_", " "), k) for k in _FIELDS]
    return (
        f"# Discrete VAE with a Gumbel codebook\n\nCommand: `{res['command']}`  \nRuntime: {res['runtime_s']:.1f} s "
        f"({res['cells_computed']} models trained, {res['cells_resumed']} reused)  \nData: {d['name']} "
        f"({d['n_train']} training, {d['n_test']} test images); {cfg['codes']} codes, tau {cfg['tau']:g}, "
        f"{cfg['steps']} steps of {cfg['batch_size']} images.\n\nMean ± standard deviation over {cfg['seeds']} "
        "seeds; test metrics use argmax codes on the whole test split; collapsed: perplexity < codes / "
        f"{COLLAPSE_DIVISOR} (test / training codes).\n\n"
        + table(res["summary"], cols)
        + "\n## Every run\n\n"
        + table(res["rows"], runs)
    )


def _plot(res: dict, path: Any) -> None:
    from matplotlib.figure import Figure

    panels = [
        ("test_recon", "test reconstruction (nats / image)"),
        ("train_recon", "training reconstruction"),
        ("test_perplexity", "codebook perplexity (test codes)"),
        ("train_perplexity", "batch perplexity"),
        ("dead_codes", "dead codes (training window)"),
    ]
    fig = Figure(figsize=(3.8 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels))
    for method in dict.fromkeys(r["method"] for r in res["rows"]):
        runs = [r["curves"] for r in res["rows"] if r["method"] == method]
        for ax, (key, title) in zip(axes, panels):
            ax.plot(
                runs[0]["step"],
                torch.tensor([c[key] for c in runs], dtype=torch.float64).mean(0).tolist(),
                marker=".",
                label=method,
            )
            ax.set(title=title, xlabel="step")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)
