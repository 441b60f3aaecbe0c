"""Every command checks its options up front and answers bad input with one line on stderr and exit
status 2 -- never a traceback: empty paths, files where folders belong (naming the right option),
out-of-range or non-finite numbers, unknown names, unallocatable shapes -- and a ValueError,
TypeError, OSError or failed allocation during a run is reported the same way, with its type."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gumbelkit import cli
from gumbelkit.experiments import bench, gradients, vae
from gumbelkit.experiments._common import UserError, atomic_write_bytes


def run(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def refusal(argv, capsys, *needles, during_run=False):
    """Exit status 2 and exactly one error line; ``during_run``: after the run's own progress lines."""
    rc, stdout, err = run(argv, capsys)
    assert rc == 2, err
    assert "Traceback" not in err and "Traceback" not in stdout
    lines = err.strip().splitlines()
    if during_run:  # the job's log lines ("vae: ...") may precede the error
        assert all(line.startswith(f"{argv[0]}: ") for line in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gumbelkit {argv[0]}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def blocker(tmp_path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("x")
    return path


# --------------------------------------------------------------------------- path options


PATH_OPTIONS = [("vae", "--out"), ("gradients", "--out"), ("gradients", "--fig-dir"), ("bench", "--out")]


@pytest.mark.parametrize("command,flag", PATH_OPTIONS)
@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_empty_or_blank_path_options_are_refused(command, flag, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refusal([command, flag, value], capsys, f"expected a non-empty path for {flag}")
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


@pytest.mark.parametrize("command,flag", PATH_OPTIONS)
def test_a_path_option_with_a_nul_character_is_refused(command, flag, capsys):
    refusal([command, flag, "a\0b"], capsys, f"expected {flag} without NUL characters")


GRAD_FAST = [
    "--problems",
    "quadratic",
    "--methods",
    "softmax",
    "--taus",
    "0.5",
    "--samples",
    "4",
    "--chunk",
    "4",
    "--no-demo",
]


def test_fig_dir_that_is_a_file_is_blamed_on_fig_dir(blocker, tmp_path, capsys):
    line = refusal(
        ["gradients", *GRAD_FAST, "--out", str(tmp_path / "o"), "--fig-dir", str(blocker)],
        capsys,
        f"--fig-dir {blocker} exists and is not a folder",
    )
    assert "--out" not in line
    line = refusal(
        ["gradients", *GRAD_FAST, "--out", str(tmp_path / "o"), "--fig-dir", str(blocker / "sub")],
        capsys,
        "cannot write to --fig-dir",
    )
    assert "--out" not in line


@pytest.mark.parametrize("command", ["vae", "gradients", "bench"])
def test_out_that_is_a_file_is_blamed_on_out(command, blocker, capsys):
    extra = GRAD_FAST if command == "gradients" else []
    if command == "vae":
        pytest.importorskip("sklearn")
        extra = ["--data", "digits", "--latent", "2x2", "--steps", "1", "--hidden", "4"]
    refusal([command, *extra, "--out", str(blocker)], capsys, f"--out {blocker} exists and is not a folder")
    refusal([command, *extra, "--out", str(blocker / "sub")], capsys, "cannot write to --out")
    assert blocker.read_text() == "x"


def test_atomic_writes_turn_os_errors_into_one_line_naming_the_file(blocker):
    with pytest.raises(UserError, match=f"cannot write {blocker / 'x.json'}"):
        atomic_write_bytes(blocker / "x.json", b"{}")
    assert blocker.read_text() == "x"


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_vae_with_a_file_in_the_way_of_its_checkpoints_fails_in_one_line(tmp_path, capsys):
    folder = tmp_path / "idx"
    folder.mkdir()
    images = np.random.RandomState(0).randint(0, 256, size=(40, 4, 4)).astype(np.uint8)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoints").write_text("in the way")
    refusal(
        [
            "vae",
            "--data",
            f"idx:{folder}",
            "--latent",
            "2x2",
            "--steps",
            "2",
            "--batch-size",
            "5",
            "--hidden",
            "4",
            "--methods",
            "st",
            "--eval-samples",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ],
        capsys,
        f"cannot write {out / 'checkpoints' / 'st-seed0.pt'}",
        during_run=True,
    )
    assert not (out / "results.json").exists()


# --------------------------------------------------------------------------- numbers and names


VAE_BAD = [
    (["--lr", "nan"], "expected a finite --lr"),
    (["--lr", "inf"], "expected a finite --lr"),
    (["--lr", "0"], "expected --lr > 0"),
    (["--lr=-1e-3"], "expected --lr > 0"),
    (["--threshold", "nan"], "expected a finite --threshold"),
    (["--steps", "0"], "--steps >= 1"),
    (["--steps", "1.5"], "--steps to be an integer"),
    (["--seeds", "-1"], "--seeds >= 1"),
    (["--seeds", "100000000000"], "--seeds <= 10000"),
    (["--batch-size", "0"], "--batch-size >= 1"),
    (["--eval-samples", "-1"], "--eval-samples >= 0"),
    (["--eval-samples", "1000000000"], "--eval-samples <= 100000"),
    (["--reinforce-samples", "1"], "--reinforce-samples >= 2"),
    (["--gumbel-rao-k", "0"], "--gumbel-rao-k >= 1"),
    (["--threads", "100000"], "--threads <= 1024"),
    (["--dist-timeout", "1e30"], "--dist-timeout to be an integer"),
    (["--dist-timeout", "100000000000"], "--dist-timeout <= 604800"),
    (["--hidden", "100000000"], "at most 65536 units"),
    (["--tau-schedule", "1e-8"], "expected --tau-schedule to stay finite and >= 0.001"),
    (["--tau-schedule", "exp:tau0=1,rate=1,floor=1e-5,interval=1", "--steps", "100"], "from 1 to 1e-05"),
    (["--tau-schedule", "nan"], "--tau-schedule"),
    (["--methods", "st,bogus"], "unknown --methods 'bogus'"),
    (["--methods", ""], "--methods"),
    (["--device", "tpu"], "expected --device"),
    (["--data", "idx:   "], "empty path"),
    (["--binarize", "sometimes"], "expected --binarize"),
]


@pytest.mark.parametrize("args,needle", VAE_BAD, ids=[" ".join(a) for a, _ in VAE_BAD])
def test_vae_rejects_bad_numbers_and_names_up_front(args, needle, tmp_path, capsys):
    refusal(["vae", *args, "--out", str(tmp_path / "o")], capsys, needle)
    assert not (tmp_path / "o").exists()


GRAD_BAD = [
    (["--taus", "1e-8"], "expected tau >= 0.001"),
    (["--taus", "0.5,1e-4"], "expected tau >= 0.001"),
    (["--taus", "nan"], "expected a finite tau"),
    (["--taus", "inf"], "expected a finite tau"),
    (["--taus", "0"], "expected tau > 0"),
    (["--taus", ""], "comma-separated list for --taus"),
    (["--demo-tau", "1e-8"], "expected --demo-tau >= 0.001"),
    (["--target-stderr", "nan"], "expected a finite --target-stderr"),
    (["--seed", "x"], "expected --seed to be an integer >= 0, got 'x'"),
    (["--chunk", "abc"], "expected --chunk to be an integer from 1 to 65536, got 'abc'"),
    (["--cell-seconds", "0"], "expected --cell-seconds > 0"),
    (["--chunk", "0"], "--chunk >= 1"),
    (["--chunk", "1000000000"], "--chunk <= 65536"),
    (["--samples", "1000000000000"], "--samples <= 1000000000"),
    (["--samples", "-3"], "--samples >= 2"),
    (["--min-samples", "1"], "--min-samples >= 2"),
    (["--min-samples", "100", "--max-samples", "10"], "--max-samples >= 100"),
    (["--threads", "0"], "--threads >= 1"),
    (["--threads", "100000"], "--threads <= 1024"),
    (["--seed", "-1"], "--seed >= 0"),
    (["--demo-batch", "1"], "--demo-batch >= 2"),
    (["--demo-batch", "1000000"], "--demo-batch <= 8192"),
    (["--demo-steps", "0"], "--demo-steps >= 1"),
    (["--demo-seeds", "0"], "--demo-seeds >= 1"),
    (["--methods", "gumbel_rao_k0"], "1 <= k <= 1000"),
    (["--methods", "gumbel_rao_k100000"], "1 <= k <= 1000"),
    (["--methods", "reinforce_n100000"], "n <= 1000"),
    (["--methods", "magic"], "unknown --methods 'magic'"),
    (["--methods", "gumbel_rao:k=0"], "expected k to be an integer with 1 <= k <= 1000 for method 'gumbel_rao', got 0"),
    (["--methods", "gumbel_rao:k"], "expected --methods items like NAME or NAME:OPTION=VALUE"),
    (["--methods", "k=3"], "expected --methods to start with a method name"),
    (["--methods", "gumbel_rao:k=3,k=4"], "option 'k' is given twice"),
    (["--problems", "nope"], "unknown problem 'nope'"),
    (["--demo-methods", "nope"], "unknown --demo-methods 'nope'"),
]


@pytest.mark.parametrize("args,needle", GRAD_BAD, ids=[" ".join(a) for a, _ in GRAD_BAD])
def test_gradients_rejects_bad_numbers_and_names_up_front(args, needle, tmp_path, capsys):
    refusal(["gradients", *args, "--out", str(tmp_path / "o")], capsys, needle)
    assert not (tmp_path / "o").exists()


BENCH_BAD = [
    (["--shapes", "99999999999x99999999"], "at most 2147483647 elements"),
    (["--shapes", "10x0"], "at least two positive sizes"),
    (["--shapes", "10x-5"], "at least two positive sizes"),
    (["--shapes", "1e3x10"], "expected --shapes like"),
    (["--shapes", "1x2x3x4x5x6x7x8x9"], "at most 8 sizes"),
    (["--shapes", "4x5,,"], "comma-separated list for --shapes"),
    (["--tau", "nan"], "expected a finite --tau"),
    (["--tau", "0"], "expected --tau > 0"),
    (["--min-time", "1000"], "--min-time <= 60"),
    (["--repeats", "-1"], "--repeats >= 0"),
    (["--vae-steps", "0"], "--vae-steps >= 1"),
    (["--threads", "100000"], "--threads <= 1024"),
    (["--seed", str(2**70)], "--seed <="),
    (["--impls", "builtin,turbo"], "unknown --impls 'turbo'"),
    (["--modes", "medium"], "unknown --modes 'medium'"),
    (["--device", "cuda:99"], "--device"),
]


@pytest.mark.parametrize("args,needle", BENCH_BAD, ids=[" ".join(a) for a, _ in BENCH_BAD])
def test_bench_rejects_bad_numbers_names_and_shapes_up_front(args, needle, tmp_path, capsys):
    refusal(["bench", *args, "--out", str(tmp_path / "o")], capsys, needle)
    assert not (tmp_path / "o").exists()


def test_bench_refuses_shapes_that_do_not_fit_in_memory(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "_available_memory", lambda device: 2**30)  # 1 GiB free
    refusal(
        ["bench", "--shapes", "64x50,10000x10000", "--out", str(tmp_path / "o")],
        capsys,
        "--shapes 10000x10000 needs about 3.7 GiB",
        "1.0 GiB available",
    )
    assert not (tmp_path / "o").exists()


def test_bench_huge_shapes_in_a_real_process_give_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gumbelkit", "bench", "--shapes", "99999999999x99999999", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "elements" in proc.stderr


# --------------------------------------------------------------------------- errors during a run


def _raise(exc):
    def boom(*args, **kwargs):
        raise exc

    return boom


@pytest.mark.parametrize(
    "exc,needle",
    [
        (ValueError("expected tau > 0, got 1e-320"), "ValueError: expected tau > 0, got 1e-320"),
        (
            TypeError("expected a floating dtype,\n got torch.int64"),
            "TypeError: expected a floating dtype, got torch.int64",
        ),
        (OSError(28, "No space left on device", "/x/results.json"), "OSError /x/results.json: No space left on device"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"), "out of memory"),
        (MemoryError(), "out of memory"),
    ],
    ids=["ValueError", "TypeError with a newline", "OSError", "allocation failure", "MemoryError"],
)
def test_library_errors_during_a_run_are_one_line_with_their_type(exc, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gradients, "estimate", _raise(exc))
    refusal(["gradients", *GRAD_FAST, "--no-plots", "--out", str(tmp_path / "o")], capsys, needle)


def test_a_genuine_bug_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(gradients, "estimate", _raise(RuntimeError("shape mismatch in a matmul")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["gradients", *GRAD_FAST, "--no-plots", "--out", str(tmp_path / "o")])
    monkeypatch.setattr(gradients, "estimate", _raise(ZeroDivisionError("division by zero")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["gradients", *GRAD_FAST, "--no-plots", "--out", str(tmp_path / "o")])


def test_vae_library_value_error_during_training_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(vae, "run_one", _raise(TypeError("expected dim to be an int, got str")))
    refusal(
        [
            "vae",
            "--data",
            "digits",
            "--latent",
            "2x2",
            "--steps",
            "1",
            "--hidden",
            "4",
            "--methods",
            "st",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        "TypeError: expected dim to be an int, got str",
        during_run=True,
    )


def test_bench_library_value_error_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "_time_shape", _raise(ValueError("expected tau > 0")))
    refusal(
        ["bench", "--shapes", "4x3", "--no-vae", "--out", str(tmp_path / "o")], capsys, "ValueError: expected tau > 0"
    )


def test_argparse_errors_are_one_line(capsys):
    for argv, needle in (
        (["vae", "--bogus"], "unrecognized arguments: --bogus"),
        (["gradients", "--seed"], "argument --seed: expected one argument"),
        (["gradients", "--chunk"], "argument --chunk: expected one argument"),
        (["bench", "--shapes"], "argument --shapes: expected one argument"),
        (["nope"], "invalid choice"),
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "error:" in err[0], err


def test_help_documents_the_accepted_ranges(capsys):
    for command, needles in (
        ("vae", ["tau must stay >= 0.001", "0..1024"]),
        ("gradients", ["each finite and >= 0.001", "1..65536"]),
        ("bench", ["any finite tau > 0", "2^31-1 elements"]),
    ):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for needle in needles:
            assert needle in text, (command, needle)
