"""Shared pieces of the lab's tests (imported by them; the fixtures are in conftest.py): tiny
fixed-seed settings of every command, a command-line runner, results without their timing, and a
synthetic IDX folder."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
from experiments.__main__ import main as cli_main

import gumbelkit as gk


def _stateful(family: str) -> str:
    """The first method of ``family`` that owns learnable state (a control): the smoke runs train one."""
    return next(s.name for s in gk.estimators.specs(family) if s.has_control)


#: A tiny run of every command (the files it writes besides the plots, and its plots).
SMOKE = {
    "vae": ["--data", "digits", "--latent", "2x3", "--steps", "4", "--hidden", "8", "--batch-size", "20",
            "--eval-samples", "2", "--methods", f"{_stateful('categorical')},reinforce:n=2", "--checkpoint-every", "2", "--val-every", "2"],
    "gradients": ["--problems", "quadratic", "--methods", "st_gumbel,reinforce:n=2", "--taus", "0.5", "--samples", "8",
                  "--chunk", "8", "--demo-steps", "2", "--demo-seeds", "1", "--demo-methods", "st", "--demo-batch", "4"],
    "bench": ["--shapes", "8x5", "--impls", "builtin,eager", "--methods", "st,gumbel_rao:k=2", "--repeats", "3",
              "--min-time", "0.0001", "--vae-steps", "1", "--no-memory"],
    "subsets": ["--hist-samples", "50", "--hist-taus", "1", "--grad-taus", "0.5", "--grad-samples", "8"],
    "l0": ["--data", "digits", "--hidden", "8,6", "--epochs", "1", "--lambdas", "1,2", "--finetune-epochs", "1"],
    "sort": ["--sizes", "4", "--steps", "3", "--batch-size", "2", "--samples", "2", "--test-sequences", "9", "--seeds", "2"],
    "binary": ["--binary-methods", f"disarm:n=1,st,{_stateful('bernoulli')}", "--methods", "st_gumbel@0.5", "--toy-thetas", "0", "--toy-samples", "20",
               "--train-steps", "3", "--train-seeds", "1", "--poly-latents", "4", "--poly-batch", "2", "--poly-steps",
               "3", "--poly-seeds", "1", "--record-every", "1"],
    "dvae": ["--data", "digits", "--steps", "2", "--eval-every", "1", "--batch-size", "4", "--channels", "2", "--codes",
             "8", "--embedding-dim", "2", "--eval-images", "10", "--seeds", "1", "--methods", "st,reinmax"],
}  # fmt: skip
PLOTS = {
    "vae": ["train_curves.png", "tau_schedule.png"],
    "gradients": ["gradients_quadratic.png", "gradients_70_30_demo.png"],
    "bench": ["bench.png"],
    "subsets": ["subsets.png"],
    "l0": ["l0.png"],
    "sort": ["sort.png"],
    "binary": ["binary_toy.png", "poly.png"],
    "dvae": ["dvae.png"],
}
#: What a results file says about the run rather than its numbers.
RUN_FIELDS = {"runtime_s", "wall_s", "seconds", "train_s", "eval_s", "eval_seconds", "compute_s", "ms_per_step",
              "us_per_grad", "steps_per_second", "seconds_std", "ms_per_step_std", "steps_per_second_std", "environment",
              "plots", "plots_skipped", "cells_computed", "cells_resumed", "resumed_from_step", "finetune_wall_s",
              "train_seconds", "config", "command", "median_ms", "min_ms", "first_s", "first_step_s"}  # fmt: skip


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``python -m experiments ARGV`` in this process: (exit status, stdout, stderr)."""
    rc = cli_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def smoke(command: str, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return run([command, *SMOKE[command], "--threads", "1", "--no-progress", "--out", out, *extra], capsys)


def numbers(results: dict | list) -> dict | list:
    """A results file without the fields that describe the run (times, machine, bookkeeping)."""
    if isinstance(results, dict):
        return {k: numbers(v) for k, v in results.items() if k not in RUN_FIELDS}
    if isinstance(results, list):
        return [numbers(v) for v in results]
    return results


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(folder: Path, n_train: int = 60, n_test: int = 20, size: int = 8, labels: bool = True) -> Path:
    """An MNIST-layout folder of random ``size`` x ``size`` images (gzipped), with labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.randint(0, 256, size=(n, size, size)).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        if labels:
            (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(rng.randint(0, 3, size=n).astype(np.uint8)))
    return folder
