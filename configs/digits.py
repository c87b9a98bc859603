r"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the offline demo and test dataset.

No download: the images ship with scikit-learn. The split is a fixed 80/20 (1438 train, 359 test).
8x8 inputs pool to 4x4, 2x2 and 1x1 through the three 2x2 pool slots. Run (about 10 s on a
laptop CPU, >= 90% test accuracy with max pooling)::

  python -m train.main --dataset digits --pooler max
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Returns the digits configuration (see configs/default.py for every field)."""
    config = default.get_config()
    # Built-in dataset, no data dir needed.
    config.dataset = "digits"
    # 1438 training images are 22 steps per epoch at batch 64: more epochs than the reference's
    # 10 to converge.
    config.num_epochs = 20
    return config
