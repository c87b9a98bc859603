r"""Evaluate a trained run's newest checkpoint on its test split, optionally with other pooler
settings that leave the parameters unchanged (e.g. s3's ``test_mode``).

Run::

  python -m train.evaluate runs/sweep/runs/mnist/s3/s0 --pooler-kwargs '{"test_mode": "official"}'

It prints one line, ``<run dir>: test accuracy 98.71% (loss 0.0412) after 10 epochs ...``, and with
``--json`` one JSON object instead.  The run's ``config.json`` gives the dataset, model and
preprocessing; ``--pooler-kwargs`` are merged into its ``pooler_kwargs``; ``--data-dir`` overrides
its TFDS data dir.  Exit codes: 0; 2 with one line on stderr for a usage error (no run
directory, no readable checkpoint, kwargs that change the parameters or are not the pooler's,
data that cannot be read); 130 or 143 stopped by Ctrl-C or SIGTERM (nothing is written).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from train import cli

_FLAGS = flags.FlagValues()
_POOLER_KWARGS = flags.DEFINE_string(
    "pooler-kwargs", "{}", "JSON object merged into the run's pooler_kwargs.", flag_values=_FLAGS
)
_DATA_DIR = flags.DEFINE_string(
    "data-dir", None, "TFDS data dir (default: the run's).", flag_values=_FLAGS
)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.", flag_values=_FLAGS)


def evaluate_run(
    run_dir: str, pooler_kwargs: dict[str, Any] | None = None, data_dir: str | None = None
) -> dict[str, Any]:
    """Test loss and accuracy of the newest readable checkpoint in ``<run_dir>/checkpoints``.

    Args:
      run_dir: a ``train.main`` or ``train.sweep`` run directory (``config.json``, checkpoints).
      pooler_kwargs: merged into the run's pooler keyword arguments for this evaluation; they
        must leave the parameter shapes as trained.
      data_dir: TFDS data dir; None keeps the run's.

    Returns:
      ``{"run_dir", "pooler", "pooler_kwargs", "step", "epochs_trained", "test_loss",
      "test_accuracy"}`` (``epochs_trained``: finished epochs when the checkpoint was taken).

    Raises:
      cli.UsageError: no ``config.json``, no readable checkpoint, or kwargs the model refuses.
    """
    import jax
    import ml_collections

    from train.core import checkpointing, device_loop, input_pipeline, loop, run_config, steps

    config_path = os.path.join(run_dir, "config.json")
    try:
        with open(config_path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        saved = e
    if not isinstance(saved, dict) or not isinstance(saved.get("pooler_kwargs", {}), dict):
        raise cli.UsageError(f"{run_dir} is not a run directory: cannot read {config_path}")
    config = ml_collections.ConfigDict(saved)
    config.pooler_kwargs = {**saved.get("pooler_kwargs", {}), **(pooler_kwargs or {})}
    if data_dir is not None:
        config.data_dir = data_dir
    _evaluation_batches(config, jax.device_count())
    checkpoints = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(checkpoints):  # checked first: opening them would create the folder
        raise cli.UsageError(f"{run_dir} holds no checkpoints (no folder {checkpoints})")
    try:
        run_config.validate_config(config)
        data = input_pipeline.load(config.dataset, config.data_dir)
        spec = run_config.describe(config, data.image_shape, data.num_classes, len(data.train))
        if pooler_kwargs:
            trained = ml_collections.ConfigDict(config.to_dict())
            trained.pooler_kwargs = saved.get("pooler_kwargs", {})
            trained_spec = run_config.describe(
                trained, data.image_shape, data.num_classes, len(data.train)
            )
            _check_same_parameters(spec, trained_spec, pooler_kwargs)
    except (run_config.ConfigError, input_pipeline.DataError) as e:
        raise cli.UsageError(str(e)) from e

    replicated, sharded = device_loop.data_shardings()
    state = steps.create_train_state(spec, jax.random.key(0), sharding=replicated)
    ckpt = checkpointing.Checkpoints(checkpoints)
    target = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    try:
        finished = ckpt.all_steps()  # first: one finalised in between is then restored
        restored = ckpt.restore_latest(target)
    finally:
        ckpt.close()
    if not finished:  # none finalised: the first one is being written, or its writing was cut
        raise cli.UsageError(f"{run_dir} holds no finished checkpoint yet in {checkpoints}")
    if restored is None:  # none whose parameters fit these pooler settings
        raise cli.UsageError(
            f"{run_dir} holds no checkpoint readable as {config.pooler} with pooler_kwargs "
            f"{json.dumps(config.pooler_kwargs.to_dict())}"
        )
    state = state.replace(params=restored.item["params"])
    mean = std = None
    if config.standardize:  # the training split's statistics, as in training
        stats = input_pipeline.channel_stats(data.train)
        mean, std = (device_loop.put_replicated(v, replicated) for v in stats)
    batch_size = spec.eval_batch_size
    test_data = device_loop.put_eval_split(data.test, batch_size, replicated)
    metrics = loop.evaluate(state, test_data, batch_size, sharded, mean, std)
    return {
        "run_dir": run_dir,
        "pooler": config.pooler,
        "pooler_kwargs": config.pooler_kwargs.to_dict(),
        "step": int(restored.step),
        "epochs_trained": int(restored.meta["epoch"]),
        "test_loss": metrics["loss"],
        "test_accuracy": metrics["accuracy"],
    }


def _check_same_parameters(spec, trained_spec, pooler_kwargs: dict[str, Any]) -> None:
    """``pooler_kwargs`` must leave the model's parameters (names and shapes) as trained:
    checked on their shapes alone, before any checkpoint is read."""
    import jax

    from train.core import steps

    def shapes(s):
        state = jax.eval_shape(lambda: steps.create_train_state(s, jax.random.key(0)))
        flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
        return {
            "/".join(str(getattr(k, "key", k)) for k in path): leaf.shape for path, leaf in flat
        }

    new, old = shapes(spec), shapes(trained_spec)
    if new != old:
        changed = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k))
        raise cli.UsageError(
            f"--pooler-kwargs {json.dumps(pooler_kwargs)} change the model's parameters "
            f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}) from those the run "
            "trained; only settings that keep them can evaluate its checkpoint"
        )


def _evaluation_batches(config, devices: int) -> None:
    """Makes ``config``'s batch sizes those of this evaluation: the evaluation batch is rounded
    up to a multiple of ``devices``; the training batch plays no part in it, and becomes
    ``devices``, which this machine's device count divides (a run trained on one device may be
    evaluated on eight) and the training split holds (an evaluation batch larger than the
    training split is fine).  Non-integer sizes are left for ``validate_config`` to report."""
    batch = config.get("eval_batch_size") or config.get("batch_size")
    if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
        config.eval_batch_size = -(-batch // devices) * devices
        config.batch_size = devices
        config.microbatch_size = 0


def run(argv: Sequence[str]) -> int:
    """Parses ``argv``, evaluates, prints the result; returns the exit code."""
    if cli.wants_help(argv):
        cli.print_help(__doc__, _FLAGS)
        return 0
    _FLAGS.unparse_flags()
    rest = cli.parse_flags(_FLAGS, argv)
    if len(rest) != 2:
        raise cli.UsageError("expected one RUN_DIR argument (a train.main or train.sweep run)")
    try:
        kwargs = json.loads(_POOLER_KWARGS.value)
    except json.JSONDecodeError as e:
        raise cli.UsageError(f"--pooler-kwargs must be a JSON object; {e}") from e
    if not isinstance(kwargs, dict):
        raise cli.UsageError(f"--pooler-kwargs must be a JSON object; got {_POOLER_KWARGS.value}")
    cli.start_backend()
    result = evaluate_run(rest[1], kwargs, _DATA_DIR.value)
    if _JSON.value:
        cli.out(json.dumps(result))
    else:
        cli.out(
            f"{result['run_dir']}: test accuracy {result['test_accuracy']:.2%} "
            f"(loss {result['test_loss']:.4f}) after {result['epochs_trained']} epochs "
            f"(step {result['step']}), "
            f"{result['pooler']} {json.dumps(result['pooler_kwargs'])}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: usage errors become one line on stderr and exit code 2."""
    return cli.run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
