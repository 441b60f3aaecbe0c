"""``gumbelkit bench``: files, JSON schema, resume, errors, and the memory accounting (no timings)."""

import json

import pytest
import torch

import gumbelkit
from gumbelkit import cli
from gumbelkit.experiments import bench


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "bench",
        "--shapes",
        "64x50,4x3x5",
        "--impls",
        "builtin,eager,softmax,clone",
        "--repeats",
        "3",
        "--min-time",
        "0.0001",
        "--vae-steps",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_writes_json_markdown_and_png(small_run):
    out, res = small_run
    assert (out / "bench.md").read_text().startswith("# gumbelkit bench")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gumbelkit bench --shapes 64x50,4x3x5" in res["command"]
    assert res["environment"]["threads"] == 1 and res["environment"]["torch"] == torch.__version__


def test_json_rows_cover_every_variant(small_run):
    _, res = small_run
    assert [s["shape"] for s in res["shapes"]] == ["64x50", "4x3x5"]
    for s in res["shapes"]:
        got = {(r["impl"], r["mode"], r["pass"]) for r in s["rows"]}
        expected = {(i, m, p) for i in ("builtin", "eager") for m in ("soft", "hard") for p in ("fwd", "fwdbwd")}
        expected |= {(i, "soft", p) for i in ("softmax", "clone") for p in ("fwd", "fwdbwd")}
        assert got == expected
        for r in s["rows"]:
            assert r["median_ms"] > 0 and r["rounds"] == 3 and r["gb_per_s"] > 0
            if r["impl"] == "builtin":
                assert r["ratio_vs_builtin"] == pytest.approx(1.0)
    vae = res["vae"]
    assert {(r["impl"], r["mode"]) for r in vae["rows"]} == {
        (i, m) for i in ("builtin", "eager") for m in ("soft", "hard")
    }


def test_memory_accounting_reproduces_the_reference_counts(small_run):
    # DESIGN §5: the built-in holds 3 (soft) and 5 (hard) B x K buffers at its peak; a plain
    # softmax forward+backward peaks at 3 and a clone at 2 under the same accounting.
    _, res = small_run
    mem = {(m["impl"], m["mode"]): m for m in res["shapes"][0]["memory"]}
    assert mem["builtin", "soft"]["peak_buffers"] == pytest.approx(3, abs=0.1)
    assert mem["builtin", "hard"]["peak_buffers"] == pytest.approx(5, abs=0.3)
    assert mem["softmax", "soft"]["peak_buffers"] == pytest.approx(3, abs=0.1)
    assert mem["clone", "soft"]["peak_buffers"] == pytest.approx(2, abs=0.1)
    # gumbelkit's eager path: hard peaks at 3 and keeps one buffer (y) for the backward
    assert mem["eager", "hard"]["peak_buffers"] <= 3.1
    assert mem["eager", "hard"]["held_buffers"] == pytest.approx(1, abs=0.1)
    assert mem["eager", "soft"]["held_buffers"] == pytest.approx(0, abs=0.1)


def test_resume_reuses_finished_shapes(small_run, tmp_path):
    out, res = small_run
    ckpt = json.loads((out / "checkpoint.json").read_text())
    assert [s["shape"] for s in ckpt["shapes"]] == ["64x50", "4x3x5"]
    again = bench.main(
        {
            "shapes": "64x50",
            "impls": "builtin,eager,softmax,clone",
            "repeats": 3,
            "min_time": 0.0001,
            "vae": False,
            "out": str(out),
            "resume": True,
            "progress": False,
        }
    )
    assert again["shapes"][0] == res["shapes"][0]  # taken from the checkpoint, not re-timed


@pytest.mark.parametrize(
    "args,message",
    [
        (["--shapes", "10"], "at least two positive sizes"),
        (["--shapes", "axb"], "expected --shapes like"),
        (["--impls", "builtin,turbo"], "unknown --impls 'turbo'"),
        (["--repeats", "2"], "expected --repeats 0"),
        (["--tau", "0"], "expected --tau > 0"),
        (["--device", "tpu"], "expected --device"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys):
    assert cli.main(["bench", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_layout_cost_and_compile_sections(tmp_path, monkeypatch):
    import functools

    # Inductor's C++ compile takes tens of seconds on a small CPU; the section's logic is the same
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    res = bench.main(
        {
            "shapes": "8x5",
            "impls": "builtin,eager",
            "repeats": 3,
            "min_time": 0.0001,
            "vae": False,
            "memory": True,
            "layout_shapes": "2x6x8x8",
            "cost_shapes": "2x6x4x4",
            "compile_shape": "2x8x2x2",
            "quantizer_shape": "2x8x3x3",
            "out": str(tmp_path),
            "progress": False,
            "plots": False,
        }
    )
    layout = {(r["mode"], r["impl"]): r for r in res["layout"]}
    assert set(layout) == {
        (m, i) for m in ("soft", "hard") for i in ("builtin dim=1", "gumbelkit dim=1", "gumbelkit dim=-1 (twin)")
    }
    for m in ("soft", "hard"):
        assert layout[m, "gumbelkit dim=-1 (twin)"]["vs_last"] == pytest.approx(1.0)
        assert layout[m, "builtin dim=1"]["vs_builtin"] == pytest.approx(1.0)
    cost = {r["method"]: r for r in res["cost"]}
    assert set(cost) == set(gumbelkit.METHODS) | {"builtin (hard)"}
    from gumbelkit.experiments._defaults import BENCH_COST_BASELINE

    assert cost[BENCH_COST_BASELINE]["vs_baseline"] == pytest.approx(1.0)
    assert cost["builtin (hard)"]["vs_builtin"] == pytest.approx(1.0)
    assert all(r["peak_buffers"] > 0 and r["median_ms"] > 0 for r in res["cost"])
    compiled = {(r["mode"], r["variant"]): r for r in res["compiled_model"]["rows"]}
    assert set(compiled) == {
        (m, f"{c} {s}") for m in ("soft", "hard") for c in ("eager", "compiled") for s in ("builtin", "gumbelkit")
    }
    for m in ("soft", "hard"):  # each mode's ratios are to its own eager gumbelkit
        assert compiled[m, "eager gumbelkit"]["vs_eager_gumbelkit"] == pytest.approx(1.0)
        assert compiled[m, "eager gumbelkit"]["vs_eager_gumbelkit_min"] == pytest.approx(1.0)
    layers = {(r["mode"], r["variant"]): r for r in res["quantizer"]["rows"]}
    from gumbelkit.experiments._defaults import BENCH_QUANTIZER_METHODS

    assert set(layers) == {
        (m, v)
        for m in ("soft", "hard")
        for v in ("hand-written, built-in sampler", "hand-written, gumbelkit sampler", "GumbelQuantizer")
    }
    for m in ("soft", "hard"):  # each mode's speed-ups are against its own hand-written built-in layer
        assert layers[m, "hand-written, built-in sampler"]["vs_builtin"] == pytest.approx(1.0)
        assert layers[m, "GumbelQuantizer"]["method"] == BENCH_QUANTIZER_METHODS[m]
        assert layers[m, "GumbelQuantizer"]["median_ms"] > 0
    md = (tmp_path / "bench.md").read_text()
    for title in ("## Categories not last", "## Cost of each method", "## Compiled model", "## Quantizer layer"):
        assert title in md
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["cost"] == res["cost"] and saved["layout"] == res["layout"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--layout-shapes", "4x5"], "expected --layout-shapes with 4 sizes each"),
        (["--cost-shapes", "2x3x4x0"], "at least two positive sizes"),
        (["--compile-shape", "2x3x4x4,2x3x4x4"], "expected one shape for --compile-shape"),
        (["--quantizer-shape", "2x3x4x4,2x3x4x4"], "expected one shape for --quantizer-shape"),
        (["--quantizer-shape", "2x3x4"], "expected --quantizer-shape with 4 sizes each"),
    ],
)
def test_section_shapes_are_checked(args, message, tmp_path, capsys):
    assert cli.main(["bench", *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
