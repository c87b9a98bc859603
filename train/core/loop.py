"""Training and evaluation of the standard CNN with a registry pooler.

``train_and_evaluate(config, workdir)`` runs (or resumes) a whole run and returns the metrics of the
last epoch. Data-parallel over every device JAX sees: a 1-D mesh ``"data"``, batches sharded along
it, parameters and optimizer state replicated. Keys: ``key(seed)`` is split into init and train
keys; step ``s`` uses ``fold_in(train_key, s)`` on the rng stream ``"pooling"``; evaluation is
deterministic. The training split lives on the devices and each epoch runs as compiled chunks of
``steps_per_chunk`` steps (see :mod:`train.core.device_loop`); the host only sums the per-step losses.

Files written to ``workdir`` (by process 0):

- ``config.json``: the config as a dict (a rerun with different run-defining fields is refused
  once the run has a checkpoint or a finished epoch; before that, the new config starts over).
- ``checkpoints/``: orbax checkpoints (end of every epoch, and on SIGINT/SIGTERM).
- ``metrics.jsonl``: one JSON object per finished epoch, keys:

  - ``epoch`` (int, 1-based), ``step`` (int, global train steps done),
  - ``train_loss``, ``train_accuracy`` (means over the epoch's training examples; accuracies
    are fractions in [0, 1]),
  - ``test_loss``, ``test_accuracy`` (over every test example exactly once),
  - ``train_seconds``, ``eval_seconds``, ``epoch_seconds`` (= train + eval),
    ``images_per_second`` (training images / train_seconds), and ``includes_startup``: true for
    the first epoch each call of this function trains (of a new or a resumed run), whose time
    may include compiling the step or loading it from the cache.

- ``pooler_params.json``: the learned pooler parameters in readable form (see
  :func:`train.core.models.pooler_report`), rewritten every epoch.
- ``summary.json``: written when the run ends, keys: ``status`` (``"done"``, ``"stopped"`` by
  ``stop_after_epochs``, ``"interrupted"`` by a signal, ``"failed"`` on a non-finite loss),
  ``dataset``, ``pooler``, ``pooler_kwargs``, ``seed``, ``num_epochs`` (configured),
  ``epochs_completed``, ``final`` (the last ``metrics.jsonl`` object, or null),
  ``best_test_accuracy``, ``best_epoch``, ``param_count``, ``pooler_param_count``,
  ``num_devices``, ``num_processes``,
  ``workdir``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from train.core import checkpointing, device_loop, input_pipeline, models, run_files, run_metrics
from train.core.run_config import ConfigError, config_microbatches, validate_config, validate_model
from train.core.steps import (
    TrainState,
    create_train_state,
    eval_step,
    pooler_kwargs,
    preprocess,
    step_fn,
)

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the run can be resumed."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


# --------------------------------------------------------------------------- keys and steps


def _seed_keys(seed: int, sharding: jax.sharding.Sharding) -> tuple[jax.Array, jax.Array]:
    """(init key, train key) from ``seed``, replicated on ``sharding``'s mesh."""
    return jax.jit(lambda: tuple(jax.random.split(jax.random.key(seed))), out_shardings=sharding)()


def _run_chunk(
    state, data, order, first, count, rng, mean, std, *, batch_size, length, sharding, microbatches
):
    """Steps ``first .. first + count - 1`` of an epoch as one program (the state is donated)."""
    images, labels = data
    return device_loop.train_chunk(
        state,
        images,
        labels,
        order,
        np.int32(first),
        np.int32(count),
        rng,
        mean,
        std,
        step_fn=step_fn(microbatches),
        batch_size=batch_size,
        length=length,
        batch_sharding=sharding,
    )


def evaluate(
    state: TrainState,
    test_data: tuple[jax.Array, jax.Array, jax.Array],
    batch_size: int,
    sharding: jax.sharding.Sharding,
    mean: jax.Array | None = None,
    std: jax.Array | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy over every example of a split, each counted exactly once.

    Args:
      state: the train state (replicated).
      test_data: the split on the devices, from ``device_loop.put_eval_split(split, batch_size,
        replicated)``.
      batch_size: global evaluation batch size (a multiple of the device count).
      sharding: batch sharding, ``NamedSharding(mesh, P("data"))``.
      mean: per-channel input mean when standardising, else None.
      std: per-channel input standard deviation when standardising, else None.

    Returns:
      ``{"loss": mean cross-entropy, "accuracy": fraction correct}``.
    """
    sums = device_loop.evaluate_split(
        state, *test_data, mean, std, eval_fn=eval_step, batch_size=batch_size,
        batch_sharding=sharding,
    )  # fmt: skip
    totals = {k: float(np.sum(np.asarray(v, np.float64))) for k, v in jax.device_get(sums).items()}
    return {
        "loss": totals["loss_sum"] / totals["count"],
        "accuracy": totals["correct"] / totals["count"],
    }


# --------------------------------------------------------------------------- signals


@contextlib.contextmanager
def _catch_signals():
    """Records SIGINT/SIGTERM in a list instead of dying, while the block runs."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}

    def handler(signum, frame):
        del frame
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------- the loop


PROBE_IMAGES = 64  # test images on which pooler_params.json describes LIP's importance logits


def _report_inputs(config, state, data, mean, std) -> dict[str, jax.Array] | None:
    """The pool slots' inputs on the first test images, for poolers whose report needs them."""
    if config.pooler != "lip":
        return None
    model = models.CNN(data.num_classes, config.pooler, pooler_kwargs(config))
    images = preprocess(jax.numpy.asarray(data.test.images[:PROBE_IMAGES]), mean, std)
    return models.pool_inputs(model, state.params, images)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    data: input_pipeline.Dataset | None = None,
) -> dict[str, Any]:
    """Trains and evaluates, resuming from ``<workdir>/checkpoints`` when a checkpoint exists.

    Args:
      config: see ``configs/default.py``.
      workdir: output directory (created).
      on_epoch: called with each epoch's metrics dict (the CLI prints its summary line there).
      data: ``config.dataset`` already in memory (a sweep loads each dataset once); None reads it
        with ``input_pipeline.load``.

    Returns:
      The metrics dict of the last finished epoch (see the module docstring for its keys).

    Raises:
      ConfigError: invalid config (``pooler_kwargs`` included, traced on the dataset's input),
        a workdir holding a different run or more epochs than asked for, or a workdir that is
        a file or cannot be created.
      input_pipeline.DataError: the dataset cannot be read.
      NonFiniteLossError: the loss became NaN/inf; the last good checkpoint stays.
      Interrupted: SIGINT/SIGTERM; a checkpoint of the exact position was saved first (when the
        signal came while the finished run was saved, that save completes: status ``done``).
    """
    validate_config(config)
    lead = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir} exists and is not a directory")
    config_path = os.path.join(workdir, "config.json")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if os.path.exists(config_path):
        with open(config_path) as f:
            changed = run_files.changed_run_fields(json.load(f), config)
        if changed and run_files.has_results(workdir):
            raise ConfigError(
                f"workdir {workdir} holds a run with different {', '.join(changed)}; use "
                "another --workdir or delete it"
            )
        if changed:  # no checkpoint, no finished epoch: nothing to resume, nothing to lose
            logger.info("workdir %s held an untrained run; starting this config there", workdir)

    if data is None:
        data = input_pipeline.load(config.dataset, config.data_dir)
    elif data.name != config.dataset:
        raise ValueError(f"data holds {data.name!r}, the config trains on {config.dataset!r}")
    batch_size = config.batch_size
    eval_batch_size = config.eval_batch_size or batch_size
    steps = input_pipeline.steps_per_epoch(data.train, batch_size)
    if steps == 0:
        raise ConfigError(
            f"batch size {batch_size} exceeds the {len(data.train)} training examples of "
            f"{config.dataset}"
        )
    trained = max(run_files.checkpoint_steps(workdir), default=0)
    if trained > config.num_epochs * steps:
        raise ConfigError(
            f"workdir {workdir} holds a run trained for {trained // steps} epochs, more than the "
            f"{config.num_epochs} asked for; ask for {trained // steps} or more, or use another "
            "--workdir"
        )
    mean = std = None
    if config.standardize:
        mean, std = input_pipeline.channel_stats(data.train)

    validate_model(config, data.image_shape, data.num_classes)

    if lead:
        try:
            os.makedirs(workdir, exist_ok=True)
            run_files.write_json(config_path, json.loads(config.to_json_best_effort()))
        except OSError as e:  # e.g. a read-only directory
            raise ConfigError(f"cannot write to workdir {workdir}: {e.strerror or e}") from e

    replicated, sharded = device_loop.data_shardings()

    # Everything is created on the mesh directly: jax.device_put cannot place host values on
    # devices of other processes.
    init_key, train_key = _seed_keys(config.seed, replicated)
    data_key = device_loop.data_key(config.seed, replicated)
    state = create_train_state(
        config, data.image_shape, data.num_classes, init_key, sharding=replicated
    )

    ckpt = checkpointing.Checkpoints(checkpoint_dir, max_to_keep=config.checkpoints_to_keep)
    target = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    restored = ckpt.restore_latest(target)
    # Position in the run and the running sums of the current (possibly unfinished) epoch.
    meta = run_metrics.epoch_start(0, config.seed)
    if restored is not None:
        item = restored.item
        state = state.replace(step=item["step"], params=item["params"], opt_state=item["opt_state"])
        meta.update(restored.meta)
        logger.info(
            "resumed from checkpoint at step %d (epoch %d of %d)",
            restored.step,
            min(meta["epoch"] + 1, config.num_epochs),
            config.num_epochs,
        )

    history = run_files.read_metrics(metrics_path, meta["epoch"])
    if lead:
        # Drop epochs the checkpoint does not cover; atomic, so a signal cannot empty the file.
        run_files.write_text(metrics_path, "".join(json.dumps(row) + "\n" for row in history))

    def finish(status: str) -> None:
        ckpt.close()
        if lead:
            run_files.write_json(
                os.path.join(workdir, "summary.json"),
                run_metrics.summary(status, config, history, state.params, workdir),
            )

    if mean is not None:
        mean, std = (device_loop.put_replicated(v, replicated) for v in (mean, std))
    train_data = device_loop.put_split(data.train, replicated)
    test_data = device_loop.put_eval_split(data.test, eval_batch_size, replicated)
    chunk_length = min(config.steps_per_chunk, steps)
    microbatches = config_microbatches(config, batch_size)
    show_bar = bool(config.progress) and sys.stderr.isatty()
    stop_after = config.stop_after_epochs or config.num_epochs

    meta["includes_startup"] = True  # the epoch this process starts in compiles the step
    with _catch_signals() as received:
        while meta["epoch"] < config.num_epochs:
            epoch = meta["epoch"]  # 0-based index of the epoch being run
            if epoch >= stop_after:
                logger.info("stopping after epoch %d (stop_after_epochs)", epoch)
                finish("stopped")
                return history[-1] if history else {}
            start_step = int(jax.device_get(state.step)) - epoch * steps
            t0 = time.perf_counter()
            bar = tqdm.tqdm(
                total=steps,
                initial=start_step,
                desc=f"epoch {epoch + 1}/{config.num_epochs}",
                disable=not show_bar,
                leave=False,
                file=sys.stderr,
            )
            order = device_loop.epoch_order(data_key, epoch, len(data.train), replicated)
            for first, count in device_loop.chunks(start_step, steps, chunk_length):
                state, out = _run_chunk(
                    state,
                    train_data,
                    order,
                    first,
                    count,
                    train_key,
                    mean,
                    std,
                    batch_size=batch_size,
                    length=chunk_length,
                    sharding=sharded,
                    microbatches=microbatches,
                )
                losses, correct = jax.device_get((out["loss"], out["correct"]))
                bad = run_metrics.accumulate(meta, losses[:count], correct[:count], batch_size)
                if bad is not None:
                    bar.close()
                    finish("failed")
                    step = first + bad + 1
                    raise NonFiniteLossError(
                        f"non-finite training loss ({float(losses[bad])}) at epoch {epoch + 1}, "
                        f"step {step} of {steps} (global step {epoch * steps + step}); last good "
                        f"checkpoint: {_last_step_text(ckpt)}"
                    )
                bar.update(count)
                if show_bar:
                    bar.set_postfix(loss=f"{float(losses[count - 1]):.4f}")
                if received:
                    break
            bar.close()
            meta["train_seconds"] += time.perf_counter() - t0
            if received:
                step_now = int(jax.device_get(state.step))
                ckpt.save(step_now, _ckpt_item(state), dict(meta))
                finish("interrupted")
                raise Interrupted(
                    received[0],
                    f"interrupted by signal {received[0]} in epoch {epoch + 1} at global step "
                    f"{step_now}; checkpoint saved in {ckpt.directory}; rerun the same command "
                    f"to resume",
                )

            t1 = time.perf_counter()
            test = evaluate(state, test_data, eval_batch_size, sharded, mean, std)
            eval_seconds = time.perf_counter() - t1
            row = run_metrics.epoch_row(
                epoch, int(jax.device_get(state.step)), meta, test, eval_seconds
            )
            history.append(row)
            meta = run_metrics.epoch_start(epoch + 1, config.seed)
            if lead:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                run_files.write_json(
                    os.path.join(workdir, "pooler_params.json"),
                    models.pooler_report(
                        state.params,
                        config.pooler,
                        pooler_kwargs(config),
                        _report_inputs(config, state, data, mean, std),
                    ),
                )
            # replace: a checkpoint a signal took at this very step still marks the epoch open.
            ckpt.save(row["step"], _ckpt_item(state), dict(meta), replace=True)
            if on_epoch is not None:
                on_epoch(row)
            if received:
                finish("interrupted")
                raise Interrupted(
                    received[0],
                    f"interrupted by signal {received[0]} after epoch {epoch + 1}; checkpoint "
                    f"saved in {ckpt.directory}; rerun the same command to resume",
                )
        # Still under the signal handlers: the last checkpoint's write and summary.json finish.
        finish("done")
    if received:  # then stop as asked (a sweep must not start its next run)
        raise Interrupted(
            received[0],
            f"interrupted by signal {received[0]} while the finished run was saved; it is "
            f"complete in {workdir}",
        )
    return history[-1] if history else {}


def _ckpt_item(state: TrainState) -> dict[str, Any]:
    # Host copies: the state is replicated, and orbax would otherwise compile a slicing program
    # per array shape to pick one replica (dozens of compilations on a multi-device mesh).
    return jax.device_get(
        {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    )


def _last_step_text(ckpt: checkpointing.Checkpoints) -> str:
    steps = ckpt.all_steps()
    if not steps:
        return f"none in {ckpt.directory}"
    return f"step {steps[-1]} in {ckpt.directory}"
