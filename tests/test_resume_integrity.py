"""Resume state is verified before it is trusted: damaged, truncated, foreign, unchecksummed or
ill-fitting checkpoints and partial results are refused with one line and exit status 2 (never a
traceback, never a silently different result), for every command that resumes."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gumbelkit import cli
from gumbelkit.experiments._common import (
    UserError,
    read_checked_bytes,
    read_checked_json,
    read_checked_torch,
    write_checked_bytes,
    write_checked_json,
    write_checked_torch,
)

TIMING = ("seconds", "steps_per_second", "eval_seconds", "resumed_from_step")


def run(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_refusal(rc, err, command, *needles):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gumbelkit {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def flip_bytes(path: Path, count: int = 64, start: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if start is None else start
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- the checked formats


def test_checked_bytes_refuse_every_single_byte_flip_and_truncation(tmp_path):
    path = tmp_path / "f.bin"
    write_checked_bytes(path, b"payload of a checkpoint")
    good = path.read_bytes()
    assert read_checked_bytes(path) == b"payload of a checkpoint"
    for i in range(len(good)):
        for mask in (0x01, 0x80):
            bad = bytearray(good)
            bad[i] ^= mask
            path.write_bytes(bytes(bad))
            with pytest.raises(UserError, match=str(path)):
                read_checked_bytes(path)
    for n in range(len(good)):
        path.write_bytes(good[:n])
        with pytest.raises(UserError, match="empty|truncated|header"):
            read_checked_bytes(path)
    path.write_bytes(good + b"\0")
    with pytest.raises(UserError, match="longer than its header says"):
        read_checked_bytes(path)


def test_checked_json_refuses_any_change_of_content(tmp_path):
    path = tmp_path / "s.json"
    obj = {"a": [1, 2.5, float("nan")], "b": {"c": "x", "d": None}, "e": -0.0}
    write_checked_json(path, obj)
    back = read_checked_json(path)
    assert json.dumps(back, sort_keys=True) == json.dumps(obj, sort_keys=True)
    good = path.read_bytes()
    refused = 0
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        path.write_bytes(bytes(bad))
        try:
            again = read_checked_json(path)
        except UserError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            refused += 1
        else:  # only a change that leaves the content identical may pass (e.g. inside whitespace)
            assert json.dumps(again, sort_keys=True) == json.dumps(obj, sort_keys=True)
    assert refused >= len(good) - good.count(b" ") - good.count(b"\n")
    path.write_text(json.dumps(obj))
    with pytest.raises(UserError, match="has no checksum"):
        read_checked_json(path)


def test_checked_torch_refuses_a_frame_that_holds_no_tensor_pickle(tmp_path):
    path = tmp_path / "c.pt"
    write_checked_bytes(path, b"not a pickle at all")
    with pytest.raises(UserError, match="does not load"):
        read_checked_torch(path)
    write_checked_torch({"x": torch.arange(3)}, path)
    assert torch.equal(read_checked_torch(path)["x"], torch.arange(3))


# --------------------------------------------------------------------------- gumbelkit vae --resume


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """One finished tiny run (idx data, 6 steps, checkpoint every 3) and its argv."""
    root = tmp_path_factory.mktemp("vae_integrity")
    folder = root / "idx"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for name, n in (("train-images-idx3-ubyte.gz", 60), ("t10k-images-idx3-ubyte.gz", 20)):
        (folder / name).write_bytes(gzip.compress(_idx(rng.randint(0, 256, size=(n, 6, 6)).astype(np.uint8))))
    argv = [
        "vae",
        "--data",
        f"idx:{folder}",
        "--latent",
        "3x3",
        "--steps",
        "6",
        "--batch-size",
        "10",
        "--methods",
        "st_gumbel",
        "--checkpoint-every",
        "3",
        "--hidden",
        "16,8",
        "--eval-samples",
        "4",
        "--threads",
        "1",
        "--no-progress",
    ]
    out = root / "straight"
    assert cli.main(argv + ["--out", str(out)]) == 0
    return argv, out


def _copy_for_resume(vae_run, tmp_path, keep_record=False):
    argv, straight = vae_run
    out = tmp_path / "out"
    shutil.copytree(straight, out)
    (out / "results.json").unlink()
    if not keep_record:
        (out / "runs" / "st_gumbel-seed0.json").unlink()  # so --resume loads the checkpoint
    return argv + ["--out", str(out), "--resume"], out, out / "checkpoints" / "st_gumbel-seed0.pt"


def _strip(runs):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in runs]


def test_resume_from_an_intact_checkpoint_is_bit_identical(vae_run, tmp_path, capsys):
    argv, out, _ = _copy_for_resume(vae_run, tmp_path)
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    assert "resuming from step 6" in err
    a = json.loads((vae_run[1] / "results.json").read_text())["runs"]
    b = json.loads((out / "results.json").read_text())["runs"]
    assert _strip(a) == _strip(b)


def _retensor(ckpt_path, edit):
    ckpt = read_checked_torch(ckpt_path)
    edit(ckpt)
    write_checked_torch(ckpt, ckpt_path)


def _set(d, keys, value):
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


VAE_DAMAGE = {
    "64 flipped bytes": (lambda p: flip_bytes(p, 64), "SHA-256 checksum mismatch"),
    "flipped header": (lambda p: flip_bytes(p, 4, start=0), "unknown header"),
    "flipped length": (lambda p: flip_bytes(p, 1, start=14), "header says"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
    "empty file": (lambda p: p.write_bytes(b""), "is empty"),
    "not a checkpoint": (lambda p: p.write_text("hello, I am a text file\n"), "not a gumbelkit state file"),
    "old format torch.save": (lambda p: torch.save(read_checked_torch(p), p), "has no checksum"),
    "raw pickle of a wrong dict": (
        lambda p: p.write_bytes(__import__("pickle").dumps({"model": 1})),
        "has no checksum",
    ),
    "checksummed list": (lambda p: write_checked_torch([1, 2, 3], p), "holds a list"),
    "checksummed wrong dict": (lambda p: write_checked_torch({"model": {}}, p), "has no 'format' entry"),
    "wrong format number": (lambda p: _retensor(p, lambda c: _set(c, ["format"], 1)), "has format 1"),
    "wrong tensor shape": (
        lambda p: _retensor(p, lambda c: _set(c, ["model", "encoder.0.weight"], torch.zeros(3, 3))),
        "model['encoder.0.weight'] is torch.float32 (3, 3), the model needs torch.float32 (16, 36)",
    ),
    "missing model tensor": (
        lambda p: _retensor(p, lambda c: c["model"].pop("decoder.0.bias")),
        "model has no 'decoder.0.bias' entry",
    ),
    "model is a string": (lambda p: _retensor(p, lambda c: _set(c, ["model"], "weights")), "model is a str"),
    "optimizer moment shape": (
        lambda p: _retensor(p, lambda c: _set(c, ["optimizer", "state", 0, "exp_avg"], torch.zeros(2))),
        "optimizer state 0['exp_avg'] has shape (2)",
    ),
    "optimizer groups": (
        lambda p: _retensor(p, lambda c: _set(c, ["optimizer", "param_groups"], [])),
        "parameter group",
    ),
    "rng state of the wrong size": (
        lambda p: _retensor(p, lambda c: _set(c, ["rng", "noise"], torch.zeros(7, dtype=torch.uint8))),
        "RuntimeError",
    ),
    "rng state not a tensor": (
        lambda p: _retensor(p, lambda c: _set(c, ["rng", "data"], [1, 2])),
        "rng['data'] is not a generator state",
    ),
    "sampler not a permutation": (
        lambda p: _retensor(p, lambda c: _set(c, ["sampler", "perm"], torch.zeros(54, dtype=torch.long))),
        "not a permutation",
    ),
    "step out of range": (lambda p: _retensor(p, lambda c: _set(c, ["state", "step"], 99)), "state['step'] is 99"),
    "curve of strings": (
        lambda p: _retensor(p, lambda c: _set(c, ["state", "train_curve"], ["x"])),
        "train_curve'] is not a list",
    ),
    "initial numbers missing": (
        lambda p: _retensor(p, lambda c: _set(c, ["state", "initial"], {"neg_elbo": 1.0})),
        "state['initial']",
    ),
    "other configuration": (
        lambda p: _retensor(p, lambda c: _set(c, ["fingerprint", "lr"], 0.5)),
        "different configuration",
    ),
    "a folder instead of a file": (lambda p: (p.unlink(), p.mkdir()), "cannot be read"),
}


@pytest.mark.parametrize("case", sorted(VAE_DAMAGE))
def test_resume_refuses_a_damaged_or_ill_fitting_checkpoint(case, vae_run, tmp_path, capsys):
    argv, out, ckpt = _copy_for_resume(vae_run, tmp_path)
    damage, needle = VAE_DAMAGE[case]
    damage(ckpt)
    rc, stdout, err = run(argv, capsys)
    assert_one_line_refusal(rc, err, "vae", str(ckpt), needle)
    assert stdout == ""
    assert not (out / "results.json").exists()


VAE_RECORD_DAMAGE = {
    "changed number": (
        lambda p: p.write_text(p.read_text().replace('"seed": 0', '"seed": 1', 1)),
        "SHA-256 checksum mismatch",
    ),
    "64 flipped bytes": (lambda p: flip_bytes(p, 64), "st_gumbel-seed0.json is damaged"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), "not valid JSON"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "no checksum (older gumbelkit)": (
        lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "checksum"})),
        "has no checksum",
    ),
    "a JSON list": (lambda p: p.write_text("[1, 2]"), "not a gumbelkit state file"),
    "checksummed but incomplete": (
        lambda p: write_checked_json(p, {k: v for k, v in read_checked_json(p).items() if k != "test_neg_elbo"}),
        "'test_neg_elbo' is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(VAE_RECORD_DAMAGE))
def test_resume_refuses_a_damaged_run_record(case, vae_run, tmp_path, capsys):
    argv, out, _ = _copy_for_resume(vae_run, tmp_path, keep_record=True)
    record = out / "runs" / "st_gumbel-seed0.json"
    damage, needle = VAE_RECORD_DAMAGE[case]
    damage(record)
    rc, _, err = run(argv, capsys)
    assert_one_line_refusal(rc, err, "vae", str(record), needle)
    assert not (out / "results.json").exists()


def test_resume_reuses_an_intact_run_record(vae_run, tmp_path, capsys):
    argv, out, _ = _copy_for_resume(vae_run, tmp_path, keep_record=True)
    rc, _, err = run(argv, capsys)
    assert rc == 0 and "already complete" in err
    a = json.loads((vae_run[1] / "results.json").read_text())["runs"]
    b = json.loads((out / "results.json").read_text())["runs"]
    assert _strip(a) == _strip(b)


# --------------------------------------------------------------------------- gumbelkit gradients


GRAD = [
    "gradients",
    "--problems",
    "quadratic",
    "--methods",
    "softmax,st_gumbel",
    "--taus",
    "0.5",
    "--samples",
    "16",
    "--chunk",
    "16",
    "--demo-steps",
    "2",
    "--demo-seeds",
    "1",
    "--demo-methods",
    "st",
    "--demo-batch",
    "4",
    "--no-plots",
]


@pytest.fixture(scope="module")
def grad_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grad_integrity") / "out"
    assert cli.main(GRAD + ["--out", str(out)]) == 0
    return out


def _grad_edit(edit):
    def damage(p):
        data = read_checked_json(p)
        edit(data)
        write_checked_json(p, data)

    return damage


GRAD_DAMAGE = {
    "changed number": (
        lambda p: p.write_text(p.read_text().replace('"samples": 16', '"samples": 17', 1)),
        "checksum mismatch",
    ),
    "64 flipped bytes": (lambda p: flip_bytes(p, 64), "is damaged"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-40]), "not valid JSON"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "no checksum (older gumbelkit)": (
        lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "checksum"})),
        "has no checksum",
    ),
    "cells not a table": (_grad_edit(lambda d: d.__setitem__("cells", [])), "has no 'cells' table"),
    "cell without numbers": (_grad_edit(lambda d: next(iter(d["cells"].values())).pop("variance")), "lacks a number"),
    "reference gradient of the wrong length": (
        _grad_edit(lambda d: next(iter(d["refs"].values())).__setitem__("grad", [0.0])),
        "expected 18",
    ),
    "demo run without fractions": (
        _grad_edit(lambda d: next(iter(d["demo"]["runs"].values())).pop("hard")),
        "no hard fractions",
    ),
}


@pytest.mark.parametrize("case", sorted(GRAD_DAMAGE))
def test_gradients_refuses_a_damaged_checkpoint_and_fresh_starts_over(case, grad_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(grad_run, out)
    ckpt = out / "checkpoint.json"
    damage, needle = GRAD_DAMAGE[case]
    damage(ckpt)
    (out / "results.json").unlink()
    rc, _, err = run(GRAD + ["--out", str(out)], capsys)
    line = assert_one_line_refusal(rc, err, "gradients", str(ckpt), needle)
    assert "--fresh" in line and not (out / "results.json").exists()
    rc, _, err = run(GRAD + ["--out", str(out), "--fresh"], capsys)
    assert rc == 0, err
    assert read_checked_json(ckpt)["cells"]  # rewritten, checksummed


def test_gradients_reuses_an_intact_checkpoint(grad_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(grad_run, out)
    rc, _, err = run(GRAD + ["--out", str(out)], capsys)
    assert rc == 0, err
    a = json.loads((grad_run / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["cells_computed"] == 0 and a["rows"] == b["rows"]


# --------------------------------------------------------------------------- gumbelkit bench --resume


BENCH = [
    "bench",
    "--shapes",
    "8x5",
    "--impls",
    "builtin,softmax",
    "--modes",
    "soft",
    "--repeats",
    "3",
    "--min-time",
    "0.0001",
    "--no-vae",
    "--no-memory",
    "--no-progress",
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_integrity") / "out"
    assert cli.main(BENCH + ["--out", str(out)]) == 0
    return out


BENCH_DAMAGE = {
    "changed number": (
        lambda p: p.write_text(p.read_text().replace('"rounds": 3', '"rounds": 4', 1)),
        "checksum mismatch",
    ),
    "64 flipped bytes": (lambda p: flip_bytes(p, 64), "is damaged"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "no checksum (older gumbelkit)": (
        lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "checksum"})),
        "has no checksum",
    ),
    "shapes not a list": (_grad_edit(lambda d: d.__setitem__("shapes", {})), "no settings or shapes"),
    "row without a median": (_grad_edit(lambda d: d["shapes"][0]["rows"][0].pop("median_ms")), "lacks a field"),
}


@pytest.mark.parametrize("case", sorted(BENCH_DAMAGE))
def test_bench_resume_refuses_a_damaged_checkpoint(case, bench_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(bench_run, out)
    (out / "bench.json").unlink()
    ckpt = out / "checkpoint.json"
    damage, needle = BENCH_DAMAGE[case]
    damage(ckpt)
    rc, _, err = run(BENCH + ["--out", str(out), "--resume"], capsys)
    assert_one_line_refusal(rc, err, "bench", str(ckpt), needle)
    assert not (out / "bench.json").exists()


def test_bench_resume_reuses_an_intact_checkpoint(bench_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(bench_run, out)
    rc, _, err = run(BENCH + ["--out", str(out), "--resume"], capsys)
    assert rc == 0, err
    a = json.loads((bench_run / "bench.json").read_text())["shapes"]
    b = json.loads((out / "bench.json").read_text())["shapes"]
    assert a == b
