"""Command-line tests of ``gumbelkit vae``: smoke runs, bad input, resume through the CLI."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gumbelkit import cli
from gumbelkit.experiments import vae

TIMING = ("seconds", "steps_per_second", "eval_seconds", "resumed_from_step")
ALL6 = "st,st_gumbel,gumbel_softmax,gumbel_rao,reinmax,reinforce"
FAST = ["--hidden", "16,8", "--eval-samples", "4", "--threads", "1", "--no-progress"]


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    """A tiny MNIST-layout folder: 60 training and 20 test 6x6 images, gzipped."""
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for name, n in (("train-images-idx3-ubyte.gz", 60), ("t10k-images-idx3-ubyte.gz", 20)):
        (folder / name).write_bytes(gzip.compress(_idx(rng.randint(0, 256, size=(n, 6, 6)).astype(np.uint8))))
    return folder


def run(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def check_results(out: Path, methods: list, steps: int):
    data = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in data["runs"]] == methods
    for r in data["runs"]:
        for key in ("test_neg_elbo", "initial_test_neg_elbo", "test_iw_bound", "val_neg_elbo", "seconds"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (r["method"], key)
        assert r["steps"] == steps and r["train_curve"][-1][0] == steps
    md = (out / "results.md").read_text()
    for m in methods:
        assert f"| {m} |" in md
    for png in ("train_curves.png", "tau_schedule.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_vae_smoke_on_synthetic_idx_all_methods(idx_folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, stderr = run(
        [
            "vae",
            "--data",
            f"idx:{idx_folder}",
            "--latent",
            "4x3",
            "--steps",
            "4",
            "--batch-size",
            "10",
            "--methods",
            ALL6,
            "--out",
            str(out),
            *FAST,
        ],
        capsys,
    )
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    data = check_results(out, ALL6.split(","), 4)
    assert data["data"]["input_dim"] == 36 and data["data"]["n_test"] == 20
    # 3^4 = 81 codes: the exact test -ELBO and NLL are reported, NLL <= -ELBO.
    for r in data["runs"]:
        assert r["test_exact_nll"] <= r["test_exact_neg_elbo"] + 1e-9
    for m in ALL6.split(","):
        assert f"| {m} |" in stdout  # the table is printed


def test_vae_smoke_on_digits_all_methods(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn (digits) is not installed")
    out = tmp_path / "out"
    rc, stdout, stderr = run(
        [
            "vae",
            "--data",
            "digits",
            "--latent",
            "5x3",
            "--steps",
            "3",
            "--batch-size",
            "50",
            "--methods",
            ALL6,
            "--seeds",
            "2",
            "--out",
            str(out),
            *FAST,
        ],
        capsys,
    )
    assert rc == 0, stderr
    data = check_results(out, [m for m in ALL6.split(",") for _ in range(2)], 3)
    assert data["data"]["input_dim"] == 64
    assert " ± " in stdout  # two seeds: mean ± std


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def _bad_folder(tmp_path: Path, train: bytes) -> str:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    _write(folder / "train-images-idx3-ubyte", train)
    return f"idx:{folder}"


BAD = {
    "unknown method": lambda t: (["--methods", "st,gumbel_magic"], "unknown --methods 'gumbel_magic'"),
    "malformed latent": lambda t: (["--latent", "30by10"], "expected --latent NxK"),
    "latent K=1": lambda t: (["--latent", "30x1"], "K >= 2"),
    "bad steps": lambda t: (["--steps", "-5"], "--steps >= 1"),
    "bad schedule": lambda t: (["--tau-schedule", "exp:rate=fast"], "--tau-schedule"),
    "unknown data": lambda t: (["--data", "cifar"], "expected --data"),
    "missing folder": lambda t: (["--data", f"idx:{t / 'nowhere'}"], "does not exist"),
    "empty folder": lambda t: (["--data", f"idx:{(t / 'e').mkdir() or t / 'e'}"], "no train-images-idx3-ubyte"),
    "wrong magic": lambda t: (["--data", _bad_folder(t, b"\x01\x02\x08\x03" + bytes(40))], "not an IDX file"),
    "truncated": lambda t: (
        ["--data", _bad_folder(t, bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 6, 6) + bytes(300))],
        "truncated",
    ),
    "absurd size": lambda t: (
        ["--data", _bad_folder(t, bytes([0, 0, 8, 3]) + struct.pack(">3I", 4000000000, 28, 28))],
        "absurd size",
    ),
    "batch too big": lambda t: (["--batch-size", "100000"], "--batch-size <="),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_vae_bad_input_is_one_line_no_traceback_no_results(case, idx_folder, tmp_path, capsys):
    extra, needle = BAD[case](tmp_path)
    out = tmp_path / "out"
    argv = [
        "vae",
        "--data",
        f"idx:{idx_folder}",
        "--steps",
        "2",
        "--batch-size",
        "10",
        "--out",
        str(out),
        *FAST,
    ] + extra
    rc, stdout, stderr = run(argv, capsys)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gumbelkit vae: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists()  # the input is checked before anything is written


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_vae_unwritable_out(kind, idx_folder, tmp_path, capsys):
    blocker = _write(tmp_path / "blocker", b"x")
    out = blocker if kind == "file" else blocker / "out"
    argv = ["vae", "--data", f"idx:{idx_folder}", "--steps", "2", "--batch-size", "10", "--out", str(out), *FAST]
    rc, _stdout, stderr = run(argv, capsys)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "Traceback" not in stderr
    assert blocker.read_bytes() == b"x"


def test_vae_bad_input_in_a_real_process(tmp_path):
    """The installed entry point path (python -m gumbelkit) prints one line and no traceback."""
    bad = _bad_folder(tmp_path, bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 6, 6) + bytes(5))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "gumbelkit", "vae", "--data", bad, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_vae_resume_through_the_cli_equals_a_straight_run(idx_folder, tmp_path, capsys, monkeypatch):
    common = [
        "vae",
        "--data",
        f"idx:{idx_folder}",
        "--latent",
        "3x3",
        "--steps",
        "9",
        "--batch-size",
        "10",
        "--methods",
        "st_gumbel,reinforce",
        "--checkpoint-every",
        "2",
        "--log-every",
        "3",
        *FAST,
    ]
    rc, _, err = run(common + ["--out", str(tmp_path / "a")], capsys)
    assert rc == 0, err

    real_step, calls = vae.train_step, []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 9 + 6:  # Ctrl-C during step 6 of the second method
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(vae, "train_step", interrupted_step)
    rc, _, err = run(common + ["--out", str(tmp_path / "b")], capsys)
    assert rc == 130 and "interrupted" in err
    assert not (tmp_path / "b" / "results.json").exists()  # only whole results are written
    monkeypatch.setattr(vae, "train_step", real_step)
    rc, _, err = run(common + ["--out", str(tmp_path / "b"), "--resume"], capsys)
    assert rc == 0, err
    assert "st_gumbel-seed0: already complete" in err and "reinforce-seed0: resuming from step 4" in err
    a = json.loads((tmp_path / "a" / "results.json").read_text())["runs"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["runs"]
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}
    assert [strip(r) for r in a] == [strip(r) for r in b]


def test_every_experiment_exposes_the_entry_points_of_its_config():
    import argparse

    from gumbelkit import cli
    from gumbelkit.experiments import _harness as H

    for name, (modname, _help) in cli.COMMANDS.items():
        mod = __import__(modname, fromlist=["x"])
        resolve = getattr(mod, "resolve_config", None) or mod.validate_config
        cfg = resolve({})
        assert H.defaults(type(cfg)) == mod.DEFAULTS and cfg == resolve(cfg)
        parser = argparse.ArgumentParser()
        mod.add_arguments(parser)
        assert mod.config_from_args(parser.parse_args([])) == cfg, name
        assert name in mod.add_arguments.__doc__ and mod.config_from_args.__name__ == "config_from_args"


def test_common_requirements_name_the_flag_that_needs_each_package():
    from gumbelkit.experiments import _harness as H

    assert H.common_requirements(False) == [] and H.common_requirements(None, "fashion-mnist") == []
    reqs = H.common_requirements(True, "digits")
    assert [(r.reason, r.module) for r in reqs] == [("--data digits", "sklearn"), ("--progress", "tqdm")]


def test_write_results_writes_the_experiment_files_and_names_the_command_in_a_skip_note(tmp_path, capsys):
    from gumbelkit.experiments import _harness as H

    drawn_paths = []
    results = {"value": 1}
    drawn = H.write_results(
        tmp_path,
        results,
        command="demo",
        plan=(True, None),
        markdown=lambda r: f"value {r['value']}\n",
        plots=[("a.png", lambda p: drawn_paths.append(p) or p.write_text("x"))],
    )
    assert drawn == ["a.png"] and drawn_paths == [tmp_path / "a.png"]
    assert json.loads((tmp_path / "results.json").read_text())["plots"] == ["a.png"]
    assert (tmp_path / "results.md").read_text() == "value 1\n"
    assert H.results_written(tmp_path, drawn) == (
        f"wrote {tmp_path / 'results.json'}, {tmp_path / 'results.md'} and 1 plot(s)"
    )
    skipped = {"value": 2}
    assert H.write_results(tmp_path, skipped, command="demo", plan=(False, "no matplotlib"), markdown=str) == []
    assert json.loads((tmp_path / "results.json").read_text())["plots_skipped"] == "demo: no matplotlib"
    assert "demo: no matplotlib" in capsys.readouterr().err
