"""`gumbelkit vae` under torchrun: 2 gloo processes on CPU (DDP, resume, sweeps, a failing rank)."""

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("sklearn", reason="the DDP runs use scikit-learn's digits data")

# Runs the real CLI inside each torchrun worker; GK_TEST_CRASH_AT=n makes the n-th training step
# raise (on GK_TEST_CRASH_RANK only, if set), to simulate a crash or a failing rank.
LAUNCHER = r"""
import os, sys
from gumbelkit.experiments import vae
crash_at = int(os.environ.get("GK_TEST_CRASH_AT", "0"))
crash_rank = os.environ.get("GK_TEST_CRASH_RANK")
if crash_at and (crash_rank is None or crash_rank == os.environ.get("RANK")):
    real, calls = vae.train_step, []
    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == crash_at:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)
    vae.train_step = step
from gumbelkit.cli import main
sys.exit(main(sys.argv[1:]))
"""

COMMON = [
    "vae",
    "--data",
    "digits",
    "--latent",
    "4x3",
    "--hidden",
    "16",
    "--steps",
    "8",
    "--batch-size",
    "20",
    "--eval-samples",
    "4",
    "--log-every",
    "2",
    "--val-every",
    "4",
    "--checkpoint-every",
    "3",
    "--no-progress",
]
TIMING = ("seconds", "steps_per_second", "eval_seconds", "resumed_from_step")


def _torchrun(tmp_path, args, env_extra=None, nproc=2, timeout=240):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(script),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def _strip(run):
    return {k: v for k, v in run.items() if k not in TIMING and not k.endswith("_per_rank") and k != "fingerprint"}


DDP_ARGS = COMMON + ["--methods", "st_gumbel,reinforce"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted 2-rank DDP run, shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(tmp_path, DDP_ARGS + ["--out", "out"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "out", proc


def test_ddp_replicas_identical_noise_distinct_results_written_once(straight):
    out, proc = straight
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["distributed"] == {"mode": "ddp", "backend": "gloo"}
    for run in results["runs"]:
        assert run["world_size"] == 2
        a, b = run["param_digest_per_rank"]
        assert a == b  # parameters bit-identical on both ranks after training
        n0, n1 = run["noise_digest_per_rank"]
        assert n0 != n1  # each rank draws its own Gumbel noise
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted(
        [
            "results.json",
            "results.md",
            "tau_schedule.png",
            "train_curves.png",
            "runs/st_gumbel-seed0.json",
            "runs/reinforce-seed0.json",
            "checkpoints/st_gumbel-seed0.pt",
            "checkpoints/reinforce-seed0.pt",
        ]
    )  # one copy of everything, no temporary files left behind
    assert proc.stdout.count("| st_gumbel |") == 1  # the table is printed once, by rank 0


def test_ddp_resume_equals_uninterrupted_run(tmp_path, straight):
    args = DDP_ARGS
    crashed = _torchrun(tmp_path, args + ["--out", "b"], {"GK_TEST_CRASH_AT": "15"})
    assert crashed.returncode != 0
    assert not (tmp_path / "b" / "results.json").exists()
    resumed = _torchrun(tmp_path, args + ["--out", "b", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # call 15 = step 7 of the second method (8 steps each): st_gumbel is complete, reinforce resumes at 6
    assert (
        "st_gumbel-seed0: already complete" in resumed.stderr
        and "reinforce-seed0: resuming from step 6" in resumed.stderr
    )
    a = json.loads((straight[0] / "results.json").read_text())["runs"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["runs"]
    assert [_strip(r) for r in a] == [_strip(r) for r in b]
    assert [r["param_digest_per_rank"] for r in a] == [r["param_digest_per_rank"] for r in b]


def test_sweep_parallel_equals_serial_run(tmp_path):
    args = COMMON + ["--methods", "st,reinmax", "--seeds", "2"]
    proc = _torchrun(tmp_path, args + ["--out", "sweep", "--sweep-parallel"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    serial = subprocess.run(
        [sys.executable, "-m", "gumbelkit", *args, "--out", "serial"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "WORLD_SIZE"},
        timeout=240,
    )
    assert serial.returncode == 0, serial.stderr[-3000:]
    sweep = json.loads((tmp_path / "sweep" / "results.json").read_text())
    ser = json.loads((tmp_path / "serial" / "results.json").read_text())
    assert sweep["distributed"]["mode"] == "sweep" and ser["world_size"] == 1
    assert [(r["method"], r["seed"]) for r in sweep["runs"]] == [("st", 0), ("st", 1), ("reinmax", 0), ("reinmax", 1)]
    assert [_strip(r) for r in sweep["runs"]] == [_strip(r) for r in ser["runs"]]
    assert "vae[rank 1]" in proc.stderr  # rank 1 trained its share


def test_a_failing_rank_fails_the_job_instead_of_hanging(tmp_path):
    t0 = time.monotonic()
    proc = _torchrun(
        tmp_path,
        COMMON + ["--methods", "st_gumbel", "--out", "out", "--dist-timeout", "60"],
        {"GK_TEST_CRASH_AT": "3", "GK_TEST_CRASH_RANK": "1"},
    )
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 120
    assert "simulated crash" in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()
