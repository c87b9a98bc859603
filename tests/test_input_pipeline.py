"""Tests of train/core/input_pipeline.py: loading and drop-remainder."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_missing_tfds_data_is_a_data_error(tmp_path):
    with pytest.raises(input_pipeline.DataError, match="--data-dir"):
        input_pipeline.load("cifar10", str(tmp_path))


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
