"""Datasets as in-memory uint8 arrays, shuffled per epoch and batched onto a device mesh.

Every supported dataset is small enough to hold in memory, so each split is read once into a
:class:`Split` (``images`` uint8 ``(N, H, W, C)``, ``labels`` int32 ``(N,)``). Training reads the
whole split onto the devices and shuffles there (:mod:`train.core.device_loop`). Evaluation batches
cover every example exactly once: the last batch is padded and carries a ``mask``; they are
global arrays sharded over the mesh axis ``"data"``, each process materialising only its own rows
(``jax.make_array_from_process_local_data``), so the same code serves one device, many devices
and many hosts.

TFDS datasets are read with ``tfds.data_source`` (array_record; TensorFlow is not needed to read).
Preparing a dataset that is not on disk yet needs TensorFlow and the network.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import numpy as np

DATASETS = ("mnist", "cifar10", "cifar100", "digits")
_TFDS_CHUNK = 4096  # records per batched read; bounds peak memory of decoded dicts


class DataError(RuntimeError):
    """The dataset cannot be read (not prepared, and cannot be prepared here)."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split held in memory.

    Attributes:
      images: uint8 array ``(N, H, W, C)``.
      labels: int32 array ``(N,)``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits plus what the model needs to know about them.

    Attributes:
      name: dataset name, one of :data:`DATASETS`.
      train: the training split.
      test: the evaluation split.
      num_classes: number of label classes.
    """

    name: str
    train: Split
    test: Split
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def load(name: str, data_dir: str | None = None, *, digits_seed: int = 0) -> Dataset:
    """Reads both splits of ``name`` into memory.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: TFDS data dir (ignored for ``digits``); ``None`` means the TFDS default.
      digits_seed: seed of the fixed 80/20 split of scikit-learn's digits.

    Returns:
      A :class:`Dataset`.

    Raises:
      ValueError: unknown dataset name.
      DataError: the TFDS dataset is not prepared and cannot be prepared here.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "digits":
        return _load_digits(digits_seed)
    return _load_tfds(name, data_dir)


def _load_digits(seed: int) -> Dataset:
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    # Pixel values are integers 0..16; rescale to the 0..255 range of every other dataset.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_train = round(0.8 * len(labels))
    tr, te = order[:n_train], order[n_train:]
    return Dataset(
        name="digits",
        train=Split(images[tr], labels[tr]),
        test=Split(images[te], labels[te]),
        num_classes=10,
    )


def _prepare_hint(name: str, data_dir: str | None, reason: str) -> str:
    where = data_dir if data_dir is not None else "~/tensorflow_datasets (TFDS's default)"
    return (
        f"dataset {name!r} is not prepared in {where} ({reason}): point --data-dir at a TFDS "
        f"data dir holding it, or run once with network access after pip install '.[prepare]'"
    )


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if importlib.util.find_spec("tensorflow") is None:
            raise DataError(_prepare_hint(name, data_dir, "TensorFlow is not installed"))
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as e:  # network, disk, TFDS: all mean "prepare it elsewhere"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if len(first) > 100:
                first = first[:97] + "..."
            raise DataError(_prepare_hint(name, data_dir, f"preparing it failed: {first}")) from e
    num_classes = int(builder.info.features["label"].num_classes)
    train = _read_split(tfds.data_source(name, split="train", data_dir=data_dir, download=False))
    test = _read_split(tfds.data_source(name, split="test", data_dir=data_dir, download=False))
    return Dataset(name=name, train=train, test=test, num_classes=num_classes)


def _read_split(source: Any) -> Split:
    n = len(source)
    images, labels = [], []
    for start in range(0, n, _TFDS_CHUNK):
        keys = list(range(start, min(start + _TFDS_CHUNK, n)))
        try:
            records = source.__getitems__(keys)
        except TypeError:
            # tfds.testing.mock_data's source has no working batched read; fall back to one by one.
            records = [source[k] for k in keys]
        images.append(np.stack([np.asarray(r["image"], np.uint8) for r in records]))
        labels.append(np.asarray([r["label"] for r in records], np.int32))
    return Split(np.concatenate(images), np.concatenate(labels))


def channel_stats(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``split`` after scaling to [0, 1]."""
    x = split.images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = np.maximum(x.std(axis=(0, 1, 2)), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Number of full training batches; the last partial batch is dropped."""
    return len(split) // batch_size
