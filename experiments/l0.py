r"""L0 pruning lab: Hard Concrete unit gates on an MLP classifier, beside magnitude pruning at the same sparsity.

Louizos, Welling, Kingma (ICLR 2018), the 784-300-100-10 MLP: each weight layer gets a
:class:`gumbelkit.nn.L0Gate` on its *input* units (Hard Concrete, beta = 2/3, (gamma, zeta) =
(-0.1, 1.1), sampled per example in training; initial drop rates 0.2 for the pixels and 0.5 for the
hidden units, the paper's code). The loss is the mean cross-entropy plus lambda times the paper's
group penalty :math:`\sum_l \mathrm{fan\_out}_l \sum_j P(z_{lj} \ne 0)` (the expected number of
non-zero weights), lambda = m * 0.1 / N for each m of ``--lambdas``. At test time a gate is its
deterministic value; a unit whose gate is 0 is pruned.

Baseline (``magnitude``): the same MLP trained densely, then at each L0 model's sparsity the same
number of input units per layer kept by the L2 norm of their outgoing weights (what a gate on the
unit removes), the others zeroed; its error as pruned and after ``--finetune-epochs`` with the
pruned columns held at zero. Reported on the test split (and the validation split): error, units
kept per layer, fractions of units and of weights kept. Cells: per seed the dense model (its
weights kept as the cell's state), per (seed, lambda) the L0 model and its magnitude baseline, each
drawing from its own stream, so a changed lambda grid reuses the cells it shares.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
from typing import Any, cast

import torch
from torch import nn

import gumbelkit as gk

from .config import Config, Float, Floats, Int, Names, PathText, UserError, option, parse_list
from .data import Dataset, data_option, load_dataset
from .runner import Run, Timer, mean_std, save_figure, table

__all__ = ["L0MLP", "L0Config", "error_rate", "expected_l0", "magnitude_masks", "main", "weights_kept"]

ARMS = ("l0", "magnitude")  # the pruning methods: L0 gates, and magnitude pruning of the dense model
BETA, LIMITS, DROP_INPUT, DROP_HIDDEN, LAMBDA_BASE = 2.0 / 3.0, (-0.1, 1.1), 0.2, 0.5, 0.1


@dataclasses.dataclass(frozen=True)
class L0Config(Config):
    """Every option of ``python -m experiments l0``."""

    COMMAND, HELP, FIRST = (
        "l0",
        "L0 (Hard Concrete) unit pruning of an MLP vs magnitude pruning",
        ("data", "epochs", "lambdas"),
    )

    out: str = option("runs/l0", "output folder", PathText(), role="run")
    data: str = option("fashion-mnist", "fashion-mnist, digits, mnist5k or idx:FOLDER (labels needed)", data_option)
    methods: list = option(list(ARMS), "pruning methods (magnitude keeps the L0 models' unit counts, so needs l0)",
                           Names(ARMS, what="pruning method"))  # fmt: skip
    hidden: list = option(
        [300, 100], "hidden layer widths", lambda v, f: [Int(1, 100_000)(x, f) for x in parse_list(v, f)]
    )
    lambdas: list = option([1.0, 3.0, 5.0, 10.0, 20.0], "multiples m of the paper's penalty: lambda = m * 0.1 / N",
                           Floats(Float(positive=True, hi=1e6), "lambda multiple"), role="grid")  # fmt: skip
    epochs: int = option(12, "training epochs of the L0 and the dense models", Int(1, 10_000))
    finetune_epochs: int = option(2, "fine-tuning epochs of the magnitude-pruned models", Int(0, 10_000))
    batch_size: int = option(100, "minibatch size", Int(1, 1_000_000))
    lr: float = option(1e-3, "Adam learning rate", Float(positive=True, hi=10.0))
    seeds: int = option(1, "seeds (each: its own initialisation, data order and gate noise)", Int(1, 1000), role="grid")
    seed: int = option(0, "first seed", Int(0, 2**62), role="grid")

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        if "l0" not in values["methods"]:
            raise UserError("expected --methods to include 'l0': the magnitude baseline keeps its unit counts")
        values["methods"] = [m for m in ARMS if m in values["methods"]]  # the table's order
        values["lambdas"] = sorted(dict.fromkeys(values["lambdas"]))
        return values


class L0MLP(nn.Module):
    """A ReLU MLP with optional :class:`~gumbelkit.nn.L0Gate` gates on the input units of every layer;
    a ``mask`` buffer per layer multiplies the weight columns (magnitude pruning zeroes them there)."""

    def __init__(self, sizes: list[int], *, gated: bool):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        for i, n in enumerate(sizes[:-1]):
            self.register_buffer(f"mask{i}", torch.ones(n))
        drops = [DROP_INPUT] + [DROP_HIDDEN] * (len(sizes) - 2)
        self.gates = nn.ModuleList(gk.nn.L0Gate(n, init_log_alpha=math.log((1 - p) / p), temperature=BETA, limits=LIMITS)
                                   for n, p in zip(sizes[:-1], drops)) if gated else None  # fmt: skip

    def masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask{i}") for i in range(len(self.layers))]

    def linears(self) -> list[nn.Linear]:
        return [cast(nn.Linear, m) for m in self.layers]

    def l0_gates(self) -> list[Any]:
        return [] if self.gates is None else list(self.gates)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        h, gates = x, self.l0_gates()
        for i, (layer, mask) in enumerate(zip(self.linears(), self.masks())):
            h = gates[i](h, generator=generator) if gates else h
            h = nn.functional.linear(h, layer.weight * mask, layer.bias)
            h = torch.relu(h) if i < len(self.layers) - 1 else h
        return h

    def expected_l0(self) -> torch.Tensor:
        return expected_l0(self.l0_gates(), [layer.out_features for layer in self.linears()])

    def units_kept(self) -> list[int]:
        """Input units per layer that the network uses at test time (open gate, mask 1)."""
        gates = self.l0_gates()
        return [
            int(((m > 0) & (gates[i].distribution().deterministic().detach() > 0 if gates else True)).sum())
            for i, m in enumerate(self.masks())
        ]


def expected_l0(gates: list, fan_out: list[int]) -> torch.Tensor:
    """sum_l fan_out_l sum_j P(z_lj != 0): the expected number of non-zero weights (differentiable)."""
    return sum((g.l0_penalty() * f for g, f in zip(gates, fan_out)), torch.zeros(()))


def weights_kept(units: list[int], n_classes: int) -> int:
    """Weights between kept units, sum_l k_l k_{l+1} (every output kept; biases excluded)."""
    return sum(a * b for a, b in zip(units, list(units[1:]) + [n_classes]))


def magnitude_masks(net: L0MLP, keep: list[int]) -> list[torch.Tensor]:
    """Per layer, the 0/1 mask of the ``keep[l]`` input units with the largest outgoing-weight L2
    norm (column j of W_l); ties kept by the lower index (a stable sort)."""
    masks = []
    for layer, k in zip(net.linears(), keep):
        mask = torch.zeros(layer.in_features)
        mask[torch.sort(-layer.weight.detach().norm(dim=0), stable=True).indices[:k]] = 1.0
        masks.append(mask)
    return masks


def error_rate(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class differs from the label."""
    return float((logits.argmax(-1) != labels).to(torch.float64).mean())


@torch.no_grad()
def _errors(net: L0MLP, ds: Dataset, prefix: str = "") -> dict:
    net.eval()
    out = {}
    for split in ("test", "val"):
        x, y = getattr(ds, split), getattr(ds, f"{split}_labels")
        out[f"{prefix}{split}_error"] = error_rate(
            torch.cat([net(x[i : i + 10_000]) for i in range(0, x.shape[0], 10_000)]), y
        )
    return out


def _train(net: L0MLP, ds: Dataset, epochs: int, cfg: L0Config, lam: float, gen: torch.Generator) -> list[float]:
    """Adam on mean cross-entropy + lam * expected L0; the mean training loss of each epoch."""
    x, y, losses = ds.train, ds.train_labels, []
    assert y is not None
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    for _ in range(epochs):
        net.train()
        order, total, batches = torch.randperm(x.shape[0], generator=gen), 0.0, 0
        for start in range(0, x.shape[0], cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = nn.functional.cross_entropy(net(x[idx], generator=gen), y[idx])
            if net.gates is not None and lam > 0:
                loss = loss + lam * net.expected_l0()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
        if not math.isfinite(total):
            raise UserError(f"l0: the training loss became {total} (try a smaller --lr)")
        losses.append(total / batches)
    return losses


def _stream(seed: int, stream: int, mult: float = 0.0) -> torch.Generator:
    """A generator per (seed, purpose, lambda multiple): a cell draws the same whatever else runs."""
    digest = hashlib.sha256(f"l0/{seed}/{stream}/{float(mult)!r}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def _new(sizes: list[int], gated: bool, gen: torch.Generator) -> L0MLP:
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**62, (), generator=gen)))
        return L0MLP(sizes, gated=gated)


def _dense_cell(cfg: L0Config, ds: Dataset, sizes: list[int], seed: int, run: Run) -> dict:
    gen = _stream(seed, 0)
    net = _new(sizes, False, gen)
    with Timer() as t:
        losses = _train(net, ds, cfg.epochs, cfg, 0.0, gen)
    run.store.save_state(f"dense|{seed}", net.state_dict())
    return {"seed": seed, **_errors(net, ds), "final_train_loss": losses[-1], "wall_s": t.seconds}


def _l0_cell(cfg: L0Config, ds: Dataset, sizes: list[int], seed: int, mult: float, dense: L0MLP | None) -> dict:
    lam, gen = mult * LAMBDA_BASE / ds.train.shape[0], _stream(seed, 1, mult)
    net = _new(sizes, True, gen)
    with Timer() as t:
        losses = _train(net, ds, cfg.epochs, cfg, lam, gen)
    kept = net.units_kept()
    row: dict[str, Any] = {
        "seed": seed,
        "lambda_multiple": mult,
        "lambda": lam,
        "units_kept": kept,
        "architecture": "-".join(map(str, kept)),
        "frac_units": sum(kept) / sum(sizes[:-1]),
        "frac_weights": weights_kept(kept, sizes[-1]) / weights_kept(sizes[:-1], sizes[-1]),
        "l0": {
            **_errors(net, ds),
            "expected_l0_weights": float(net.expected_l0().detach()),
            "final_train_loss": losses[-1],
            "wall_s": t.seconds,
        },
    }
    if dense is not None:
        pruned = L0MLP(sizes, gated=False)
        pruned.load_state_dict(dense.state_dict())
        for buf, mask in zip(pruned.masks(), magnitude_masks(pruned, kept)):
            buf.copy_(mask)
        entry = _errors(pruned, ds)
        with Timer() as t:
            if cfg.finetune_epochs:
                _train(pruned, ds, cfg.finetune_epochs, cfg, 0.0, _stream(seed, 2, mult))
        row["magnitude"] = (
            entry
            | _errors(pruned, ds, "finetuned_")
            | {"units_kept": pruned.units_kept(), "finetune_wall_s": t.seconds}
        )
    return row


def _load_data(cfg: L0Config) -> Dataset:
    ds = load_dataset(cfg.data)
    if not ds.has_labels:
        raise UserError(
            f"--data {cfg.data}: no class labels (an idx: folder needs train-labels-idx1-ubyte[.gz], and "
            "t10k-labels-idx1-ubyte[.gz] when it has test images)"
        )
    if cfg.batch_size > ds.train.shape[0]:
        raise UserError(f"expected --batch-size <= {ds.train.shape[0]} (training images), got {cfg.batch_size}")
    return ds


def main(cfg: L0Config) -> dict:
    """Train the dense and the L0 models, prune by magnitude; write the results and the plot; return them."""
    seeds, mag = [cfg.seed + i for i in range(cfg.seeds)], "magnitude" in cfg.methods
    with Run(cfg, len(seeds) * (len(cfg.lambdas) + mag)) as run:
        ds = _load_data(cfg)
        labels = b"".join(
            t.numpy().tobytes() for t in (ds.train_labels, ds.val_labels, ds.test_labels) if t is not None
        )
        run.store.key = cfg.key(data=ds.digest, labels=hashlib.sha256(labels).hexdigest())
        sizes = [
            ds.input_dim,
            *cfg.hidden,
            int(max(int(t.max()) for t in (ds.train_labels, ds.val_labels, ds.test_labels) if t is not None)) + 1,
        ]
        dense_rows, cells = [], []
        for seed in seeds:
            dense = None
            if mag:
                dense_rows.append(run.cell(f"dense|{seed}", functools.partial(_dense_cell, cfg, ds, sizes, seed, run)))
                dense = L0MLP(sizes, gated=False)
                state = run.store.state(f"dense|{seed}")
                if state is None:
                    raise UserError(f"the dense weights of seed {seed} are missing from {run.out}; pass --fresh")
                dense.load_state_dict(state)
            cells += [
                run.cell(f"{seed}/{m!r}", functools.partial(_l0_cell, cfg, ds, sizes, seed, m, dense))
                for m in cfg.lambdas
            ]
    results = {
        "data": ds.summary(),
        "architecture": sizes,
        "weights_total": weights_kept(sizes[:-1], sizes[-1]),
        "dense": dense_rows,
        "dense_test_error": mean_std(d["test_error"] for d in dense_rows) if dense_rows else None,
        "cells": cells,
        "summary": _summary(cfg, cells),
        **run.meta(definitions=_definitions(cfg, ds)),
    }
    run.write(results, _markdown, [("l0.png", _plot)])
    return results


def _summary(cfg: L0Config, cells: list[dict]) -> list[dict]:
    """Per lambda multiple: means (and standard deviations) over the seeds."""
    rows = []
    for mult in cfg.lambdas:
        group = [c for c in cells if c["lambda_multiple"] == mult]
        row: dict[str, Any] = {
            "lambda_multiple": mult,
            "lambda": group[0]["lambda"],
            "seeds": len(group),
            "architectures": [c["architecture"] for c in group],
            **{f: mean_std(c[f] for c in group)[0] for f in ("frac_units", "frac_weights")},
        }
        row["l0"] = dict(zip(("test_error", "test_error_std"), mean_std(c["l0"]["test_error"] for c in group)))
        row["l0"]["val_error"] = mean_std(c["l0"]["val_error"] for c in group)[0]
        if "magnitude" in cfg.methods:
            m = [c["magnitude"] for c in group]
            ft = mean_std(e["finetuned_test_error"] for e in m)
            row["magnitude"] = {
                "test_error": mean_std(e["test_error"] for e in m)[0],
                "finetuned_test_error": ft[0],
                "finetuned_test_error_std": ft[1],
                "finetuned_val_error": mean_std(e["finetuned_val_error"] for e in m)[0],
            }
        rows.append(row)
    return rows


def _definitions(cfg: L0Config, ds: Dataset) -> dict:
    return {
        "lambda": f"lambda_multiple * {LAMBDA_BASE} / N, N = {ds.train.shape[0]} training images; the penalty "
        "is lambda * sum_l fan_out_l * sum_j P(gate_lj != 0) (expected non-zero weights)",
        "units_kept": "input units per layer with a non-zero test-time gate",
        "frac_units": "kept units / all input units of the three layers",
        "frac_weights": "weights between kept units / all weights (biases excluded)",
        "test_error": "fraction of test images misclassified, test-time (deterministic) gates",
        "magnitude": "dense model, same units kept per layer as the L0 model, chosen by the L2 norm of "
        "each unit's outgoing weights; test_error as pruned, finetuned_test_error after "
        f"{cfg.finetune_epochs} epoch(s) with the pruned columns held at zero",
    }


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _markdown(res: dict) -> str:
    cfg, d = res["config"], res["data"]
    cols: list[tuple[str, Any]] = [
        ("lambda x (0.1/N)", lambda r: f"{r['lambda_multiple']:g}"),
        ("units kept", lambda r: ", ".join(r["architectures"])),
        ("frac. units", lambda r: _pct(r["frac_units"])),
        ("frac. weights", lambda r: _pct(r["frac_weights"])),
        ("L0 test err.", lambda r: _pct(r["l0"]["test_error"])),
        ("L0 val err.", lambda r: _pct(r["l0"]["val_error"])),
    ]
    if "magnitude" in cfg["methods"]:
        cols += [(f"magnitude {h}", lambda r, k=k: _pct(r["magnitude"][k])) for h, k in (
            ("err. (pruned)", "test_error"), ("err. (fine-tuned)", "finetuned_test_error"),
            ("val err. (fine-tuned)", "finetuned_val_error"))]  # fmt: skip
    dense = "" if res["dense_test_error"] is None else f"Dense test error: {_pct(res['dense_test_error'][0])}\n\n"
    return (
        f"# L0 pruning: {'-'.join(map(str, res['architecture']))} MLP on {d['name']}\n\nCommand: `{res['command']}`  \n"
        f"Runtime: {res['runtime_s']:.1f} s; {cfg['seeds']} seed(s), {cfg['epochs']} epochs, fine-tune "
        f"{cfg['finetune_epochs']} epoch(s)  \nData: {d['n_train']} train / {d['n_val']} validation / {d['n_test']} "
        f"test images ({d['source']})\n\n{dense}" + table(res["summary"], cols) + "\nErrors are means over the seeds.\n"
    )


def _plot(res: dict, path: Any) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    cells = sorted(res["summary"], key=lambda c: c["frac_weights"])
    fw = [c["frac_weights"] for c in cells]
    ax.plot(fw, [100 * c["l0"]["test_error"] for c in cells], "o-", label="L0 gates (Hard Concrete)")
    if cells and "magnitude" in cells[0]:
        ax.plot(fw, [100 * c["magnitude"]["test_error"] for c in cells], "x:", label="magnitude, pruned")
        ax.plot(
            fw,
            [100 * c["magnitude"]["finetuned_test_error"] for c in cells],
            "s--",
            mfc="none",
            label="magnitude, fine-tuned",
        )
    if res["dense_test_error"] is not None:
        ax.axhline(100 * res["dense_test_error"][0], color="k", ls="--", lw=1, label="dense")
    ax.set(
        xscale="log",
        xlabel="fraction of weights kept",
        ylabel="test error (%)",
        title=f"{'-'.join(map(str, res['architecture']))} MLP, {res['data']['name']}",
    )
    ax.legend(fontsize=8)
    save_figure(fig, path)
