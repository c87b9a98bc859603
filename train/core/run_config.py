"""A run's config, checked before anything is loaded or compiled, and the run description derived
from it once (:class:`RunSpec`: what the loop, the model and the run files read instead of the
config); also the persistent compilation cache.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import jaxpool
from train import cli
from train.core import input_pipeline, models

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value is invalid; the message says which and what is allowed."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run, described once from a validated config and its dataset (:func:`describe`).

    Hashable, so equal runs share compiled programs (it is part of their cache keys).

    Attributes:
      dataset, pooler, seed, learning_rate, num_epochs, standardize, data_dir: the config's.
      pooler_kwargs_json: the pooler's keyword arguments as canonical JSON (sorted keys).
      batch_size: global training batch size.
      eval_batch_size: global evaluation batch size (the config's, or ``batch_size``).
      microbatches: micro-batches per training step (:func:`microbatches_for`).
      steps_per_epoch: training steps per epoch (the last partial batch is dropped).
      chunk_length: steps per compiled chunk (``steps_per_chunk``, at most an epoch).
      stop_after_epochs: stop (resumably) after this many epochs; equals ``num_epochs`` when the
        config says 0 (never).
      checkpoints_to_keep, progress, implementation: the config's.
      image_shape: ``(H, W, C)`` of one example.
      num_classes: number of labels.
      num_train: training examples.
    """

    dataset: str
    pooler: str
    pooler_kwargs_json: str
    seed: int
    learning_rate: float
    num_epochs: int
    standardize: bool
    data_dir: str | None
    batch_size: int
    eval_batch_size: int
    microbatches: int
    steps_per_epoch: int
    chunk_length: int
    stop_after_epochs: int
    checkpoints_to_keep: int
    progress: bool
    implementation: str
    image_shape: tuple[int, ...]
    num_classes: int
    num_train: int

    @property
    def pooler_kwargs(self) -> dict[str, Any]:
        """The pooler's keyword arguments (a fresh dict)."""
        return json.loads(self.pooler_kwargs_json)


def pooler_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``config.pooler_kwargs`` as a plain dict (read by :func:`validate_config` and
    :func:`describe`; everything after them reads :attr:`RunSpec.pooler_kwargs`)."""
    kwargs = config.pooler_kwargs
    if isinstance(kwargs, ml_collections.ConfigDict):
        return kwargs.to_dict()
    return dict(kwargs)


def describe(
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, ...],
    num_classes: int,
    num_train: int,
) -> RunSpec:
    """Describes the run of ``config`` on a dataset, after checking its model on the dataset's
    examples (:func:`validate_model`).

    Args:
      config: the run's config, accepted by :func:`validate_config`.
      image_shape: ``(H, W, C)`` of the dataset's examples.
      num_classes: number of labels.
      num_train: training examples.

    Raises:
      ConfigError: a pooler that does not fit the images, or a batch larger than the training
        split.
    """
    kwargs = pooler_kwargs(config)
    steps = num_train // config.batch_size
    if steps == 0:
        raise ConfigError(
            f"batch size {config.batch_size} exceeds the {num_train} training examples of "
            f"{config.dataset}"
        )
    validate_model(config, tuple(image_shape), num_classes)
    return RunSpec(
        dataset=config.dataset,
        pooler=config.pooler,
        pooler_kwargs_json=json.dumps(kwargs, sort_keys=True),
        seed=config.seed,
        learning_rate=float(config.learning_rate),
        num_epochs=config.num_epochs,
        standardize=bool(config.standardize),
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size or config.batch_size,
        microbatches=microbatches_for(
            config.batch_size // jax.device_count(),
            config.microbatch_size,
            jax.devices()[0].platform,
        ),
        steps_per_epoch=steps,
        chunk_length=min(config.steps_per_chunk, steps),
        stop_after_epochs=config.stop_after_epochs or config.num_epochs,
        checkpoints_to_keep=config.checkpoints_to_keep,
        progress=bool(config.progress),
        implementation=config.implementation,
        image_shape=tuple(image_shape),
        num_classes=num_classes,
        num_train=num_train,
    )


def enable_compilation_cache(path: str | None = None) -> str:
    """Turns on JAX's persistent compilation cache, so a rerun of a config skips compilation.

    The directory is ``path``, else ``$JAX_COMPILATION_CACHE_DIR`` (JAX's own variable), else
    ``~/.cache/jaxpool/xla``. Every compiled program is kept, however fast it compiled.

    Returns:
      The cache directory, or "" when it cannot be written (the run goes on without it, and
      without the one ``$JAX_COMPILATION_CACHE_DIR`` names).
    """
    path = (
        path
        or os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or os.path.join(os.path.expanduser("~"), ".cache", "jaxpool", "xla")
    )
    try:
        path.encode("utf-8")  # XLA takes no other path (a HOME of undecodable bytes)
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".jaxpool-probe-{os.getpid()}")  # writable, not only there
        with open(probe, "w"):
            pass
        os.remove(probe)
    except (OSError, UnicodeEncodeError) as e:  # a read-only home: run without the cache
        reason = "not valid UTF-8" if isinstance(e, UnicodeEncodeError) else e.strerror or e
        logger.warning("compilation cache disabled: cannot write to %r (%s)", path, reason)
        jax.config.update("jax_compilation_cache_dir", None)  # JAX reads its variable itself
        return ""
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every field cheaply (no data, no compilation), and that JAX is not in 64-bit mode.

    Raises:
      ConfigError: naming the field, its value and what is allowed.
    """

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    check_fields(config)
    need(
        not jax.config.jax_enable_x64,
        "JAX_ENABLE_X64 is on: the CNN trains in float32 with 32-bit counters, and 64-bit mode "
        "changes its numbers (and breaks its step on CPU); unset JAX_ENABLE_X64 for this command",
    )
    names = jaxpool.available()
    need(
        config.pooler in names,
        f"unknown pooler {config.pooler!r}; choose one of: {', '.join(names)}",
    )
    need(
        config.implementation in IMPLEMENTATIONS,
        f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {config.implementation!r}",
    )
    need(
        config.dataset in input_pipeline.DATASETS,
        f"unknown dataset {config.dataset!r}; choose one of: {', '.join(input_pipeline.DATASETS)}",
    )
    # (field, smallest allowed value, how the message names it, what 0 means if allowed)
    for field, low, label, zero in (
        ("batch_size", 1, "batch size", ""),
        ("eval_batch_size", 0, "eval_batch_size", " (0 = batch size)"),
        ("num_epochs", 1, "epochs", ""),
        ("seed", 0, "seed", ""),
        ("checkpoints_to_keep", 1, "checkpoints_to_keep", ""),
        ("stop_after_epochs", 0, "stop_after_epochs", " (0 = never)"),
        ("steps_per_chunk", 1, "steps_per_chunk", ""),
        ("microbatch_size", 0, "microbatch_size", " (0 = automatic)"),
    ):
        value = config[field]
        kind = "a positive integer" if low else f"an integer >= 0{zero}"
        need(is_int(value) and value >= low, f"{label} must be {kind}, got {value!r}")
    # jax.random.key(seed) keeps 32 bits: 2**32 would silently repeat seed 0.
    need(config.seed < 2**32, f"seed must be below 2**32 = {2**32}, got {config.seed!r}")
    lr = config.learning_rate
    need(
        isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0,
        f"learning rate must be a positive finite number, got {lr!r}",
    )
    # Adam computes in float32: 1e-320 became 0 there (a run that never trained), 1e39 inf.
    low, high = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    need(
        low <= lr <= high,
        f"learning rate must be between {low:.4g} and {high:.4g} (float32's normal numbers, "
        f"which Adam computes in), got {lr!r}",
    )
    kwargs = config.pooler_kwargs
    need(
        isinstance(kwargs, Mapping | ml_collections.ConfigDict),
        f"pooler_kwargs must be a mapping of keyword arguments, got {kwargs!r}",
    )
    parsed = pooler_kwargs(config)
    loop_set = sorted(set(parsed) & set(_LOOP_FIELDS))
    need(
        not loop_set,
        f"pooler_kwargs cannot set {', '.join(loop_set)}: the training loop sets "
        "deterministic (training mode in train steps, deterministic evaluation) and feeds the "
        "poolers' rng stream 'pooling'",
    )
    try:
        jaxpool.create(config.pooler, **parsed)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"bad pooler_kwargs {parsed!r} for pooler {config.pooler!r}: {cli.first_line(e)}"
        ) from e
    _check_initializers(config.pooler, parsed)
    n = jax.device_count()
    for field in ("batch_size", "eval_batch_size"):
        size = config[field]
        need(
            size % n == 0,
            f"{field.replace('_', ' ')} {size} does not divide by the {n} devices JAX sees; "
            f"use a multiple of {n}",
        )
    per_device = config.batch_size // n
    need(
        not config.microbatch_size or per_device % config.microbatch_size == 0,
        f"microbatch_size {config.microbatch_size} does not divide the per-device batch of "
        f"{per_device} examples; use a divisor of it, or 0 for automatic",
    )


def validate_model(
    config: ml_collections.ConfigDict, image_shape: tuple[int, ...], num_classes: int
) -> None:
    """Traces the CNN's init and both modes of its forward pass on one example of
    ``image_shape`` (abstractly: nothing is computed or compiled).

    A pooler that fails on a pool slot's input (a window larger than the input with ``'VALID'``
    padding, ``tau <= 0``, an unknown ``per``, reflect padding on a map too small for it) is then a
    :class:`ConfigError` before the run writes anything: naming the bad ``pooler_kwargs`` where
    the pooler's defaults would fit, or where the kwargs fail on a large image that the defaults
    fit, else saying that the pooler does not fit the dataset's images.  Defaults that fail on a large image too are a bug: that
    error propagates with its traceback.
    """
    kwargs = pooler_kwargs(config)  # validate_config accepted them: a plain dict
    shape = "x".join(map(str, image_shape))
    try:
        _trace_cnn(config.pooler, kwargs, image_shape, num_classes)
    except (TypeError, ValueError) as e:
        large = (*LARGE_IMAGE, image_shape[-1])
        defaults_fit_large = _fits(config.pooler, {}, large, num_classes)
        if kwargs and (
            _fits(config.pooler, {}, image_shape, num_classes)
            or (defaults_fit_large and not _fits(config.pooler, kwargs, large, num_classes))
        ):  # the kwargs are wrong here, or on any image where the defaults fit
            raise ConfigError(
                f"bad pooler_kwargs {kwargs!r} for pooler {config.pooler!r} in the CNN for "
                f"{config.dataset} (input {shape}): {cli.first_line(e)}"
            ) from e
        if not defaults_fit_large:
            raise  # the pooler's defaults fail on any image: a bug, with its traceback
        # e.g. blur's reflect padding on the 2x2 maps that 8x8 digits leave after two pools
        raise ConfigError(
            f"pooler {config.pooler!r} does not fit the CNN for {config.dataset} (input {shape}): "
            f"{cli.first_line(e)}"
        ) from e


def _check_initializers(pooler: str, kwargs: dict) -> None:
    """A layer's ``*_init`` argument is an initializer (a function of key, shape, dtype); a
    config's JSON cannot hold one.  A number there failed deep in ``init`` ("'int' object is not
    callable")."""
    for name, value in kwargs.items():
        if name.endswith("_init") and not callable(value):
            raise ConfigError(
                f"pooler_kwargs {name}={value!r} for pooler {pooler!r}: {name} takes an "
                "initializer (a function of key, shape and dtype, e.g. "
                "flax.linen.initializers.constant(3.0)), which a config or the command line "
                "cannot give; set it in Python, or leave it at its default"
            )


# An image size every registered pooler's defaults fit: telling "too small" from a bug.
LARGE_IMAGE = (64, 64)


def _fits(pooler: str, kwargs: dict, image_shape: tuple[int, ...], num_classes: int) -> bool:
    try:
        _trace_cnn(pooler, kwargs, image_shape, num_classes)
    except (TypeError, ValueError):
        return False
    return True


def _trace_cnn(pooler: str, kwargs: dict, image_shape: tuple[int, ...], num_classes: int) -> None:
    """Traces the CNN's init (training mode) and its deterministic forward pass on one example."""
    model = models.CNN(num_classes=num_classes, pooler=pooler, pooler_kwargs=kwargs)

    def trace():
        x = jnp.zeros((1, *image_shape), jnp.float32)
        rngs = {"params": jax.random.key(0), "pooling": jax.random.key(1)}
        variables = model.init(rngs, x, deterministic=False)
        return model.apply(variables, x, deterministic=True)

    jax.eval_shape(trace)


def check_fields(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the fields of ``configs/default.py`` that ``config`` lacks."""
    missing = [field for field in _default_config() if field not in config]
    if missing:
        raise ConfigError(
            f"the config lacks field(s) {', '.join(missing)}; start from configs/default.py"
        )


@functools.cache
def _default_config() -> ml_collections.ConfigDict:
    return cli.bundled_config("default")


IMPLEMENTATIONS = ("auto", "reference", "fast")

# Module fields the training loop sets itself, which pooler_kwargs may not set.
_LOOP_FIELDS = ("deterministic", "rng_collection")

MICROBATCH_TARGET_CPU = 32  # examples per micro-batch on CPU (measured: 32-64 fit the caches)


def microbatches_for(per_device_batch: int, microbatch_size: int, platform: str) -> int:
    """How many micro-batches one step of ``per_device_batch`` examples is split into.

    Args:
      per_device_batch: global batch size / device count.
      microbatch_size: the config field: 0 = automatic (CPU: about
        ``MICROBATCH_TARGET_CPU`` examples, the largest split into equal micro-batches of at
        least that many; GPU/TPU: no split), else examples per micro-batch, which must divide
        ``per_device_batch``.
      platform: ``jax.devices()[0].platform``.

    Raises:
      ConfigError: ``microbatch_size`` does not divide ``per_device_batch``.
    """
    if microbatch_size:
        if per_device_batch % microbatch_size:
            raise ConfigError(
                f"microbatch_size {microbatch_size} does not divide the per-device batch of "
                f"{per_device_batch} examples; use a divisor of it, or 0 for automatic"
            )
        return per_device_batch // microbatch_size
    if platform != "cpu":
        return 1
    m = max(1, per_device_batch // MICROBATCH_TARGET_CPU)
    while per_device_batch % m:
        m -= 1
    return m
