r"""Default configuration: the reference study's CNN on MNIST with Adam 1e-3, batch 64, 10 epochs.

Run it (every field can be overridden the same way)::

  python -m train.main --config configs/default.py --config.pooler=tdgs --config.num_epochs=3

The shortcut flags of ``train.main`` (``--pooler``, ``--dataset``, ``--epochs``, ``--batch-size``,
``--learning-rate``, ``--seed``, ``--data-dir``, ``--pooler-kwargs``) win over the config file.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the default training configuration."""
    config = ml_collections.ConfigDict()
    # Dataset: one of mnist | cifar10 | cifar100 | digits (scikit-learn's bundled 8x8 digits).
    config.dataset = "mnist"
    # TFDS data dir holding the dataset in array_record form; None = TFDS default
    # (~/tensorflow_datasets). Ignored for digits.
    config.data_dir = ml_collections.config_dict.placeholder(str)
    # Pooler in every pool slot of the CNN: a name from jaxpool.available().
    config.pooler = "max"
    # Keyword arguments for jaxpool.create(pooler, **pooler_kwargs), e.g. {"tau": 0.5}.
    config.pooler_kwargs = {}
    # Optimiser: Adam (optax) with this constant learning rate.
    config.learning_rate = 1e-3
    # Global batch size over all devices and hosts; must divide by the device count.
    config.batch_size = 64
    # Evaluation batch size; 0 = same as batch_size. Must divide by the device count.
    config.eval_batch_size = 0
    # Number of passes over the training split.
    config.num_epochs = 10
    # Seed of parameter init, per-step pooling keys (fold_in(key, step)) and the data order;
    # an integer in [0, 2**32).
    config.seed = 0
    # Standardise inputs per channel with train-split mean/std after scaling to [0, 1].
    config.standardize = False
    # Checkpoints kept in <workdir>/checkpoints (one is written at the end of every epoch).
    config.checkpoints_to_keep = 3
    # Stop (as if interrupted, checkpoint kept) after this many epochs in total; 0 = never.
    # Rerunning with stop_after_epochs=0 resumes; used to test and to split long runs.
    config.stop_after_epochs = 0
    # Training steps per compiled program: each epoch runs as chunks of this many steps on the
    # devices (data resident there); signals, progress and the loss check act between chunks.
    config.steps_per_chunk = 50
    # Examples per micro-batch: each step's gradient is the mean over equal micro-batches run one
    # after the other (the same update up to rounding). 0 = automatic: about 32 on CPU, where
    # small activations stay in cache (faster), none on GPU/TPU. Must divide the per-device batch.
    config.microbatch_size = 0
    # Which code computes the CNN's convolutions and poolers: "auto" (a fast path only where it was
    # measured faster: XLA:CPU), "reference" (plain lax ops, JAX's autodiff) or "fast". The same
    # parameters either way; pooler_kwargs may set the poolers' own.
    config.implementation = "auto"
    # Show a tqdm progress bar per epoch (only when stderr is a terminal).
    config.progress = True
    return config
