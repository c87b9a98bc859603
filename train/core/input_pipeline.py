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
import os
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
      version: what was read: the TFDS dataset's version (``3.0.1``), or the scikit-learn
        release whose digits these are.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    version: str = ""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def load(name: str, data_dir: str | None = None, *, digits_seed: int = 0) -> Dataset:
    """Reads both splits of ``name`` into memory.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: TFDS data dir (ignored for ``digits``; see :func:`resolve_data_dir`); ``None``
        means the TFDS default.
      digits_seed: seed of the fixed 80/20 split of scikit-learn's digits.

    Returns:
      A :class:`Dataset`.

    Raises:
      ValueError: unknown dataset name.
      DataError: the TFDS dataset is not prepared and cannot be prepared here, or cannot be read
        (not a directory, another file format, missing or damaged files); the message is one
        line that says which.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "digits":
        return _load_digits(digits_seed)
    return _load_tfds(name, resolve_data_dir(data_dir))


def _load_digits(seed: int) -> Dataset:
    import sklearn
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
        version=f"scikit-learn {sklearn.__version__}",
    )


def resolve_data_dir(data_dir: str | None) -> str | None:
    """``data_dir`` as it is used and saved: ``None`` (or an empty string) for TFDS's default, a
    URL (``gs://...``) as given, else the absolute path with ``~`` expanded, so a run's saved
    config finds its data from any directory (TFDS itself expands neither)."""
    if data_dir is None or not str(data_dir).strip():
        return None
    if "://" in str(data_dir):
        return str(data_dir)
    return os.path.abspath(os.path.expanduser(str(data_dir)))


def _first_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    # TensorStore and TFDS append reprs of bound methods and file specs: noise in one line.
    first = first.split(" See full TensorStore details")[0]
    return first if len(first) <= 160 else first[:157] + "..."


def _where(builder: Any, data_dir: str | None) -> str:
    return data_dir if data_dir is not None else f"TFDS's default {builder.data_dir_root}"


def _prepare_hint(name: str, where: str, reason: str) -> str:
    return (
        f"dataset {name!r} is not prepared in {where} ({reason}): point --data-dir at a TFDS "
        "data dir holding it, or run once with network access and TensorFlow (jaxpool's "
        "'prepare' extra: pip install '.[prepare]' in a checkout)"
    )


def _why_not_prepared(builder: Any, name: str) -> str:
    """What the data dir holds instead of a prepared ``name`` at TFDS's version."""
    folder = os.path.join(builder.data_dir_root, name)
    if not os.path.isdir(folder):
        return f"no folder {folder}"
    try:
        versions = sorted(v for v in os.listdir(folder) if v[:1].isdigit())
    except OSError as e:
        return f"{folder} cannot be read: {e.strerror or e}"
    if str(builder.version) not in versions:
        held = f"it holds version {', '.join(versions)}; " if versions else ""
        return f"{held}this TFDS reads version {builder.version}"
    if not os.access(builder.data_dir, os.R_OK | os.X_OK):
        return f"{builder.data_dir} cannot be read: permission denied"
    return f"{builder.data_dir} lacks its dataset_info.json"


def check(name: str, data_dir: str | None = None) -> None:
    """Whether :func:`load` can read ``name`` from ``data_dir``, without reading it: a sweep asks
    before its first run.  A dataset that is not prepared passes where TensorFlow is installed
    (:func:`load` then tries to prepare it).

    Raises:
      ValueError: unknown dataset name.
      DataError: as :func:`load` would, for what can be told from the folders and metadata.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name != "digits":
        import tensorflow_datasets as tfds

        _prepared_builder(tfds, name, resolve_data_dir(data_dir), prepare=False)


def _prepared_builder(tfds: Any, name: str, data_dir: str | None, *, prepare: bool = True):
    """The TFDS builder of ``name`` in ``data_dir``, prepared (where ``prepare`` and TensorFlow
    allow) and in array_record form; :class:`DataError` saying why not."""
    if data_dir is not None and os.path.isfile(data_dir):
        raise DataError(f"the data dir {data_dir} is not a directory")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # e.g. an unreadable dataset_info.json
        _unless_interrupted(e)
        where = data_dir if data_dir is not None else "TFDS's default data dir"
        raise DataError(f"dataset {name!r} in {where} cannot be read: {_first_line(e)}") from e
    if not prepared:
        reason = _why_not_prepared(builder, name)
        if importlib.util.find_spec("tensorflow") is None:
            where = _where(builder, data_dir)
            raise DataError(_prepare_hint(name, where, f"{reason}; TensorFlow is not installed"))
        if not prepare:
            return builder
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as e:  # network, disk, TFDS: all mean "prepare it elsewhere"
            _unless_interrupted(e)
            where = _where(builder, data_dir)
            reason = f"preparing it failed: {_first_line(e)}"
            raise DataError(_prepare_hint(name, where, reason)) from e
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
        raise DataError(
            f"dataset {name!r} in {builder.data_dir} is in {file_format} format, and jaxpool reads "
            f"array_record: prepare a copy in another data dir (tfds build {name} "
            "--file_format=array_record --data_dir DIR) and point --data-dir at it"
        )
    return builder


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
    import tensorflow_datasets as tfds

    builder = _prepared_builder(tfds, name, data_dir)
    try:
        num_classes = int(builder.info.features["label"].num_classes)
        splits = [
            _read_split(tfds.data_source(name, split=split, data_dir=data_dir, download=False))
            for split in ("train", "test")
        ]
    except Exception as e:  # missing, cut or unreadable record files
        _unless_interrupted(e)
        raise DataError(
            f"dataset {name!r} in {builder.data_dir} cannot be read ({_first_line(e)}): prepare "
            "it again, or point --data-dir at a complete copy"
        ) from e
    version = str(builder.version)
    return Dataset(name, train=splits[0], test=splits[1], num_classes=num_classes, version=version)


def _unless_interrupted(e: Exception) -> None:
    """A Ctrl-C that a library turned into its own error stops the command, as Ctrl-C does."""
    from train.core import interrupts

    if interrupts.received():
        raise KeyboardInterrupt from e


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


def channel_stats(split: Split, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``split`` after scaling to [0, 1], in float64
    (two passes, ``chunk`` images at a time: a float64 copy of CIFAR's training split would
    take 1.2 GB)."""
    images = split.images
    count = images.shape[0] * images.shape[1] * images.shape[2]
    parts = range(0, images.shape[0], chunk)
    total = sum(images[i : i + chunk].sum(axis=(0, 1, 2), dtype=np.float64) for i in parts)
    mean = total / (255.0 * count)
    squares = sum(
        np.square(images[i : i + chunk] / 255.0 - mean).sum(axis=(0, 1, 2)) for i in parts
    )
    std = np.maximum(np.sqrt(squares / count), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Number of full training batches; the last partial batch is dropped."""
    return len(split) // batch_size
