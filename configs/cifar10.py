r"""CIFAR-10 (TFDS ``cifar10``, 32x32x3, 10 classes) with the reference settings.

Run::

  python -m train.main --config configs/cifar10.py --config.pooler=mixed --data-dir ~/tfds
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the CIFAR-10 configuration (see configs/default.py for every field)."""
    config = default.get_config()
    # TFDS name of the dataset.
    config.dataset = "cifar10"
    return config
