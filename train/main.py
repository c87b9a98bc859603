r"""Command line: train the standard CNN with one pooler.

Examples::

  python -m train.main --dataset digits --pooler max            # offline demo, about 10 s
  python -m train.main --pooler tdgs --data-dir DIR             # MNIST, the reference setup
  python -m train.main --config configs/cifar10.py --config.pooler=mixed --config.num_epochs=3

Without ``--config`` the config is ``configs/<dataset>.py`` for the chosen ``--dataset`` (default
``mnist``). The shortcut flags win over the config file. Invalid values, missing data or a batch
size that does not divide by the device count end with exit code 2 and one line on stderr.
``DIR``: a TFDS data dir holding the dataset (default: TFDS's, ``~/tensorflow_datasets``).

Multi-host: when the environment describes a multi-process job (``JAX_COORDINATOR_ADDRESS``, or a
SLURM / Open MPI launch with more than one task, or a multi-worker Cloud TPU slice),
``jax.distributed.initialize()`` is called first; run the same command on every host. On a
hand-made cluster also set ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` on each host.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from train import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/X.py); override fields with --config.field=value."
)


class _ConfigFileParser(flags.ArgumentParser):
    """absl's parser of ``--config``: the config :func:`check_config_flags` loaded before absl
    parses, so the file and its ``get_config()`` run once per command (a ``get_config()`` that
    reads the clock or a counter would otherwise be checked in one state and trained in another).
    ml_collections then applies the ``--config.<field>`` overrides to it.
    """

    def __init__(self):
        self.loaded: dict[str, ml_collections.ConfigDict] = {}

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        config = self.loaded.pop(argument, None)
        if config is None:
            config = load_config_file(argument)
        config.lock()  # overrides may set fields, not add them (ml_collections' default)
        return config

    def flag_type(self) -> str:
        return "config object"


_CONFIG_PARSER = _ConfigFileParser()
flags.FLAGS[_CONFIG.name].parser = _CONFIG_PARSER
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

    config = _CONFIG.value  # ml_collections' load, overrides applied (checked before parsing)
    if config is not None:
        config = config.copy_and_resolve_references()
    else:
        dataset = _DATASET.value or "mnist"
        if dataset not in input_pipeline.DATASETS:
            raise cli.UsageError(
                f"unknown dataset {dataset!r}; choose one of: {', '.join(input_pipeline.DATASETS)}"
            )
        config = cli.bundled_config(dataset)
    from train.core import run_config

    try:  # before the shortcut flags set fields a locked config file may lack
        run_config.check_fields(config)
    except run_config.ConfigError as e:
        raise cli.UsageError(str(e)) from e
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


def _config_path(argv: list[str]) -> str | None:
    """The ``--config`` value in ``argv`` (the last one, as absl keeps), or None."""
    path = None
    for name, value, following in cli.flag_arguments(argv):
        if name == "config":
            path = following if value is None else value
    return path


def _exception_text(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception raised by a config file.

    A ``KeyError``'s message is its argument (``str()`` would quote it again), and an exception
    made of another (ml_collections raises ``AttributeError(KeyError(...))`` for a missing
    field) has that one's message.
    """
    inner = e
    while len(inner.args) == 1 and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    keyed = isinstance(inner, KeyError) and len(inner.args) == 1 and isinstance(inner.args[0], str)
    lines = (inner.args[0] if keyed else str(inner)).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a ``--config`` file: ``FILE`` or ``FILE:ARG`` (``get_config(ARG)``), as
    ml_collections reads it.

    Raises:
      cli.UsageError: one line for a missing file, a file that raises, one without
        ``get_config()``, a ``get_config()`` that raises or returns no ``ConfigDict``.
    """
    file, *arg = path.split(":", 1)
    if not os.path.isfile(file):
        bundled = os.path.join(cli.CONFIGS_DIR, os.path.basename(file))
        if os.path.isfile(bundled) and os.path.basename(os.path.dirname(file)) == "configs":
            raise cli.UsageError(  # a config of jaxpool's named from outside a checkout
                f"cannot load --config {file}: no such file in {os.getcwd()}; jaxpool's own "
                f"configs are in {cli.CONFIGS_DIR}: --config {bundled}"
            )
        raise cli.UsageError(f"cannot load --config {file}: no such file")
    loader = importlib.machinery.SourceFileLoader("config_file", file)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except Exception as e:  # whatever the file raises, in one line
        raise cli.UsageError(f"cannot load --config {file}: {_exception_text(e)}") from e
    expected = "get_config() returning an ml_collections.ConfigDict (see configs/default.py)"
    if not callable(getattr(module, "get_config", None)):
        raise cli.UsageError(f"the --config file {file} must define {expected}")
    try:
        config = module.get_config(*arg)
    except Exception as e:  # whatever get_config() raises, in one line
        raise cli.UsageError(
            f"cannot load --config {file}: its get_config() raised {_exception_text(e)}"
        ) from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise cli.UsageError(
            f"the --config file {file} must define {expected}; its get_config() returned "
            f"{type(config).__name__}"
        )
    return config


def _is_boolean(text: str) -> bool:
    try:
        flags.BooleanParser().parse(text)
    except ValueError:
        return False
    return True


def _literal(text: str):
    """``text`` as a Python literal (how ml_collections reads a dict override), or None."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _check_override(
    config: ml_collections.ConfigDict, flag: str, explicit: str | None, following: str | None
) -> None:
    """``--config.<dotted.field>`` names a field of ``config``, with an integer or a number where
    the field holds one, true or false for a boolean (given as ``--config.FIELD=VALUE``), and a
    dict literal for a dict field.  ``explicit``: the ``=VALUE``; ``following``: the next
    argument, the value of a non-boolean field given without ``=``."""
    value = following if explicit is None else explicit
    node, walked = config, []
    for part in flag.removeprefix("config.").split("."):
        fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        if part not in fields:
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f" (did you mean {'.'.join([*walked, close[0]])!r}?)" if close else ""
            raise cli.UsageError(
                f"unknown config field {'.'.join([*walked, part])!r} in --{flag}{hint}; "
                "the fields are in configs/default.py"
            )
        walked.append(part)
        node = node[part]
    if isinstance(node, bool):  # --config.FIELD alone sets it; a value must be a boolean
        if explicit is not None and not _is_boolean(explicit):
            raise cli.UsageError(f"--{flag} must be {cli.BOOLEAN}; got {explicit!r}")
        return
    if isinstance(node, ml_collections.ConfigDict):  # e.g. pooler_kwargs: a dict literal
        if value is not None and not isinstance(_literal(value), dict):
            raise cli.UsageError(
                f"--{flag} must be a Python dict literal such as \"{{'tau': 0.5}}\"; got {value!r}"
            )
        return
    if value is None or not isinstance(node, int | float):
        return  # ml_collections parses the other types
    kind, convert = ("an integer", int) if isinstance(node, int) else ("a number", float)
    try:
        convert(value)
    except ValueError:
        raise cli.UsageError(f"--{flag} must be {kind}; got {value!r}") from None


def check_config_flags(argv: list[str]) -> None:
    """Checks ``--config`` and the ``--config.<field>`` overrides before absl parses them: loads
    the file (:func:`load_config_file`), checks that every override names one of its fields, and
    keeps the config for absl's parse of ``--config``.

    Raises:
      cli.UsageError: in one line, the file's problem or the unknown field (with the closest
        field's name), or overrides without ``--config``.
    """
    overrides = [a for a in cli.flag_arguments(argv) if a[0].startswith("config.")]
    path = _config_path(argv)
    if path is None:
        if overrides:
            raise cli.UsageError(
                f"--{overrides[0][0]} overrides a field of a --config file; pass one too, e.g. "
                "--config configs/digits.py (without --config the shortcut flags such as "
                "--epochs set the common fields)"
            )
        return
    config = load_config_file(path)
    for flag, value, following in overrides:
        _check_override(config, flag, value, following)
    _CONFIG_PARSER.loaded[path] = config


def run(argv: list[str]) -> int:
    """Parses ``argv``, trains, and returns the exit code."""
    if cli.wants_help(argv):
        cli.print_help(__doc__, flags.FLAGS, module=__name__)
        return 0
    check_config_flags(argv)
    rest = cli.parse_flags(flags.FLAGS, argv)
    if len(rest) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    config = build_config()

    if _multi_process_env(dict(os.environ)):
        import jax

        try:
            jax.distributed.initialize(**_distributed_kwargs(dict(os.environ)))
        except Exception as e:  # a half-described cluster: say what failed, in one line
            raise cli.UsageError(f"jax.distributed.initialize() failed: {cli.first_line(e)}") from e

    cli.start_backend()
    import jax

    from train.core import input_pipeline, loop, run_config, run_files

    try:
        run_config.validate_config(config)
    except run_config.ConfigError as e:
        raise cli.UsageError(str(e)) from e
    run_config.enable_compilation_cache()
    workdir = os.path.expanduser(_WORKDIR.value or "") or os.path.join(  # '~/x' quoted, too
        "runs", f"{config.dataset}-{config.pooler}-s{config.seed}"
    )
    lead = jax.process_index() == 0
    try:
        final = loop.train_and_evaluate(
            config, workdir, on_epoch=cli.epoch_printer(config.num_epochs) if lead else None
        )
    except (run_config.ConfigError, input_pipeline.DataError) as e:
        raise cli.UsageError(str(e)) from e
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return cli.EXIT_FAILED
    except run_files.WriteError as e:
        print(f"error: {e}; fix that (room, permissions) and rerun to resume", file=sys.stderr)
        return cli.EXIT_FAILED
    except loop.Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    if lead:
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
        if summary["status"] == "done" and final:
            cli.out(
                f"done: {config.pooler} on {config.dataset}, {final['epoch']} epochs: "
                f"test accuracy {final['test_accuracy']:.2%} "
                f"(best {summary['best_test_accuracy']:.2%} at epoch {summary['best_epoch']}); "
                f"outputs in {workdir}"
            )
        else:
            cli.out(
                f"{summary['status']} after epoch {summary['epochs_completed']}; rerun to resume"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs :func:`run`; usage errors become one line on stderr and exit code 2."""
    return cli.run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
