r"""MNIST (TFDS ``mnist``, 28x28x1, 10 classes) with the reference settings.

Run::

  python -m train.main --config configs/mnist.py --data-dir DIR --config.pooler=tdgs
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the MNIST configuration (the defaults; see configs/default.py for every field)."""
    config = default.get_config()
    # TFDS name of the dataset.
    config.dataset = "mnist"
    return config
