"""Tests of train/core/input_pipeline.py: loading and drop-remainder."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import mock_tfds

from train.core import input_pipeline


@pytest.fixture(scope="module")
def digits():
    return input_pipeline.load("digits")


def test_digits_is_fixed_80_20_split_of_uint8_images(digits):
    assert digits.image_shape == (8, 8, 1)
    assert digits.num_classes == 10
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.train) == 1438
    assert digits.train.images.dtype == np.uint8 and digits.train.labels.dtype == np.int32
    assert digits.train.images.max() == 255 and digits.train.images.min() == 0
    assert digits.version.startswith("scikit-learn ")
    again = input_pipeline.load("digits")
    np.testing.assert_array_equal(again.test.labels, digits.test.labels)
    np.testing.assert_array_equal(again.test.images, digits.test.images)


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)],
)
def test_tfds_datasets_load_into_memory(name, shape, classes):
    with mock_tfds(num_examples=12):
        data = input_pipeline.load(name, "/nonexistent")
    assert data.image_shape == shape
    assert data.num_classes == classes
    assert len(data.train) == 12 and len(data.test) == 12
    assert data.train.images.dtype == np.uint8
    assert data.train.labels.max() < classes
    assert data.version == str(tfds.builder_cls(name).VERSION)


def test_missing_tfds_data_is_a_data_error(tmp_path):
    with pytest.raises(input_pipeline.DataError, match="--data-dir"):
        input_pipeline.load("cifar10", str(tmp_path))


SHARED_MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tfds" / "mnist"


def _mnist_copy(tmp_path, *, shards=("train", "test"), info=None) -> pathlib.Path:
    """A data dir with the prepared MNIST's metadata (``info`` edits dataset_info.json) and
    links to the named record files."""
    version = tfds.builder_cls("mnist").VERSION
    source = SHARED_MNIST / str(version)
    if not source.is_dir():
        pytest.skip(f"no prepared MNIST {version} in {SHARED_MNIST}")
    target = tmp_path / "data" / "mnist" / str(version)
    target.mkdir(parents=True)
    shutil.copy(source / "features.json", target)
    text = (source / "dataset_info.json").read_text()
    (target / "dataset_info.json").write_text(text if info is None else info(json.loads(text)))
    for shard in shards:
        for path in source.glob(f"mnist-{shard}.array_record-*"):
            os.symlink(path, target / path.name)
    return tmp_path / "data"


def _tfrecord(info: dict) -> str:
    return json.dumps({**info, "fileFormat": "tfrecord"})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: _mnist_copy(tmp, shards=("train",)), r"in .*mnist/[\d.]+ cannot be read \("
         r".*\): prepare it again, or point --data-dir at a complete copy"),
        (lambda tmp: _mnist_copy(tmp, info=lambda info: "{"), r"'mnist' in .* cannot be read: "),
        (lambda tmp: _mnist_copy(tmp, info=_tfrecord), r"is in tfrecord format, and jaxpool reads "
         r"array_record: prepare a copy in another data dir \(tfds build mnist"),
    ],
)  # fmt: skip
def test_a_damaged_or_foreign_tfds_data_dir_is_a_data_error_that_says_why(tmp_path, make, message):
    """Each was a traceback from TFDS or array_record (exit 1 from the CLI)."""
    data_dir = make(tmp_path)
    with pytest.raises(input_pipeline.DataError, match=message):
        input_pipeline.load("mnist", str(data_dir))


def test_a_data_dir_that_is_not_one_or_holds_another_version_says_so(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(input_pipeline.DataError, match=r"the data dir .*file is not a directory"):
        input_pipeline.load("mnist", str(a_file))
    (tmp_path / "old" / "mnist" / "0.0.1").mkdir(parents=True)
    version = tfds.builder_cls("mnist").VERSION
    with pytest.raises(
        input_pipeline.DataError,
        match=rf"not prepared in .*old \(it holds version 0\.0\.1; this TFDS reads version "
        rf"{version}; TensorFlow is not installed\)|preparing it failed",
    ):
        input_pipeline.load("mnist", str(tmp_path / "old"))


def test_data_dirs_are_absolute_with_the_home_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert input_pipeline.resolve_data_dir("~/tfds") == str(tmp_path / "tfds")
    assert input_pipeline.resolve_data_dir("rel/") == str(tmp_path / "rel")
    assert (
        input_pipeline.resolve_data_dir("") is None
        and input_pipeline.resolve_data_dir(None) is None
    )
    assert input_pipeline.resolve_data_dir("gs://bucket/tfds") == "gs://bucket/tfds"  # as given


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="mnist, cifar10, cifar100, digits"):
        input_pipeline.load("imagenet")


def test_steps_per_epoch_drops_the_last_partial_batch(digits):
    assert len(digits.train) == 1438
    assert input_pipeline.steps_per_epoch(digits.train, 64) == 22
    assert input_pipeline.steps_per_epoch(digits.train, 1438) == 1
    assert input_pipeline.steps_per_epoch(digits.train, 1439) == 0


def test_channel_stats_are_per_channel(digits):
    mean, std = input_pipeline.channel_stats(digits.train)
    assert mean.shape == (1,) and std.shape == (1,)
    assert 0.0 < mean[0] < 1.0 and std[0] > 0.0


def test_channel_stats_in_chunks_equal_the_whole_split_in_float64():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 5, 4, 3), np.uint8)
    images[..., 2] = 7  # a constant channel: std 0, kept at 1e-6
    split = input_pipeline.Split(images, np.zeros(37, np.int32))
    x = images.astype(np.float64) / 255.0
    for chunk in (1, 8, 37, 100):
        mean, std = input_pipeline.channel_stats(split, chunk=chunk)
        np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-7)
        np.testing.assert_allclose(std, np.maximum(x.std(axis=(0, 1, 2)), 1e-6), rtol=1e-6)
        assert mean.dtype == std.dtype == np.float32
