"""Every command runs (a smoke run: its results, Markdown and plots), and, killed after its first
saved file and run again, ends bit-identical to a straight run (the vae is killed inside a training
run and continues from the saved state); a damaged file is refused in one line and --fresh starts
over."""

from __future__ import annotations

from pathlib import Path

import pytest
from experiments.store import Store
from lab_helpers import PLOTS, SMOKE, numbers, results, smoke

COMMANDS = sorted(c for c in SMOKE if c != "bench")


class _Killed(KeyboardInterrupt):
    pass


def _kill_after(monkeypatch, saves: int) -> None:
    """Make the process die (KeyboardInterrupt) just after its ``saves``-th saved file."""
    real, count = Store._save, [0]

    def save(self, cid, suffix, value):
        real(self, cid, suffix, value)
        count[0] += 1
        if count[0] == saves:
            raise _Killed

    monkeypatch.setattr(Store, "_save", save)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_killed_run_resumes_bit_identical(command, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    rc, _, err = smoke(command, tmp_path / "straight", capsys)
    assert rc == 0, err
    _check_smoke(command, tmp_path / "straight", err)
    with monkeypatch.context() as m:
        _kill_after(m, 2 if command == "l0" else 1)  # l0's first cell saves the dense weights, then its row
        rc, _, err = smoke(command, tmp_path / "killed", capsys, "--no-plots")
    assert rc == 130 and "interrupted" in err
    rc, _, err = smoke(command, tmp_path / "killed", capsys, "--no-plots")
    assert rc == 0, err
    straight, resumed = results(tmp_path / "straight"), results(tmp_path / "killed")
    assert numbers(resumed) == numbers(straight)
    if command == "vae":  # killed inside the first run, after its first saved state (step 2 of 4)
        assert resumed["runs"][0]["resumed_from_step"] == 2 and resumed["cells_resumed"] == 0
    else:
        assert resumed["cells_resumed"] == 1 and resumed["cells_computed"] == straight["cells_computed"] - 1


def _check_smoke(command: str, out: Path, err: str) -> None:
    assert "Traceback" not in err and f"{command}: " in err
    for name in ["results.json", "results.md"] + PLOTS[command]:
        assert (out / name).stat().st_size > 0, name
    res = results(out)
    assert [Path(p).name for p in res["plots"]] == PLOTS[command] and list((out / "cells").glob("*.json"))
    assert res["command"].startswith(f"python -m experiments {command}") and res["cells_computed"] >= 1


def test_bench_resume_reuses_finished_shapes_only_when_asked(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "b"
    rc, _, err = smoke("bench", out, capsys)
    assert rc == 0, err
    _check_smoke("bench", out, err)
    first = results(out)["shapes"]
    assert smoke("bench", out, capsys, "--no-plots", "--no-vae", "--resume")[0] == 0
    assert results(out)["shapes"] == first and results(out)["cells_resumed"] == 1
    assert smoke("bench", out, capsys, "--no-plots", "--no-vae")[0] == 0  # timings are of this moment
    assert results(out)["cells_resumed"] == 0


def test_a_damaged_cell_is_refused_and_fresh_starts_over(tmp_path, capsys):
    out = tmp_path / "sort"
    assert smoke("sort", out, capsys, "--no-plots")[0] == 0
    cell = sorted((out / "cells").glob("*.json"))[-1]
    data = bytearray(cell.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of the payload (the frame's length and digest untouched)
    cell.write_bytes(bytes(data))
    rc, _, err = smoke("sort", out, capsys, "--no-plots")
    assert rc == 2 and f"{cell} is damaged (SHA-256 checksum mismatch); delete it or pass --fresh" in err
    assert smoke("sort", out, capsys, "--no-plots", "--fresh")[0] == 0
    assert results(out)["cells_resumed"] == 0


def test_a_changed_setting_recomputes_and_a_wider_grid_reuses(tmp_path, capsys):
    out = tmp_path / "sort"
    assert smoke("sort", out, capsys, "--no-plots")[0] == 0
    assert smoke("sort", out, capsys, "--no-plots", "--seeds", "3")[0] == 0  # one more seed: two cells reused
    assert (results(out)["cells_resumed"], results(out)["cells_computed"]) == (8, 4)
    assert smoke("sort", out, capsys, "--no-plots", "--lr", "0.05")[0] == 0  # another setting: all again
    assert results(out)["cells_resumed"] == 0
