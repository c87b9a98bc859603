r"""CIFAR-100 (TFDS ``cifar100``, 32x32x3, 100 fine labels) with the reference settings.

Run::

  python -m train.main --config configs/cifar100.py --config.pooler=gated --data-dir ~/tfds
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the CIFAR-100 configuration (see configs/default.py for every field)."""
    config = default.get_config()
    # TFDS name of the dataset; the CNN's last layer gets 100 outputs from its label feature.
    config.dataset = "cifar100"
    return config
