"""Every command of ``python -m experiments``: its flags, and bad input answered in one line on stderr
with exit status 2 -- never a traceback -- before anything is written (the smoke run of every command
is the straight run of tests/experiments/test_lab_resume.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from experiments.__main__ import MODULES, build_parser
from lab_helpers import PLOTS, SMOKE, results, run, smoke

ROOT = Path(__file__).resolve().parents[2]


def test_every_command_has_a_smoke_test():
    assert set(MODULES) == set(SMOKE) == set(PLOTS)


def test_every_command_has_the_shared_flags_and_lists_the_registry(capsys):
    for command in SMOKE:
        with pytest.raises(SystemExit):
            run([command, "--help"], capsys)
        text = " ".join(capsys.readouterr().out.split())
        for flag in ("--threads", "--progress", "--plots", "--no-plots", "--resume", "--fresh", "--out", "--methods"):
            assert flag in text, (command, flag)
    for command in ("vae", "gradients", "dvae", "bench", "binary"):
        with pytest.raises(SystemExit):
            run([command, "--help"], capsys)
        assert "gumbel_rao[:k=int >= 1, default 10]" in " ".join(capsys.readouterr().out.split()), command


def refusal(argv, capsys, *needles):
    """Exit status 2 and exactly one error line naming the command (progress lines may precede it)."""
    rc, out, err = run(argv, capsys)
    assert rc == 2, err
    assert "Traceback" not in err + out
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"experiments {argv[0]}: error: ") or line.startswith("python -m experiments"), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


BAD = [
    (["vae", "--lr", "nan"], "expected a finite --lr"),
    (["vae", "--steps", "1.5"], "--steps to be an integer"),
    (["vae", "--seeds", "100000000000"], "--seeds <= 10000"),
    (["vae", "--hidden", "100000000"], "--hidden size <= 65536"),
    (["vae", "--latent", "3x1"], "expected --latent NxK with N >= 1, K >= 2"),
    (["vae", "--tau-schedule", "1e-8"], "expected --tau-schedule to stay finite and >= 0.001"),
    (["vae", "--tau-schedule", "exp:tau0=1,rate=1,floor=1e-5,interval=1", "--steps", "100"], "from 1 to 1e-05"),
    (["vae", "--tau-schedule", "exp:tau0=1,rate=3e-5,tau0=2"], "expected each key once in --tau-schedule"),  # 23/15
    (["vae", "--methods", "st,bogus"], "unknown --methods 'bogus'"),
    (["vae", "--methods", "gumbel_rao:k=0"], "expected k to be an integer"),
    (["vae", "--device", "tpu"], "expected --device"),
    (["vae", "--data", "idx:   "], "empty path"),
    (["vae", "--data", "mnist"], "expected --data in mnist5k, digits, fashion-mnist or idx:PATH"),
    (["gradients", "--taus", "1e-8"], "expected tau >= 0.001"),
    (["gradients", "--samples", "1"], "'auto' or an integer >= 2"),
    (["gradients", "--max-samples", "10", "--min-samples", "100"], "expected --max-samples >= 100"),
    (["gradients", "--demo-methods", "reinforce"], "unknown --demo-methods 'reinforce'"),
    (["binary", "--binary-methods", "st@nan"], "expected a finite temperature in --binary-methods 'st@nan'"),  # 23/18
    (["binary", "--binary-methods", "st@1@2"], "expected one @TAU at the end of an item, got a second '@'"),  # 23/18
    (["binary", "--binary-methods", "arm@0.5"], "method 'arm' uses no temperature; drop @0.5"),
    (["binary", "--binary-methods", "none", "--methods", "none"], "expected at least one method"),
    (["binary", "--targets", "0.5"], "expected --targets != 0.5"),
    (["bench", "--shapes", "4x"], "expected --shapes like 1024x1000"),
    (["bench", "--shapes", "100000x100000"], "at most 2^31-1 elements"),
    (["bench", "--repeats", "2"], "0 (automatic) or >= 3"),
    (["bench", "--layout-shapes", "4x8"], "--layout-shapes of 4 positive sizes"),
    (["sort", "--sizes", "1"], "each --sizes entry >= 2"),
    (["sort", "--batch-size", "1000", "--samples", "100", "--sizes", "200"], "expected --batch-size x --samples x N^2"),
    (["dvae", "--eval-every", "10", "--steps", "5"], "expected --eval-every <= --steps (5)"),
    (["l0", "--methods", "magnitude"], "expected --methods to include 'l0'"),
    (["subsets", "--methods", "simple,bogus"], "unknown --methods 'bogus'"),
    (["subsets", "--threads", "100000"], "--threads <= 1024"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_refused_up_front_in_one_line(argv, needle, tmp_path, capsys):
    refusal([*argv, "--out", str(tmp_path / "o")], capsys, needle)
    assert not (tmp_path / "o").exists()


def test_a_method_and_its_default_options_run_once(capsys, tmp_path):  # 23/16
    out = tmp_path / "g"
    rc, _, err = run(["gradients", "--problems", "quadratic", "--methods", "gumbel_rao,gumbel_rao:k=10,st,st",
                      "--taus", "0.5", "--samples", "8", "--chunk", "8", "--no-demo", "--no-plots", "--out", out], capsys)  # fmt: skip
    assert rc == 0, err
    assert [r["method"] for r in results(out)["rows"]] == ["gumbel_rao", "st"]


@pytest.mark.parametrize("flag", ["--out", "--fig-dir"])
def test_a_file_where_a_folder_belongs_is_blamed_on_its_flag(flag, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refusal(["gradients", flag, blocker, *(["--out", tmp_path / "o"] if flag == "--fig-dir" else [])], capsys,
            f"{flag} {blocker} exists and is not a folder")  # fmt: skip


def test_missing_packages_are_refused_at_start(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    refusal(["vae", "--data", "digits", "--out", tmp_path / "o"], capsys,
            "--data digits needs scikit-learn, which is not installed (pip install scikit-learn)")  # fmt: skip
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    refusal(["subsets", "--plots", "--out", tmp_path / "o"], capsys, "--plots needs matplotlib")
    rc, _, err = smoke("subsets", tmp_path / "s", capsys)  # without --plots: results written, plots skipped
    assert rc == 0 and "plots skipped" in err and results(tmp_path / "s")["plots"] == []
    assert not (tmp_path / "o").exists()


def test_library_errors_during_a_run_are_one_line_with_their_type(tmp_path, capsys, monkeypatch):
    import gumbelkit as gk

    def broken(*args, **kwargs):
        raise gk.GumbelkitValueError("sample: expected something else")

    monkeypatch.setattr(gk.binary, "surrogate", broken)
    refusal(["binary", *SMOKE["binary"], "--out", tmp_path / "o"], capsys, "GumbelkitValueError: sample: expected")

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a genuine bug")

    monkeypatch.setattr(gk.binary, "surrogate", bug)
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run(["binary", *SMOKE["binary"], "--out", tmp_path / "p"], capsys)


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        run(["vae", "--no-such-flag"], capsys)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and "unrecognized arguments" in err
    rc, _, err = run([], capsys)
    assert rc == 2 and "vae" in err
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(MODULES)  # type: ignore[union-attr]


def test_bad_input_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments", "bench", "--shapes", "100000x100000", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
