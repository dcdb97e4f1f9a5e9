"""The four categories of points of the MNIST experiment (paper, section 5.1).

A binary classifier of two MNIST digits ("0" vs "4" in the paper) is trained
on 6x6 average-pooled images (36 inputs). Its local complexity is monitored
around four categories of points:

* ``train``: ``per_class`` digits of each class from the training split (the
  model trains on these);
* ``test``: as many from the test split;
* ``random1``: each input uniform between that input's minimum and maximum
  over the ``train`` points;
* ``random2``: each input uniform over the full grayscale range, in the same
  input scale, i.e. ``[0, scale]``.

Inputs are ``pooled pixels / 255 * scale``. The random points are drawn
directly in the 36-dimensional input space the model sees.

This module is pure: it never reads files and all randomness comes from an
explicit ``jax.random`` key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from lr_jax.experiment.mnist_io import MnistSplits

POOLING_METHODS = ("adaptive", "crop")
# The four categories of points (section 5.1), in the order every table and file uses.
CATEGORIES = ("train", "test", "random1", "random2")


class Categories(NamedTuple):
    """The four categories of points, as model inputs.

    Attributes:
      train_x: float32 ``[n_train, out*out]``, in ``[0, scale]``.
      train_y: int32 ``[n_train]``, 0 for ``digits[0]`` and 1 for ``digits[1]``.
      test_x: float32 ``[n_test, out*out]``, in ``[0, scale]``.
      test_y: int32 ``[n_test]``, as ``train_y``.
      random1: float32 ``[n_random, out*out]``, each input uniform between its
        minimum and maximum over ``train_x``.
      random2: float32 ``[n_random, out*out]``, uniform on ``[0, scale]``.
      train_index: int64 ``[n_train]``, sorted indices of the chosen digits in
        the training split (to save with a run).
      test_index: int64 ``[n_test]``, the same for the test split.
      per_class_used: ``{"train": (n0, n1), "test": (n0, n1)}``, digits taken
        per class (in the order of ``digits``); below ``per_class`` when a
        split holds fewer.
    """

    train_x: jax.Array
    train_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    random1: jax.Array
    random2: jax.Array
    train_index: np.ndarray
    test_index: np.ndarray
    per_class_used: Mapping[str, tuple[int, int]]


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """Averaging matrix ``[out, size]`` of PyTorch ``AdaptiveAvgPool`` bins.

    Bin ``i`` spans ``[floor(i*size/out), ceil((i+1)*size/out))``; bins may
    overlap by one pixel and together cover every pixel.
    """
    matrix = np.zeros((out, size))
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _check_pool_args(images: np.ndarray, out: int, method: str) -> None:
    if images.ndim != 3:
        raise ValueError(f"avg_pool expects images [N, H, W], got shape {images.shape}.")
    if not isinstance(out, int) or out < 1 or out > min(images.shape[1:]):
        raise ValueError(f"out must be an int in [1, {min(images.shape[1:])}], got {out!r}.")
    if method not in POOLING_METHODS:
        raise ValueError(f"unknown pooling {method!r}; valid: {', '.join(POOLING_METHODS)}.")


def avg_pool(images: np.ndarray, out: int = 6, method: str = "adaptive") -> np.ndarray:
    """Average-pools images to ``out x out`` and flattens them.

    The paper only says the 28x28 images were average-pooled to 6x6; since 28
    is not a multiple of 6 it does not say how. Two choices:

    * ``"adaptive"`` (our default): PyTorch ``AdaptiveAvgPool2d`` bins, row bin
      ``i`` spanning ``[floor(i*28/6), ceil((i+1)*28/6))`` (5 or 6 pixels,
      neighbours overlapping by at most one), likewise for columns. Every pixel
      counts.
    * ``"crop"``: centre-crop to the largest multiple of ``out`` (24x24 for
      28x28), then the mean of each non-overlapping 4x4 block.

    Computed in float64 on the host so the result does not depend on
    accelerator matmul precision.

    Args:
      images: ``[N, H, W]``, any real dtype (e.g. uint8 pixels).
      out: side of the pooled image.
      method: ``"adaptive"`` or ``"crop"``.

    Returns:
      float64 ``[N, out*out]``, row-major over the pooled image.

    Raises:
      ValueError: for images that are not 3-D, a bad ``out`` or an unknown
        method.
    """
    images = np.asarray(images)
    _check_pool_args(images, out, method)
    n, height, width = images.shape
    x = images.astype(np.float64)
    if method == "adaptive":
        rows, cols = _adaptive_matrix(height, out), _adaptive_matrix(width, out)
        pooled = np.einsum("ih,nhw,jw->nij", rows, x, cols)
    else:
        kh, kw = height // out, width // out
        top, left = (height - kh * out) // 2, (width - kw * out) // 2
        crop = x[:, top : top + kh * out, left : left + kw * out]
        pooled = crop.reshape(n, out, kh, out, kw).mean(axis=(2, 4))
    return pooled.reshape(n, out * out)


class CategoryArgumentError(ValueError):
    """An argument of :func:`make_categories` is invalid; ``argument`` names it."""

    def __init__(self, argument: str, value: object, message: str):
        super().__init__(message)
        self.argument, self.value = argument, value


def check_category_args(
    digits: Sequence[int], per_class: int, n_random: int, scale: float, pooling: str
) -> tuple[int, int]:
    """The one check of the category arguments (also run by the config before any data is loaded).

    Returns:
      The two digits as ints.

    Raises:
      CategoryArgumentError: naming the bad argument.
    """

    def is_int(d: object) -> bool:
        return isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_))

    digits = tuple(digits)
    if len(digits) != 2 or not all(is_int(d) and 0 <= d <= 9 for d in digits):
        raise CategoryArgumentError("digits", list(digits), f"digits must be two ints in 0-9, got {digits!r}.")
    if digits[0] == digits[1]:
        raise CategoryArgumentError("digits", list(digits), f"digits must be two distinct digits, got {digits!r}.")
    if not is_int(per_class) or per_class < 1:
        raise CategoryArgumentError("per_class", per_class, f"per_class must be an int >= 1, got {per_class!r}.")
    if not is_int(n_random) or n_random < 1:
        raise CategoryArgumentError("n_random", n_random, f"n_random must be an int >= 1, got {n_random!r}.")
    is_real = isinstance(scale, (int, float, np.integer, np.floating)) and not isinstance(scale, bool)
    if not (is_real and math.isfinite(scale) and scale > 0):
        raise CategoryArgumentError("scale", scale, f"scale must be a finite number > 0, got {scale!r}.")
    if pooling not in POOLING_METHODS:
        raise CategoryArgumentError("pooling", pooling, f"unknown pooling {pooling!r}; valid: {', '.join(POOLING_METHODS)}.")
    return int(digits[0]), int(digits[1])


def _choose(
    labels: np.ndarray, digits: tuple[int, int], per_class: int, key: jax.Array, split: str
) -> tuple[np.ndarray, tuple[int, int]]:
    """Draws up to ``per_class`` indices of each digit without replacement.

    Returns:
      The sorted int64 indices ``[n0 + n1]`` and the counts ``(n0, n1)``.
    """
    chosen, counts = [], []
    for digit, k in zip(digits, jax.random.split(key, len(digits))):
        candidates = np.flatnonzero(np.asarray(labels) == digit)
        if candidates.size == 0:
            raise ValueError(f"the {split} split holds no digit {digit}.")
        n = min(per_class, candidates.size)
        pick = np.asarray(jax.random.choice(k, candidates.size, (n,), replace=False))
        chosen.append(candidates[pick])
        counts.append(n)
    return np.sort(np.concatenate(chosen)).astype(np.int64), (counts[0], counts[1])


def _inputs(
    images: np.ndarray, index: np.ndarray, scale: float, pooling: str
) -> jax.Array:
    """Pooled, scaled inputs float32 ``[len(index), 36]`` in ``[0, scale]``."""
    pooled = avg_pool(np.asarray(images)[index], out=6, method=pooling)
    return jnp.asarray(pooled / 255.0 * scale, dtype=jnp.float32)


def _targets(labels: np.ndarray, index: np.ndarray, digits: tuple[int, int]) -> jax.Array:
    return jnp.asarray(np.asarray(labels)[index] == digits[1], dtype=jnp.int32)


def make_categories(
    splits: MnistSplits,
    *,
    key: jax.Array,
    digits: Sequence[int] = (0, 4),
    per_class: int = 500,
    n_random: int = 1000,
    scale: float = 1.0,
    pooling: str = "adaptive",
) -> Categories:
    """Builds the four categories of points of the paper's MNIST experiment.

    ``train`` and ``test`` take ``per_class`` digits of each of ``digits``,
    drawn without replacement from the training and test split respectively
    (all of them when a split holds fewer; see ``per_class_used``). Images are
    average-pooled to 6x6 (:func:`avg_pool`) and scaled to
    ``pixels / 255 * scale``. ``random1`` draws each of the 36 inputs uniformly
    between its minimum and maximum over the chosen training points;
    ``random2`` draws each uniformly on ``[0, scale]``.

    Args:
      splits: train and test digits, e.g. from :func:`lr_jax.experiment.mnist_io.load_mnist`.
      key: ``jax.random`` key; the only source of randomness (same key, same
        arrays).
      digits: the two distinct digits to classify; label 0 is ``digits[0]``.
      per_class: digits taken per class in each of train and test.
      n_random: points in each of ``random1`` and ``random2``.
      scale: input value of a white (255) pixel.
      pooling: ``"adaptive"`` or ``"crop"``, see :func:`avg_pool`.

    Returns:
      :class:`Categories`, with inputs float32 ``[n, 36]``.

    Raises:
      ValueError: for bad ``digits`` (not two distinct ints in 0-9),
        ``per_class < 1``, ``n_random < 1``, ``scale <= 0``, an unknown
        pooling, or a split holding none of a digit.
    """
    pair = check_category_args(digits, per_class, n_random, scale, pooling)
    k_train, k_test, k_random1, k_random2 = jax.random.split(key, 4)
    train_index, train_counts = _choose(splits.train_labels, pair, per_class, k_train, "train")
    test_index, test_counts = _choose(splits.test_labels, pair, per_class, k_test, "test")
    train_x = _inputs(splits.train_images, train_index, scale, pooling)
    test_x = _inputs(splits.test_images, test_index, scale, pooling)

    shape = (n_random, train_x.shape[1])
    low, high = train_x.min(axis=0), train_x.max(axis=0)
    # low + u * (high - low) can round just past high; keep the range exact.
    random1 = jnp.clip(
        jax.random.uniform(k_random1, shape, minval=low, maxval=high), low, high
    )
    random2 = jax.random.uniform(k_random2, shape, minval=0.0, maxval=scale)
    return Categories(
        train_x=train_x,
        train_y=_targets(splits.train_labels, train_index, pair),
        test_x=test_x,
        test_y=_targets(splits.test_labels, test_index, pair),
        random1=random1,
        random2=random2,
        train_index=train_index,
        test_index=test_index,
        per_class_used={"train": train_counts, "test": test_counts},
    )
