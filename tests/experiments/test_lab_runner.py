"""The runner every experiment uses: the config checked once, the flags generated from it, the
checked files and the store of cells, and resume after a kill ending bit-identical."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import pytest
import torch
from experiments.config import UserError

from experiments import config as C
from experiments import runner as R
from experiments import store as S


@dataclasses.dataclass(frozen=True)
class ToyConfig(C.Config):
    """A toy experiment: cells of seeded random numbers."""

    COMMAND, HELP = "toy", "a toy"
    out: str = C.option("runs/toy", "output folder", C.PathText(), role="run")
    cells: int = C.option(4, "cells", C.Int(1, 100), role="grid")
    size: int = C.option(3, "numbers per cell", C.Int(1, 1000))
    scale: float = C.option(1.0, "scale", C.Float(positive=True))
    kinds: list = C.option(["a", "b"], "kinds", C.Names(("a", "b", "c")), role="grid")

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        if values["size"] > 100 * values["cells"]:
            raise UserError("expected --size <= 100 x --cells")
        return values


def toy_main(cfg: ToyConfig, kill_after: int | None = None) -> dict:
    computed = []

    def compute(i: int, kind: str) -> dict:
        if kill_after is not None and len(computed) == kill_after:
            raise KeyboardInterrupt  # killed in the middle of the job
        computed.append(i)
        return {"i": i, "values": (cfg.scale * torch.randn(cfg.size, generator=R.generator(0, i, kind))).tolist()}

    with R.Run(cfg, cfg.cells * len(cfg.kinds)) as run:
        rows = [
            run.cell(f"{kind}|{i}", lambda i=i, k=kind: compute(i, k)) for kind in cfg.kinds for i in range(cfg.cells)
        ]
    out = {"rows": rows, **run.meta()}
    run.write(out, lambda res: R.table(res["rows"], [("i", "i"), ("first", lambda r: r["values"][0])]))
    return out


def test_the_config_is_checked_once_with_defaults_and_one_line_errors():
    cfg = ToyConfig.make(size="5", kinds="b,a,b")
    assert (cfg.size, cfg.kinds, cfg.resume, cfg.plots) == (5, ["b", "a"], True, None)
    assert ToyConfig.make(resume=False).resume is False
    for given, message in [
        ({"size": "0"}, "expected --size >= 1, got 0"),
        ({"size": "1.5"}, "expected --size to be an integer from 1 to 1000, got '1.5'"),
        ({"scale": "nan"}, "expected a finite --scale, got 'nan'"),
        ({"scale": "-1"}, "expected --scale > 0, got -1.0"),
        ({"kinds": "a,z"}, "unknown --kinds 'z'; expected some of a, b, c"),
        ({"kinds": "a,,b"}, "expected a comma-separated list for --kinds"),
        ({"out": "  "}, "expected a non-empty path for --out"),
        ({"out": "a\0b"}, "expected --out without NUL characters"),
        ({"size": 500, "cells": 1}, "expected --size <= 100 x --cells"),
        ({"sizes": 3}, "unknown toy option 'sizes'"),
    ]:
        with pytest.raises(UserError) as info:
            ToyConfig.make(**given)
        assert str(info.value).startswith(message), (given, str(info.value))


def test_the_flags_are_generated_from_the_config_and_the_command_reproduces_it():
    parser = argparse.ArgumentParser()
    ToyConfig.add_arguments(parser)
    cfg = ToyConfig.from_args(parser.parse_args(["--size", "7", "--scale", "0.5", "--fresh", "--no-plots"]))
    assert (cfg.size, cfg.scale, cfg.resume, cfg.plots) == (7, 0.5, False, False)
    line = cfg.command()
    assert line.startswith("python -m experiments toy") and "--size 7" in line and "--scale 0.5" in line
    again = ToyConfig.from_args(parser.parse_args(line.split()[4:]))
    assert again.to_dict() | {"resume": False, "plots": False} == cfg.to_dict()
    text = parser.format_help()
    assert "--no-resume" in text and "--fresh" in text and "1..1000" in text and "default: 3" in text


def test_the_key_is_the_hash_of_the_settings_alone():
    base = ToyConfig.make()
    assert base.key() == ToyConfig.make(cells=9, kinds="a", threads=2, out="elsewhere", resume=False).key()
    assert base.key() != ToyConfig.make(size=4).key() != base.key(data="another digest")


def test_checked_files_refuse_every_damage(tmp_path):
    for name, obj in (("cell.json", {"a": [1.5, float("nan")], "b": "x"}), ("state.pt", {"t": torch.arange(5)})):
        path = tmp_path / name
        S.write_checked(path, obj)
        loaded = S.read_checked(path, "the hint")
        assert loaded["b"] == "x" if name.endswith("json") else torch.equal(loaded["t"], torch.arange(5))
        data = path.read_bytes()
        for i in range(0, len(data), max(1, len(data) // 40)):  # a flipped byte anywhere
            path.write_bytes(data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :])
            with pytest.raises(UserError, match=f"{path}.*; the hint"):
                S.read_checked(path, "the hint")
        for bad, why in (
            (data[:-1], "truncated"),
            (b"", "has no checksum"),
            (json.dumps(obj if name.endswith("json") else 1).encode(), "has no checksum"),
        ):
            path.write_bytes(bad)
            with pytest.raises(UserError, match=why):
                S.read_checked(path, "the hint")
    frame = tmp_path / "other.pt"
    S.write_checked(tmp_path / "other.json", {"x": 1})
    frame.write_bytes((tmp_path / "other.json").read_bytes())  # a verified frame that is not a torch file
    with pytest.raises(UserError, match="does not load"):
        S.read_checked(frame, "hint")


def test_the_store_reuses_cells_of_this_configuration_only(tmp_path):
    store = S.Store(tmp_path, "key1", resume=True)
    assert store.cell("a|1", lambda: {"v": 1}) == {"v": 1}
    assert store.cell("a|1", lambda: {"v": 2}) == {"v": 1} and (store.computed, store.reused) == (1, 1)
    assert S.Store(tmp_path, "key2", resume=True).cell("a|1", lambda: {"v": 3}) == {"v": 3}  # another configuration
    assert S.Store(tmp_path, "key2", resume=False).cell("a|1", lambda: {"v": 4}) == {"v": 4}  # --fresh
    store.save_state("a|2", {"step": torch.tensor(3)})
    assert store.state("a|2")["step"] == 3 and S.Store(tmp_path, "key2", resume=True).state("a|2") is None
    other = S.Store(tmp_path, "key1", resume=True)
    other.path("b").write_bytes(other.path("a|1").read_bytes())  # a file moved to another cell's name
    with pytest.raises(UserError, match="is not the file of cell 'b'"):
        other.verify(["a|1", "b"])


def test_a_run_killed_between_cells_resumes_bit_identical(tmp_path, capsys):
    straight = toy_main(ToyConfig.make(out=str(tmp_path / "straight")))
    killed = ToyConfig.make(out=str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        toy_main(killed, kill_after=3)
    assert len(list((tmp_path / "killed" / "cells").glob("*.json"))) == 3
    resumed = toy_main(killed)
    assert resumed["rows"] == straight["rows"]
    assert (resumed["cells_computed"], resumed["cells_resumed"]) == (5, 3)
    assert (tmp_path / "killed" / "results.json").read_text().count('"values"') == 8
    damaged = next((tmp_path / "killed" / "cells").glob("*.json"))
    damaged.write_bytes(damaged.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated.*pass --fresh"):
        toy_main(killed)
    assert toy_main(ToyConfig.make(out=str(tmp_path / "killed"), resume=False))["rows"] == straight["rows"]
    assert "8 cell(s) computed" in capsys.readouterr().err


def test_results_come_before_plots_and_missing_packages_are_named_at_start(tmp_path, capsys, monkeypatch):
    drawn = []
    cfg = ToyConfig.make(out=str(tmp_path / "o"))
    with R.Run(cfg, 1) as run:
        pass
    run.write(
        {"rows": []},
        lambda res: "md",
        [("p.png", lambda res, path: drawn.append((path, (path.parent / "results.json").exists())))],
    )
    assert drawn == [(tmp_path / "o" / "p.png", True)]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    res: dict = {}
    run.write(res, lambda r: "md", [("p.png", lambda r, path: None)])
    assert res["plots"] == [] and "matplotlib is not installed" in res["plots_skipped"]
    assert "plots skipped" in capsys.readouterr().err
    for flag, package in (("plots", "matplotlib"), ("progress", "tqdm")):
        monkeypatch.setitem(sys.modules, package, None)
        with pytest.raises(UserError, match=f"--{flag} needs {package}, which is not installed"):
            R.Run(ToyConfig.make(out=str(tmp_path / "n"), **{flag: True}), 1)
    assert not (tmp_path / "n").exists()  # refused before anything was written


def test_table_renders_every_row():
    text = R.table(
        [{"a": 1.23456789, "b": None}, {"a": float("nan"), "b": "x"}], [("A", "a"), ("B", "b"), ("C", lambda r: 2)]
    )
    assert text.splitlines() == ["| A | B | C |", "|---|---|---|", "| 1.235 | - | 2 |", "| nan | x | 2 |"]
