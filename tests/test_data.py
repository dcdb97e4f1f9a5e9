"""Tests of the data pipeline: lr_jax.experiment.mnist_io (reading) and lr_jax.experiment.datasets (pure).

Expected values are computed by hand or from independent facts (the published
MNIST test-split label counts and md5), never from the code under test.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from lr_jax.experiment import datasets, mnist_io
from lr_jax.experiment.datasets import avg_pool, make_categories
from lr_jax.experiment.mnist_io import MnistSplits

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "mnist"
# Published facts about the official MNIST test split (see shared/mnist/README.md).
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TEST_IMAGES_MD5 = "2646ac647ad5339dbf082846283269ea"

needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST test split not found in {SHARED_MNIST}",
)


def _idx_bytes(array: np.ndarray) -> bytes:
    """Serialises a uint8 array as an IDX file, written independently of read_idx."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _synthetic_splits(n_per_label: int = 600, n_test_per_label: int = 520) -> MnistSplits:
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(10), n_per_label)
    test_labels = np.repeat(np.arange(10), n_test_per_label)
    return MnistSplits(
        rng.integers(0, 256, (train_labels.size, 28, 28), dtype=np.uint8),
        train_labels,
        rng.integers(0, 256, (test_labels.size, 28, 28), dtype=np.uint8),
        test_labels,
        "synthetic",
        "random pixels",
    )


@pytest.fixture(scope="module")
def embedded() -> mnist_io.Digits:
    return mnist_io.load_embedded()


@pytest.fixture(scope="module")
def embedded_splits() -> MnistSplits:
    return mnist_io.load_mnist("embedded")


# --------------------------------------------------------------------------
# pooling


@pytest.mark.parametrize("method", ["adaptive", "crop"])
def test_avg_pool_shape(method):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    assert avg_pool(images, method=method).shape == (3, 36)


def test_adaptive_pool_row_ramp_by_hand():
    # Pixel value = row index. Adaptive row bins for 28 -> 6 are
    # [0,5) [4,10) [9,14) [14,19) [18,24) [23,28); their mean row index:
    expected_rows = [10 / 5, 39 / 6, 55 / 5, 80 / 5, 123 / 6, 125 / 5]
    image = np.repeat(np.arange(28, dtype=np.float64)[:, None], 28, axis=1)[None]
    pooled = avg_pool(image, method="adaptive").reshape(6, 6)
    np.testing.assert_allclose(pooled, np.repeat(np.array(expected_rows)[:, None], 6, axis=1))
    # The transposed image gives the transposed result.
    pooled_t = avg_pool(image.transpose(0, 2, 1), method="adaptive").reshape(6, 6)
    np.testing.assert_allclose(pooled_t, pooled.T)


def test_pool_single_pixel_adaptive_overlap_vs_crop():
    # Pixel (4, 4) lies in adaptive bins 0 and 1 of both axes (they overlap).
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 4, 4] = 255
    adaptive = avg_pool(image, method="adaptive").reshape(6, 6)
    expected = np.zeros((6, 6))
    expected[0, 0] = 255 / (5 * 5)
    expected[0, 1] = expected[1, 0] = 255 / (5 * 6)
    expected[1, 1] = 255 / (6 * 6)
    np.testing.assert_allclose(adaptive, expected)
    # Crop keeps rows/cols 2..25: the pixel is (2, 2) of the crop, block (0, 0).
    crop = avg_pool(image, method="crop").reshape(6, 6)
    expected = np.zeros((6, 6))
    expected[0, 0] = 255 / 16
    np.testing.assert_allclose(crop, expected)


def test_crop_pool_constant_blocks_ignore_border():
    image = np.full((1, 28, 28), 255, dtype=np.uint8)  # border only seen by adaptive
    for i in range(6):
        for j in range(6):
            image[0, 2 + 4 * i : 6 + 4 * i, 2 + 4 * j : 6 + 4 * j] = 6 * i + j
    np.testing.assert_allclose(avg_pool(image, method="crop")[0], np.arange(36))
    adaptive = avg_pool(image, method="adaptive")[0]
    assert adaptive[0] > 0  # bin [0,5)x[0,5) includes the 255 border
    # The interior bin [9,14)x[9,14) holds crop blocks (1..2, 1..2) only:
    # rows 9 -> block 1, 10..13 -> block 2; same for columns.
    weights = np.array([1, 4]) / 5
    blocks = np.array([[6 * 1 + 1, 6 * 1 + 2], [6 * 2 + 1, 6 * 2 + 2]])
    assert adaptive[2 * 6 + 2] == pytest.approx(weights @ blocks @ weights)


def test_pool_half_black_half_white_agree():
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, :, 14:] = 255
    expected = np.tile([0, 0, 0, 255, 255, 255], 6)
    for method in ("adaptive", "crop"):
        np.testing.assert_allclose(avg_pool(image, method=method)[0], expected)


def test_avg_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown pooling"):
        avg_pool(np.zeros((1, 28, 28)), method="max")
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        avg_pool(np.zeros((28, 28)))


# --------------------------------------------------------------------------
# embedded loader and splits


def test_load_embedded(embedded):
    images, labels = embedded
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and np.issubdtype(labels.dtype, np.integer)
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_embedded_halves_indices_disjoint_and_stratified(embedded):
    first, second = mnist_io._halve_per_class(embedded.labels)
    assert np.intersect1d(first, second).size == 0
    assert np.array_equal(np.sort(np.concatenate([first, second])), np.arange(5000))
    for part in (first, second):
        assert np.bincount(embedded.labels[part], minlength=10).tolist() == [250] * 10


def test_embedded_splits_disjoint_images(embedded, embedded_splits):
    s = embedded_splits
    assert s.source == "embedded" and "disjoint halves" in s.note
    assert s.train_images.shape == s.test_images.shape == (2500, 28, 28)
    assert np.bincount(s.train_labels, minlength=10).tolist() == [250] * 10
    assert np.bincount(s.test_labels, minlength=10).tolist() == [250] * 10
    train = {im.tobytes() for im in s.train_images}
    test = {im.tobytes() for im in s.test_images}
    assert not train & test
    assert train | test == {im.tobytes() for im in embedded.images}


def test_load_mnist_unknown_source():
    with pytest.raises(ValueError, match="embedded, tfds, idx"):
        mnist_io.load_mnist("mnist")
    with pytest.raises(ValueError, match="idx_dir"):
        mnist_io.load_mnist("idx")


# --------------------------------------------------------------------------
# categories


def test_categories_embedded_takes_all_available(embedded_splits):
    cats = make_categories(embedded_splits, key=jax.random.key(0))
    assert cats.per_class_used == {"train": (250, 250), "test": (250, 250)}
    assert cats.train_x.shape == cats.test_x.shape == (500, 36)
    assert cats.random1.shape == cats.random2.shape == (1000, 36)
    assert int(cats.train_y.sum()) == int(cats.test_y.sum()) == 250
    assert set(embedded_splits.train_labels[cats.train_index]) == {0, 4}


def test_categories_balance_and_labels():
    splits = _synthetic_splits()
    cats = make_categories(splits, key=jax.random.key(1), digits=(7, 2), per_class=500)
    assert cats.per_class_used == {"train": (500, 500), "test": (500, 500)}
    for index, y, labels in (
        (cats.train_index, cats.train_y, splits.train_labels),
        (cats.test_index, cats.test_y, splits.test_labels),
    ):
        assert len(np.unique(index)) == 1000  # without replacement
        assert np.bincount(labels[index], minlength=10)[[7, 2]].tolist() == [500, 500]
        np.testing.assert_array_equal(np.asarray(y), labels[index] == 2)  # label 1 = digits[1]


def test_categories_value_ranges():
    scale = 2.5
    splits = _synthetic_splits()
    cats = make_categories(splits, key=jax.random.key(2), scale=scale, n_random=300)
    train_x, test_x = np.asarray(cats.train_x), np.asarray(cats.test_x)
    r1, r2 = np.asarray(cats.random1), np.asarray(cats.random2)
    assert train_x.dtype == np.float32 and r2.shape == (300, 36)
    for x in (train_x, test_x, r2):
        assert x.min() >= 0 and x.max() <= scale
    assert r2.max() > 0.9 * scale  # uses the full range, not [0, 1]
    assert np.all(r1 >= train_x.min(axis=0)) and np.all(r1 <= train_x.max(axis=0))
    # Inputs are pooled pixels / 255 * scale.
    expected = avg_pool(splits.train_images[cats.train_index]) / 255 * scale
    np.testing.assert_allclose(train_x, expected, rtol=1e-6)


def test_categories_random1_per_pixel_ranges():
    # Black top rows and one fixed mid-grey pixel block: random1 must be
    # constant there, and spread out where the training points vary.
    splits = _synthetic_splits()
    images = splits.train_images.copy()
    images[:, :10, :] = 0  # rows 0-9 cover adaptive row bins 0 and 1
    images[:, 23:, 23:] = 51  # bin (5, 5) is [23,28)x[23,28)
    cats = make_categories(splits._replace(train_images=images), key=jax.random.key(3))
    r1 = np.asarray(cats.random1).reshape(-1, 6, 6)
    assert np.all(r1[:, :2, :] == 0)
    np.testing.assert_allclose(r1[:, 5, 5], 51 / 255, rtol=1e-6)
    train_x = np.asarray(cats.train_x)
    assert np.all(r1.reshape(-1, 36) >= train_x.min(axis=0))
    assert np.all(r1.reshape(-1, 36) <= train_x.max(axis=0))
    assert np.all(r1[:, 2:5, :].std(axis=0) > 0.01)


def test_categories_deterministic_in_key():
    splits = _synthetic_splits()
    a = make_categories(splits, key=jax.random.key(5), per_class=50, n_random=20)
    b = make_categories(splits, key=jax.random.key(5), per_class=50, n_random=20)
    c = make_categories(splits, key=jax.random.key(6), per_class=50, n_random=20)
    for field in ("train_x", "train_y", "test_x", "test_y", "random1", "random2",
                  "train_index", "test_index"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
    for field in ("train_index", "test_index", "random1", "random2"):
        assert not np.array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(c, field)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"digits": (0, 0)}, "distinct"),
        ({"digits": (0, 10)}, "two ints in 0-9"),
        ({"digits": (0,)}, "two ints in 0-9"),
        ({"digits": (0.0, 4)}, "two ints in 0-9"),
        ({"per_class": 0}, "per_class"),
        ({"n_random": 0}, "n_random"),
        ({"scale": 0.0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"pooling": "max"}, "unknown pooling"),
    ],
)
def test_categories_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_categories(_synthetic_splits(2, 2), key=jax.random.key(0), **kwargs)


def test_categories_missing_digit():
    splits = _synthetic_splits(2, 2)
    splits = splits._replace(test_labels=np.where(splits.test_labels == 4, 5, splits.test_labels))
    with pytest.raises(ValueError, match="test split holds no digit 4"):
        make_categories(splits, key=jax.random.key(0))


# --------------------------------------------------------------------------
# IDX reader


@needs_shared_mnist
def test_read_idx_real_test_images():
    images = mnist_io.read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    # Rebuild the whole uncompressed file from the array and compare its md5.
    rebuilt = b"\x00\x00\x08\x03" + struct.pack(">3I", 10000, 28, 28) + images.tobytes()
    assert hashlib.md5(rebuilt).hexdigest() == TEST_IMAGES_MD5


@needs_shared_mnist
def test_read_idx_real_test_labels_plain_and_gzip(tmp_path):
    labels = mnist_io.read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,)
    assert np.bincount(labels, minlength=10).tolist() == TEST_LABEL_COUNTS
    # Compression is detected by content: a plain file named .gz still reads.
    plain = tmp_path / "labels.gz"
    plain.write_bytes(gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(mnist_io.read_idx(plain), labels)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_read_idx_roundtrip_and_gzip_without_suffix(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = _idx_bytes(array)
    path = tmp_path / "images"  # no suffix either way
    path.write_bytes(gzip.compress(data) if compress else data)
    out = mnist_io.read_idx(path)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 7  # owns writable memory


_GOOD = _idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x00\x00\x0d\x03" + _GOOD[4:], "bad magic"),  # float dtype byte
        (b"\x00\x00\x08\x02" + _GOOD[4:], "bad magic"),  # 2-D
        (b"\x1a\x2b\x08\x03" + _GOOD[4:], "bad magic"),
        (_GOOD[:3], "too short"),
        (_GOOD[:10], "truncated header"),
        (_GOOD[:-1], "truncated payload"),
        (_GOOD + b"\x00\x00", "2 trailing bytes"),
    ],
    ids=["dtype", "ndim", "nonzero", "short", "header", "truncated", "trailing"],
)
def test_read_idx_malformed(tmp_path, compress, data, match):
    path = tmp_path / "bad-idx-file"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match=match) as info:
        mnist_io.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(_GOOD)[:-6])
    with pytest.raises(ValueError, match="corrupt gzip") as info:
        mnist_io.read_idx(path)
    assert str(path) in str(info.value)


def _write_idx_dir(directory: Path, n_train: int = 3, n_test: int = 2, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for name, array in arrays.items():
        data = _idx_bytes(array)
        (directory / (name + ".gz" if gz else name)).write_bytes(
            gzip.compress(data) if gz else data
        )


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx(tmp_path, gz):
    _write_idx_dir(tmp_path, gz=gz)
    splits = mnist_io.load_mnist("idx", idx_dir=tmp_path)
    assert splits.source == "idx"
    assert splits.train_images.shape == (3, 28, 28) and splits.test_images.shape == (2, 28, 28)
    assert splits.train_labels.tolist() == [0, 1, 2] and splits.test_labels.tolist() == [0, 1]


def test_load_idx_missing_file(tmp_path):
    _write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as info:
        mnist_io.load_idx(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mnist_io.load_idx(tmp_path / "nowhere")


def test_load_idx_count_mismatch(tmp_path):
    _write_idx_dir(tmp_path)
    labels = _idx_bytes(np.zeros(5, dtype=np.uint8))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(ValueError, match="3 images but .* 5 labels"):
        mnist_io.load_idx(tmp_path)


@needs_shared_mnist
def test_load_idx_shared_folder_lacks_train_split():
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        mnist_io.load_idx(SHARED_MNIST)


# --------------------------------------------------------------------------
# tfds (offline: a fake module, and the real one failing cleanly)


class _FakeSource:
    def __init__(self, labels):
        self._labels = labels

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        image = np.full((28, 28, 1), i, dtype=np.uint8)
        return {"image": image, "label": np.int64(self._labels[i])}


def _fake_tfds(monkeypatch, data_source):
    module = types.ModuleType("tensorflow_datasets")
    module.data_source = data_source
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)


def test_load_tfds_converts_examples(monkeypatch):
    calls = []

    def data_source(name, **kwargs):
        calls.append((name, kwargs))
        return {"train": _FakeSource([3, 1, 4]), "test": _FakeSource([1, 5])}

    _fake_tfds(monkeypatch, data_source)
    splits = mnist_io.load_mnist("tfds", data_dir="/somewhere", download=False)
    assert calls[0][0] == "mnist" and calls[0][1]["data_dir"] == "/somewhere"
    assert calls[0][1]["download"] is False
    assert splits.source == "tfds"
    assert splits.train_images.shape == (3, 28, 28) and splits.train_images.dtype == np.uint8
    assert splits.train_images[2, 5, 5] == 2
    assert splits.train_labels.tolist() == [3, 1, 4] and splits.test_labels.tolist() == [1, 5]


def test_load_tfds_needs_tensorflow_to_prepare(monkeypatch):
    def data_source(name, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    _fake_tfds(monkeypatch, data_source)
    with pytest.raises(ImportError, match=r"tensorflow-datasets\[tensorflow\]"):
        mnist_io.load_tfds("/x", download=True)


def test_load_tfds_offline_unprepared_fails_clearly(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(RuntimeError) as info:
        mnist_io.load_tfds(tmp_path / "tfds", download=False)
    message = str(info.value)
    assert "data.data_dir" in message and "data.download=true" in message
    assert str(tmp_path / "tfds") in message


def test_datasets_module_is_pure():
    source = Path(datasets.__file__).read_text()
    for forbidden in ("open(", "print(", "logging", "np.random"):
        assert forbidden not in source
