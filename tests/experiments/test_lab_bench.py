"""The speed benchmark's structure: every implementation, mode and pass measured, the memory of the
built-in reproduced, the sections' rows (timings themselves are benchmarks, never tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from benchmarks import bench as B
from benchmarks.harness import interleaved, measure_memory

import gumbelkit as gk


def test_the_harness_times_every_unit_and_measures_memory():
    calls = {"a": 0, "b": 0}

    def unit(name: str):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    res = interleaved({"a": unit("a"), "b": unit("b")}, rounds=3, min_time=0.0, device=torch.device("cpu"))
    assert set(res) == {"a", "b"} and calls == {"a": 5, "b": 5} and res["a"]["rounds"] == 3
    x, w, cpu = torch.randn(64, 100, requires_grad=True), torch.randn(64, 100), torch.device("cpu")
    # the reference counts: the built-in peaks at 3 (soft) and 5 (hard) B x K buffers, a softmax at 3, a clone at 2
    for fn, peak in ((lambda t: F.gumbel_softmax(t, tau=1.0), 3), (lambda t: F.gumbel_softmax(t, tau=1.0, hard=True), 5),
                     (lambda t: torch.softmax(t, -1), 3), (lambda t: t.clone(), 2)):  # fmt: skip
        assert abs(measure_memory(fn, x, w, cpu)["peak_buffers"] - peak) < 0.3


def test_every_implementation_mode_and_pass_has_a_row(tmp_path):
    cfg = B.BenchConfig.make(shapes="8x5", impls="builtin,eager,clone", methods="st", repeats=3, min_time=1e-4,
                             vae=False, cost_shapes="2x4x3x3", out=str(tmp_path), plots=False)  # fmt: skip
    res = B.main(cfg)
    rows = {(r["impl"], r["mode"], r["pass"]) for r in res["shapes"][0]["rows"]}
    assert rows == {(i, m, p) for i, modes in (("builtin", "soft,hard"), ("eager", "soft,hard"), ("clone", "soft"),
                                              ("sample:st", "hard")) for m in modes.split(",") for p in B.PASSES}  # fmt: skip
    assert {m["impl"] for m in res["shapes"][0]["memory"]} == {"builtin", "eager", "clone", "sample:st"}
    cost = {r["method"] for r in res["cost"]}
    assert cost == {"builtin (hard)", *gk.estimators.methods("categorical", "sample")}
    assert next(r for r in res["cost"] if r["vs_baseline"] == 1.0)["method"] == B._baseline(True)
