r"""Command line: train the standard CNN with one pooler.

Examples::

  python -m train.main --dataset digits --pooler max            # offline demo, about 10 s
  python -m train.main --pooler tdgs --data-dir ../shared/tfds  # MNIST, the reference setup
  python -m train.main --config configs/cifar10.py --config.pooler=mixed --config.num_epochs=3

Without ``--config`` the config is ``configs/<dataset>.py`` for the chosen ``--dataset`` (default
``mnist``). The shortcut flags win over the config file. Invalid values, missing data or a batch
size that does not divide by the device count end with exit code 2 and one line on stderr.

Multi-host: when the environment describes a multi-process job (``JAX_COORDINATOR_ADDRESS``, or a
SLURM / Open MPI launch with more than one task, or a multi-worker Cloud TPU slice),
``jax.distributed.initialize()`` is called first; run the same command on every host. On a
hand-made cluster also set ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` on each host.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

from train import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/X.py); override fields with --config.field=value."
)
_POOLER = flags.DEFINE_string("pooler", None, "Pooler name from jaxpool.available().")
_DATASET = flags.DEFINE_string("dataset", None, "mnist | cifar10 | cifar100 | digits.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Number of epochs.")
_BATCH_SIZE = flags.DEFINE_integer("batch-size", None, "Global batch size.")
_LEARNING_RATE = flags.DEFINE_float("learning-rate", None, "Adam learning rate.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of init, pooling keys and data order.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default runs/<dataset>-<pooler>-s<seed>)."
)
_DATA_DIR = flags.DEFINE_string("data-dir", None, "TFDS data dir (array_record).")
_POOLER_KWARGS = flags.DEFINE_string(
    "pooler-kwargs", None, "Pooler keyword arguments as JSON, e.g. '{\"tau\": 0.5}'."
)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")


def _multi_process_env(env: dict[str, str]) -> bool:
    """Whether the standard environment describes a multi-process JAX job."""
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(env.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def _distributed_kwargs(env: dict[str, str]) -> dict[str, int]:
    """``num_processes``/``process_id`` from ``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` if set.

    JAX reads ``JAX_COORDINATOR_ADDRESS`` itself and detects SLURM, Open MPI and Cloud TPU; the
    two counts are only needed for a hand-made cluster.
    """
    kwargs = {}
    for var, name in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if env.get(var):
            try:
                kwargs[name] = int(env[var])
            except ValueError as e:
                raise cli.UsageError(f"{var} must be an integer, got {env[var]!r}") from e
    return kwargs


def build_config():
    """``--config`` (else ``configs/<dataset>.py``) with the shortcut flags applied."""
    from train.core import input_pipeline

    try:
        config = _CONFIG.value
        if config is not None:
            config = config.copy_and_resolve_references()
    except OSError as e:  # config_flags defers load errors until the value is used
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise cli.UsageError(f"cannot load --config: {lines[-1] if lines else e}") from e
    except AttributeError as e:  # get_config() returned something else than a ConfigDict
        raise cli.UsageError(
            f"--config {flags.FLAGS['config'].config_filename}: get_config() must return an "
            f"ml_collections.ConfigDict (see configs/default.py), got {type(config).__name__}"
        ) from e
    if config is None:
        dataset = _DATASET.value or "mnist"
        if dataset not in input_pipeline.DATASETS:
            raise cli.UsageError(
                f"unknown dataset {dataset!r}; choose one of: {', '.join(input_pipeline.DATASETS)}"
            )
        config = importlib.import_module(f"configs.{dataset}").get_config()
    overrides = {
        "pooler": _POOLER.value,
        "dataset": _DATASET.value,
        "num_epochs": _EPOCHS.value,
        "batch_size": _BATCH_SIZE.value,
        "learning_rate": _LEARNING_RATE.value,
        "seed": _SEED.value,
        "data_dir": _DATA_DIR.value,
    }
    for field, value in overrides.items():
        if value is not None:
            config[field] = value
    if _POOLER_KWARGS.value is not None:
        try:
            kwargs = json.loads(_POOLER_KWARGS.value)
        except json.JSONDecodeError as e:
            raise cli.UsageError(
                f"--pooler-kwargs is not valid JSON ({e.msg}): {_POOLER_KWARGS.value}"
            ) from e
        if not isinstance(kwargs, dict):
            raise cli.UsageError(
                f"--pooler-kwargs must be a JSON object, got {_POOLER_KWARGS.value}"
            )
        config.pooler_kwargs = kwargs
    if _QUIET.value:
        config.progress = False
    return config


def _missing_field(e: Exception) -> tuple[str, str]:
    """The field an ml_collections KeyError/AttributeError names (or its message), and its
    " (did you mean 'x'?)" suggestion or ""."""
    text = str(e).replace("\\", "")
    field = re.search(r"'([^']+)'", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return field.group(1) if field else text, f" (did you mean {hint.group(1)!r}?)" if hint else ""


def _config_file_error(e: Exception) -> cli.UsageError:
    """The usage error for a KeyError/AttributeError raised by the config file's get_config()."""
    field, hint = _missing_field(e)
    return cli.UsageError(
        f"cannot load --config: its get_config() raised {type(e).__name__} {field!r}{hint}"
    )


def _unknown_field(e: Exception) -> cli.UsageError:
    """The usage error for a ``--config.<field>`` flag that names no field of the config."""
    field, hint = _missing_field(e)
    return cli.UsageError(
        f"unknown config field {field!r} in a --config.<field> flag{hint}; see configs/default.py"
    )


def _epoch_line(num_epochs: int):
    def show(row: dict) -> None:
        print(
            f"epoch {row['epoch']}/{num_epochs}  "
            f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}  "
            f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.2%}  "
            f"{row['epoch_seconds']:.1f}s  {row['images_per_second']:,.0f} img/s",
            flush=True,
        )

    return show


def run(argv: list[str]) -> int:
    """Parses ``argv``, trains, and returns the exit code."""
    if cli.wants_help(argv):
        print(__doc__.strip())
        print()
        print(flags.FLAGS.module_help(sys.modules[__name__]))
        return 0
    overrides = any(a.startswith("--config.") for a in argv[1:])
    try:
        rest = flags.FLAGS(argv)
    except AttributeError as e:
        if "get_config" in str(e):
            raise cli.UsageError(
                "the --config file must define get_config() returning an "
                "ml_collections.ConfigDict (see configs/default.py)"
            ) from e
        if not overrides:  # raised inside the config file itself
            raise _config_file_error(e) from e
        raise _unknown_field(e) from e
    except KeyError as e:  # ml_collections: --config.<field> names no field
        if not overrides:
            raise _config_file_error(e) from e
        raise _unknown_field(e) from e
    except flags.UnrecognizedFlagError as e:
        if e.flagname.startswith("config."):
            raise cli.UsageError(
                f"--{e.flagname} overrides a field of a --config file; pass one too, e.g. "
                "--config configs/digits.py (without --config the shortcut flags such as "
                "--epochs set the common fields)"
            ) from e
        raise cli.UsageError(cli.flag_error(e)) from e
    except Exception as e:  # absl flag errors and config-file load errors alike
        raise cli.UsageError(cli.flag_error(e)) from e
    if len(rest) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    config = build_config()

    if _multi_process_env(dict(os.environ)):
        import jax

        try:
            jax.distributed.initialize(**_distributed_kwargs(dict(os.environ)))
        except Exception as e:  # a half-described cluster: say what failed, in one line
            raise cli.UsageError(f"jax.distributed.initialize() failed: {cli.first_line(e)}") from e

    import jax

    from train.core import input_pipeline, loop, run_config

    try:
        run_config.validate_config(config)
    except run_config.ConfigError as e:
        raise cli.UsageError(str(e)) from e
    run_config.enable_compilation_cache()
    workdir = _WORKDIR.value or os.path.join(
        "runs", f"{config.dataset}-{config.pooler}-s{config.seed}"
    )
    lead = jax.process_index() == 0
    try:
        final = loop.train_and_evaluate(
            config, workdir, on_epoch=_epoch_line(config.num_epochs) if lead else None
        )
    except (run_config.ConfigError, input_pipeline.DataError) as e:
        raise cli.UsageError(str(e)) from e
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return cli.EXIT_FAILED
    except loop.Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    if lead:
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
        if summary["status"] == "done" and final:
            print(
                f"done: {config.pooler} on {config.dataset}, {final['epoch']} epochs: "
                f"test accuracy {final['test_accuracy']:.2%} "
                f"(best {summary['best_test_accuracy']:.2%} at epoch {summary['best_epoch']}); "
                f"outputs in {workdir}"
            )
        else:
            print(f"{summary['status']} after epoch {summary['epochs_completed']}; rerun to resume")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs :func:`run`; usage errors become one line on stderr and exit code 2."""
    return cli.run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
