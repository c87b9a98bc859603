"""Training and evaluation of the standard CNN with a registry pooler.

``train_and_evaluate(config, workdir)`` runs (or resumes) a whole run and returns the metrics of the
last epoch; ``train_seed_group(configs, workdirs)`` runs several that differ only in their seed as
one model ``jax.vmap``-ed over the seeds (each run keeps its own directory, files, keys and data
order; its metrics equal those of its separate run up to float rounding). Data-parallel over every device JAX sees: a 1-D mesh ``"data"``, batches sharded along
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
    ``images_per_second`` (training images / train_seconds), ``includes_startup``: true for
    the first epoch each call of this function trains (of a new or a resumed run), whose time
    may include compiling the step or loading it from the cache, and ``seeds_in_program``: how
    many seeds trained together (1 for a separate run; a seed group's wall time is shared
    equally among its seeds), ``device``: the device kind and count it trained on
    (``"cpu × 8"``).

- ``pooler_params.json``: the learned pooler parameters in readable form (see
  :func:`train.core.models.pooler_report`), rewritten every epoch.
- ``summary.json``: written when the run ends, keys: ``status`` (``"done"``, ``"stopped"`` by
  ``stop_after_epochs``, ``"interrupted"`` by a signal, ``"failed"`` on a non-finite loss),
  ``dataset``, ``dataset_version`` (TFDS's version of it, or the scikit-learn release for
  digits), ``pooler``, ``pooler_kwargs``, ``seed``, ``num_epochs`` (configured),
  ``epochs_completed``, ``final`` (the last ``metrics.jsonl`` object, or null),
  ``best_test_accuracy``, ``best_epoch``, ``param_count``, ``pooler_param_count``,
  ``num_devices``, ``num_processes``,
  ``workdir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from train.core import (
    checkpointing,
    device_loop,
    input_pipeline,
    interrupts,
    models,
    run_config,
    run_files,
    run_metrics,
    steps,
)
from train.core.run_config import ConfigError, RunSpec

logger = logging.getLogger(__name__)

PROBE_IMAGES = 64  # test images on which pooler_params.json describes LIP's importance logits


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class PositionMismatch(ValueError):
    """A seed group's runs resumed at different positions (e.g. one's newest checkpoint was
    unreadable); they can be trained one by one."""


class RunRefused(ConfigError):
    """One run of a seed group was refused by its own workdir's checks (nothing was trained);
    the group's other runs can be trained without it."""

    def __init__(self, index: int, error: ConfigError):
        super().__init__(str(error))
        self.index = index
        self.error = error


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the run can be resumed."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


# --------------------------------------------------------------------------- entry points


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
        a workdir holding a different run or more epochs than asked for, a workdir that is a
        file or cannot be created, or one another process is training
        (:func:`run_files.locked_run_dir`, held while training).
      input_pipeline.DataError: the dataset cannot be read.
      run_files.WriteError: a checkpoint or a run file could not be written (a full disk); the
        run resumes from its last checkpoint when rerun.
      NonFiniteLossError: the loss became NaN/inf; the last good checkpoint stays.
      Interrupted: SIGINT/SIGTERM; a checkpoint of the exact position was saved first (when the
        signal came while the finished run was saved, that save completes: status ``done``).
    """
    show = None if on_epoch is None else (lambda _, row: on_epoch(row))
    (outcome,) = train_seed_group([config], [workdir], on_epoch=show, data=data)
    if isinstance(outcome, NonFiniteLossError):
        raise outcome
    return outcome


def train_seed_group(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    *,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    data: input_pipeline.Dataset | None = None,
) -> list[dict[str, Any] | NonFiniteLossError]:
    """Trains runs that differ only in their seed together: one run alone as
    :func:`train_and_evaluate` describes, several as one model ``jax.vmap``-ed over the seeds.

    Each run keeps its own workdir and files, keys, data order and pooling noise; a run whose
    loss becomes non-finite is finished as ``failed`` and the others go on.  The runs must be at
    the same position (no checkpoint, or checkpoints of the same step).

    Args:
      configs: the runs' configs, equal except ``seed`` (distinct).
      workdirs: their output directories, one per config.
      on_epoch: called with ``(index of the run, its epoch's metrics)``.
      data: the dataset already in memory, or None to read it.

    Returns:
      Per run, its last epoch's metrics (``{}`` if none), or the :class:`NonFiniteLossError`
      that failed it.

    Raises:
      ValueError: configs that differ in more than their seeds.
      RunRefused: in a group, a run whose workdir its checks refuse (nothing was trained).
      PositionMismatch: runs at different positions (nothing was trained).
      ConfigError, input_pipeline.DataError, run_files.WriteError, Interrupted: as
        :func:`train_and_evaluate`.
    """
    _check_group(configs, workdirs)
    for config in configs:
        run_config.validate_config(config)
    lead = jax.process_index() == 0
    runs = [
        _RunDir(config, workdir, lead) for config, workdir in zip(configs, workdirs, strict=True)
    ]
    for run in runs:
        run.seeds_in_program = len(runs)
    with contextlib.ExitStack() as held:
        # Held from here to the end, so that no other process trains a run meanwhile; a new
        # workdir is made (and held) once the data is read, so a refusal leaves nothing behind.
        _each_run(runs, lambda run: run.lock(held) if os.path.isdir(run.workdir) else None)
        _each_run(runs, _RunDir.check_workdir)  # before the data: a refusal costs nothing
        if data is None:
            data = input_pipeline.load(configs[0].dataset, configs[0].data_dir)
        elif data.name != configs[0].dataset:
            raise ValueError(
                f"data holds {data.name!r}, the configs train on {configs[0].dataset!r}"
            )
        for run in runs:
            run.describe(data)
        _each_run(runs, lambda run: run.lock(held))
        held.callback(_release, runs)  # a failure's checkpoint managers, closed before the locks
        _each_run(runs, _RunDir.check_workdir)  # again: another process may have written there
        _each_run(runs, _RunDir.check_trained)
        _each_run(runs, _RunDir.write_config)
        return _epochs(runs, _setup(runs, data), on_epoch)


def _release(runs: Sequence[_RunDir]) -> None:
    for run in runs:
        if run.ckpt is not None and not run.ckpt.closed:  # open only after a failure
            run.ckpt.close_quietly()


def _each_run(runs: Sequence[_RunDir], check: Callable[[_RunDir], None]) -> None:
    """``check`` on every run; in a group, a run's :class:`ConfigError` is a :class:`RunRefused`
    naming it, so that the others can go on without it."""
    for index, run in enumerate(runs):
        try:
            check(run)
        except ConfigError as e:
            if len(runs) == 1:
                raise
            raise RunRefused(index, e) from e


def _check_group(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]) -> None:
    if not configs or len(configs) != len(workdirs):
        raise ValueError(
            f"expected one workdir per config, got {len(configs)} configs, {len(workdirs)} workdirs"
        )
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed group needs distinct seeds, got {seeds}")
    first = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
    for config in configs[1:]:
        other = {k: v for k, v in config.to_dict().items() if k != "seed"}
        if other != first:
            changed = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(
                f"a seed group's configs differ in {', '.join(changed)}, not only seed"
            )


# --------------------------------------------------------------------------- one run's directory


_LAYOUT = "step_layout"  # the checkpoint metadata's key for _RunDir.layout()


def _describe_layout(layout: dict[str, Any]) -> str:
    devices, seeds = layout["devices"], layout["seeds_in_program"]
    return (
        f"{layout['microbatches']} micro-batches per step on {devices} {layout['platform']} "
        f"device{'s' * (devices != 1)}, implementation={layout['implementation']!r}, "
        f"{seeds} seed{'s' * (seeds != 1)} in one program"
    )


class _RunDir:
    """One run of a group: its config, description, workdir files, checkpoints and position."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, lead: bool):
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.lead = lead
        self.seeds_in_program = 1  # how many runs train as one program with this one
        self.dataset_version = ""
        self.spec: RunSpec | None = None
        self.config_path = os.path.join(self.workdir, "config.json")
        self.metrics_path = os.path.join(self.workdir, "metrics.jsonl")
        self.ckpt: checkpointing.Checkpoints | None = None
        # Position in the run and the running sums of the current (possibly unfinished) epoch.
        self.meta = run_metrics.epoch_start(0, config.seed)
        self.history: list[dict[str, Any]] = []
        self.error: NonFiniteLossError | None = None

    # -- before training

    def check_workdir(self) -> None:
        """A workdir that is a file, whose ``config.json`` or ``checkpoints`` is not what a run
        writes there, or that holds another run with results, is refused."""
        problem = run_files.workdir_problem(self.workdir)
        if problem:
            raise ConfigError(f"workdir {problem}; use another --workdir")
        checkpoints = os.path.join(self.workdir, "checkpoints")
        if os.path.exists(checkpoints) and not os.path.isdir(checkpoints):
            raise ConfigError(
                f"workdir {self.workdir}: its 'checkpoints' is not a directory; use another "
                "--workdir or remove it"
            )
        for name in ("config.json", "metrics.jsonl", "summary.json", "pooler_params.json"):
            path = os.path.join(self.workdir, name)
            if os.path.exists(path) and not os.path.isfile(path):
                raise ConfigError(
                    f"workdir {self.workdir}: its '{name}' is not a file; use another --workdir "
                    "or remove it"
                )
        if not os.path.exists(self.config_path):
            if run_files.has_results(self.workdir):
                raise ConfigError(
                    f"workdir {self.workdir} holds checkpoints or finished epochs but no "
                    "config.json, so which run they belong to is unknown; put its config.json "
                    "back, or use another --workdir or delete it"
                )
            return
        try:
            with open(self.config_path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
            saved = e
        if not isinstance(saved, dict):
            why = (saved.strerror or saved) if isinstance(saved, OSError) else "not a run's config"
            raise ConfigError(
                f"workdir {self.workdir}: cannot read its config.json ({why}); use another "
                "--workdir or delete it"
            )
        changed = run_files.changed_run_fields(saved, self.config)
        if changed and run_files.has_results(self.workdir):
            raise ConfigError(
                f"workdir {self.workdir} holds a run with different {', '.join(changed)}; use "
                "another --workdir or delete it"
            )
        if changed:  # no checkpoint, no finished epoch: nothing to resume, nothing to lose
            logger.info(
                "workdir %s held an untrained run; starting this config there", self.workdir
            )

    def lock(self, held: contextlib.ExitStack) -> None:
        """Holds the run directory (:func:`run_files.locked_run_dir`) until ``held`` closes, so
        no other process trains it meanwhile; the lead process only (the others write nothing)."""
        if not self.lead:
            return
        try:
            held.enter_context(run_files.locked_run_dir(self.workdir))
        except run_files.RunDirInUse as e:
            raise ConfigError(
                f"workdir {self.workdir} is in use: {e.holder} is training this run; wait for it "
                "to end, or use another --workdir"
            ) from e
        except OSError as e:  # e.g. a read-only directory
            raise ConfigError(f"cannot write to workdir {self.workdir}: {e.strerror or e}") from e

    def describe(self, data: input_pipeline.Dataset) -> None:
        self.dataset_version = data.version
        self.spec = run_config.describe(
            self.config, data.image_shape, data.num_classes, len(data.train)
        )

    def check_trained(self) -> None:
        """A run trained for more epochs than asked for is refused, and so are finished epochs
        without a checkpoint to continue them from (training from scratch would overwrite them),
        unless the run was killed while its first checkpoint was written
        (:func:`run_files.stopped_saving_first_checkpoint`): then it starts over."""
        steps_per_epoch, epochs = self.spec.steps_per_epoch, self.spec.num_epochs
        steps = run_files.checkpoint_steps(self.workdir)
        finished = run_files.read_metrics(self.metrics_path, math.inf)
        started = max(-(-max(steps, default=0) // steps_per_epoch), len(finished))  # ceil
        if started > epochs:
            raise ConfigError(
                f"workdir {self.workdir} holds a run trained for {started} epochs (the last "
                f"perhaps in part), more than the {epochs} asked for; ask for {started} or more, "
                "or use another --workdir"
            )
        if finished and not steps and run_files.stopped_saving_first_checkpoint(self.workdir):
            logger.warning(
                "%s: the run was stopped while its first checkpoint was written; starting over "
                "(epoch 1's metrics row is trained again)",
                self.workdir,
            )
        elif finished and not steps:
            raise ConfigError(
                f"workdir {self.workdir} holds {len(finished)} finished epoch(s) (metrics.jsonl) "
                "but no checkpoint to continue them from; use another --workdir, or delete it to "
                "train again from scratch"
            )

    def write_config(self) -> None:
        if not self.lead:
            return
        saved = json.loads(self.config.to_json_best_effort())
        if "data_dir" in saved:  # absolute: train.evaluate finds the data from any directory
            saved["data_dir"] = input_pipeline.resolve_data_dir(saved["data_dir"])
        try:
            os.makedirs(self.workdir, exist_ok=True)
            run_files.write_json(self.config_path, saved)
        except OSError as e:  # e.g. a read-only directory
            raise ConfigError(f"cannot write to workdir {self.workdir}: {e.strerror or e}") from e

    def restore(self, target: dict[str, Any]) -> dict[str, Any] | None:
        """Opens the checkpoints; restores the newest into ``target``'s structure (None if there
        is none) and the history it covers."""
        self.ckpt = checkpointing.Checkpoints(
            os.path.join(self.workdir, "checkpoints"), max_to_keep=self.spec.checkpoints_to_keep
        )
        restored = self.ckpt.restore_latest(target)
        if restored is not None:
            saved_layout = restored.meta.pop(_LAYOUT, None)
            needed = ("epoch", "data_seed", "loss_sum", "correct", "count", "train_seconds")
            missing = [key for key in needed if key not in restored.meta]
            if missing:
                self.ckpt.close()
                raise ConfigError(
                    f"workdir {self.workdir}: the checkpoint at step {restored.step} lacks "
                    f"{', '.join(missing)} in its metadata (damaged or written by other code); "
                    "remove that checkpoint to resume from an older one, or use another --workdir"
                )
            self.meta.update(restored.meta)
            layout = self.layout()
            # a key the saved layout lacks (a checkpoint from before it was recorded) is unknown
            if saved_layout is not None and {**layout, **saved_layout} != layout:
                logger.warning(
                    "%s: resuming with %s, where the run trained with %s: from here on it will "
                    "not equal an uninterrupted run (other float rounding, and other pooling noise "
                    "where micro-batches or the pooler implementation change); keep all of them "
                    "to resume exactly",
                    self.workdir,
                    _describe_layout(layout),
                    _describe_layout({**layout, **saved_layout}),
                )
            logger.info(
                "%s: resumed from checkpoint at step %d (epoch %d of %d)",
                self.workdir,
                restored.step,
                min(self.meta["epoch"] + 1, self.spec.num_epochs),
                self.spec.num_epochs,
            )
        self.history = run_files.read_metrics(self.metrics_path, self.meta["epoch"])
        found = [row["epoch"] for row in self.history]
        if found != list(range(1, self.meta["epoch"] + 1)):
            self.ckpt.close()
            raise ConfigError(
                f"workdir {self.workdir}: its checkpoint finished {self.meta['epoch']} epochs but "
                f"metrics.jsonl holds {_epoch_list(found)}; it was cut or edited. Put it back, or "
                "delete the workdir to train again"
            )
        if self.lead:
            # Drop epochs the checkpoint does not cover; atomic, so a signal cannot empty it.
            with _writing(self.metrics_path):
                run_files.write_text(
                    self.metrics_path, "".join(json.dumps(row) + "\n" for row in self.history)
                )
        return None if restored is None else restored.item

    # -- while training

    @property
    def active(self) -> bool:
        return self.error is None

    def layout(self) -> dict[str, Any]:
        """How a training step is computed here, which an exact resume must keep: saved with
        each checkpoint.  The automatic micro-batch count depends on the device; the platform
        sets the float rounding and, under ``implementation='auto'``, which pooler paths (and so
        which random numbers) a step takes; seeds vmapped into one program round differently
        from a separate run."""
        return {
            "microbatches": self.spec.microbatches,
            "seeds_in_program": self.seeds_in_program,
            "devices": jax.device_count(),
            "platform": jax.default_backend(),
            "implementation": self.spec.implementation,
        }

    def save(self, step: int, item: dict[str, Any], *, replace: bool = False) -> None:
        self.ckpt.save(step, item, {**self.meta, _LAYOUT: self.layout()}, replace=replace)

    def record_epoch(self, row: dict[str, Any], params, report_inputs) -> None:
        """Appends the epoch's row, once the previous epoch's checkpoint is on disk: a failed
        save (a full disk) stops the run with the rows its checkpoints cover, plus at most the
        row whose checkpoint failed (which a rerun drops), so the run stays resumable."""
        self.ckpt.wait()
        self.history.append(row)
        self.meta = run_metrics.epoch_start(self.meta["epoch"] + 1, self.spec.seed)
        if not self.lead:
            return
        with _writing(self.metrics_path):
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        path = os.path.join(self.workdir, "pooler_params.json")
        with _writing(path):
            run_files.write_json(
                path,
                models.pooler_report(
                    params, self.spec.pooler, self.spec.pooler_kwargs, report_inputs
                ),
            )

    def close(self, status: str, params) -> None:
        """Waits for the checkpoints and writes ``summary.json``."""
        self.ckpt.close()
        if self.lead:
            path = os.path.join(self.workdir, "summary.json")
            with _writing(path):
                run_files.write_json(
                    path,
                    run_metrics.summary(
                        status, self.spec, self.history, params, self.workdir, self.dataset_version
                    ),
                )

    def last_step_text(self) -> str:
        saved = self.ckpt.all_steps()
        if not saved:
            return f"none in {self.ckpt.directory}"
        return f"step {saved[-1]} in {self.ckpt.directory}"


@contextlib.contextmanager
def _writing(path: str) -> Iterator[None]:
    """An OSError writing ``path`` as a :class:`run_files.WriteError` in one line."""
    try:
        yield
    except OSError as e:
        raise run_files.WriteError(f"cannot write {path}: {e.strerror or e}") from e


def _epoch_list(epochs: Sequence[int]) -> str:
    if not epochs:
        return "none of them"
    return f"epoch{'s' * (len(epochs) > 1)} {', '.join(map(str, epochs))}"


# --------------------------------------------------------------------------- the loop


class _SeedGroup:
    """The state of one run, or of several stacked along a leading seed axis, on the mesh."""

    def __init__(self, runs: Sequence[_RunDir], replicated: jax.sharding.Sharding):
        self.runs = runs
        self.grouped = len(runs) > 1
        self.replicated = replicated
        seeds = [r.spec.seed for r in runs]
        self.init_key, self.train_key = _seed_keys(seeds if self.grouped else seeds[0], replicated)
        self.data_key = device_loop.data_key(seeds if self.grouped else seeds[0], replicated)

    def create(self) -> steps.TrainState:
        """The initial state, with every run's checkpoint restored into it."""
        state = steps.create_train_state(self.runs[0].spec, self.init_key, self.replicated)
        target = _ckpt_target(state)
        if not self.grouped:
            item = self.runs[0].restore(target)
            return state if item is None else state.replace(**item)
        # One seed's structure, abstract: indexing each leaf would dispatch a program per leaf.
        one = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=self.replicated), target
        )
        items = []
        for index, run in enumerate(self.runs):
            try:
                items.append(run.restore(one))
            except ConfigError as e:  # its own files refuse it: the others can go on
                for restored in self.runs[:index]:
                    restored.ckpt.close()
                raise RunRefused(index, e) from e
        positions = [
            (run.meta["epoch"], None if i is None else int(i["step"]))
            for run, i in zip(self.runs, items, strict=True)
        ]
        if len(set(positions)) > 1:
            for run in self.runs:
                run.ckpt.close()
            where = ", ".join(
                f"{r.workdir}: epoch {epoch}, "
                + ("no checkpoint" if step is None else f"checkpoint step {step}")
                for r, (epoch, step) in zip(self.runs, positions, strict=True)
            )
            raise PositionMismatch(
                f"a seed group's runs are at different positions ({where}); train them separately"
            )
        if items[0] is None:
            return state
        return state.replace(**_stack(items, self.replicated))

    def items(self, state: steps.TrainState) -> list[dict[str, Any]]:
        """Each run's checkpoint item (step, params, optimizer state), on the host."""
        return self.per_run(_ckpt_target(state))

    def per_run(self, values):
        """Host values of the group's outputs, one per run."""
        values = jax.device_get(values)
        if self.grouped:
            return [_index(values, i) for i in range(len(self.runs))]
        return [values]


@dataclasses.dataclass
class _Setup:
    """What the epochs need besides the runs: their state, the resident splits and keys."""

    group: _SeedGroup
    state: steps.TrainState
    train_data: tuple[jax.Array, jax.Array]
    test_data: tuple[jax.Array, jax.Array, jax.Array]
    mean: jax.Array | None
    std: jax.Array | None
    sharded: jax.sharding.Sharding
    probe: jax.Array | None


def _setup(runs: Sequence[_RunDir], data: input_pipeline.Dataset) -> _Setup:
    """The runs' state (restored where they have checkpoints) and their data on the mesh."""
    spec = runs[0].spec
    replicated, sharded = device_loop.data_shardings()
    group = _SeedGroup(runs, replicated)
    mean = std = None
    if spec.standardize:
        mean, std = (
            device_loop.put_replicated(v, replicated)
            for v in input_pipeline.channel_stats(data.train)
        )
    return _Setup(
        group=group,
        state=group.create(),
        train_data=device_loop.put_split(data.train, replicated),
        test_data=device_loop.put_eval_split(data.test, spec.eval_batch_size, replicated),
        mean=mean,
        std=std,
        sharded=sharded,
        probe=_probe_images(spec, data, mean, std),
    )


def _epochs(runs: Sequence[_RunDir], setup: _Setup, on_epoch) -> list:
    """The epochs of the runs, from their common position to the end; then every run's
    ``summary.json``.  Returns each run's outcome (see :func:`train_seed_group`)."""
    group, state, mean, std = setup.group, setup.state, setup.mean, setup.std
    spec = runs[0].spec
    steps_per_epoch = spec.steps_per_epoch
    show_bar = spec.progress and sys.stderr is not None and sys.stderr.isatty()  # 2>&- : None
    for run in runs:
        run.meta["includes_startup"] = True  # the epoch this process starts in compiles the step

    def close_all(status: str) -> None:
        for run, item in zip(runs, group.items(state), strict=True):
            if run.active:
                run.close(status, item["params"])

    with _catch_signals() as received:
        if received:  # a Ctrl-C during the setup that Python dropped (train.core.interrupts)
            close_all("interrupted")
            raise Interrupted(
                received[0],
                f"interrupted by signal {received[0]} before training from global step "
                f"{_step(state)}; rerun the same command to resume",
            )
        while any(r.active for r in runs) and _epoch(runs) < spec.num_epochs:
            epoch = _epoch(runs)  # 0-based index of the epoch being run
            if epoch >= spec.stop_after_epochs:
                logger.info("stopping after epoch %d (stop_after_epochs)", epoch)
                close_all("stopped")
                return _outcomes(runs)
            start_step = _step(state) - epoch * steps_per_epoch
            t0 = time.perf_counter()
            bar = tqdm.tqdm(
                total=steps_per_epoch,
                initial=start_step,
                desc=f"epoch {epoch + 1}/{spec.num_epochs}",
                disable=not show_bar,
                leave=False,
                file=sys.stderr,
            )
            order = device_loop.epoch_order(group.data_key, epoch, spec.num_train, group.replicated)
            for first, count in device_loop.chunks(start_step, steps_per_epoch, spec.chunk_length):
                state, out = _run_chunk(
                    state, setup.train_data, order, first, count, group.train_key, mean, std,
                    spec=spec, sharding=setup.sharded, seed_group=group.grouped,
                )  # fmt: skip
                for i, (run, chunk_out) in enumerate(zip(runs, group.per_run(out), strict=True)):
                    if run.active:
                        _account(run, chunk_out, first, count, epoch, group, state, i)
                if not any(r.active for r in runs):
                    break
                bar.update(count)
                if show_bar:
                    bar.set_postfix(loss=f"{float(group.per_run(out)[0]['loss'][count - 1]):.4f}")
                if received:
                    break
            bar.close()
            seconds = (time.perf_counter() - t0) / len(runs)
            for run in runs:
                run.meta["train_seconds"] += seconds
            if not any(r.active for r in runs):
                break
            if received:
                step_now = _step(state)
                for run, item in zip(runs, group.items(state), strict=True):
                    if run.active:
                        run.save(step_now, item)
                close_all("interrupted")
                raise Interrupted(
                    received[0],
                    f"interrupted by signal {received[0]} in epoch {epoch + 1} at global step "
                    f"{step_now}; checkpoint saved in {_checkpoint_dirs(runs)}; rerun the same "
                    "command to resume",
                )
            _evaluate_epoch(runs, setup, state, on_epoch)
            if received:
                close_all("interrupted")
                raise Interrupted(
                    received[0],
                    f"interrupted by signal {received[0]} after epoch {epoch + 1}; checkpoint "
                    f"saved in {_checkpoint_dirs(runs)}; rerun the same command to resume",
                )
        # Still under the signal handlers: the last checkpoints' writes and summaries finish.
        close_all("done")
    if received:  # then stop as asked (a sweep must not start its next run)
        raise Interrupted(
            received[0],
            f"interrupted by signal {received[0]} while the finished run was saved; it is "
            f"complete in {', '.join(r.workdir for r in runs)}",
        )
    return _outcomes(runs)


def _account(run, chunk_out, first, count, epoch, group, state, index) -> None:
    """Adds a chunk's losses to ``run``'s epoch sums; a non-finite loss fails the run."""
    losses, correct = chunk_out["loss"], chunk_out["correct"]
    batch_size, steps_per_epoch = run.spec.batch_size, run.spec.steps_per_epoch
    bad = run_metrics.accumulate(run.meta, losses[:count], correct[:count], batch_size)
    if bad is None:
        return
    step = first + bad + 1
    run.error = NonFiniteLossError(
        f"non-finite training loss ({float(losses[bad])}) at epoch {epoch + 1}, step {step} of "
        f"{steps_per_epoch} (global step {epoch * steps_per_epoch + step}); last good "
        f"checkpoint: {run.last_step_text()}"
    )
    run.close("failed", group.items(state)[index]["params"])


def _evaluate_epoch(runs: Sequence[_RunDir], setup: _Setup, state, on_epoch) -> None:
    """Evaluates the finished epoch; writes each active run's row, parameters and checkpoint."""
    spec, group = runs[0].spec, setup.group
    t0 = time.perf_counter()
    sums = device_loop.evaluate_split_seeds if group.grouped else device_loop.evaluate_split
    sums = sums(
        state, *setup.test_data, setup.mean, setup.std, eval_fn=steps.eval_step,
        batch_size=spec.eval_batch_size, batch_sharding=setup.sharded,
    )  # fmt: skip
    per_run = group.per_run(sums)
    eval_seconds = (time.perf_counter() - t0) / len(runs)
    device = f"{jax.devices()[0].device_kind} × {jax.device_count()}"
    step = _step(state)
    items = group.items(state)
    for i, (run, run_sums, item) in enumerate(zip(runs, per_run, items, strict=True)):
        if not run.active:
            continue
        row = run_metrics.epoch_row(
            run.meta["epoch"], step, run.meta, _test_metrics(run_sums), eval_seconds
        )
        row["seeds_in_program"] = len(runs)
        row["device"] = device  # per epoch: a resumed run may have trained elsewhere before
        params = item["params"]
        run.record_epoch(row, params, _report_inputs(spec, params, setup.probe))
        # replace: a checkpoint a signal took at this very step still marks the epoch open.
        run.save(step, item, replace=True)
        if on_epoch is not None:
            on_epoch(i, row)


def _epoch(runs: Sequence[_RunDir]) -> int:
    """The 0-based epoch the group's active runs are in."""
    return next(run for run in runs if run.active).meta["epoch"]


def _outcomes(runs: Sequence[_RunDir]) -> list[dict[str, Any] | NonFiniteLossError]:
    return [run.error or (run.history[-1] if run.history else {}) for run in runs]


def _checkpoint_dirs(runs: Sequence[_RunDir]) -> str:
    return ", ".join(run.ckpt.directory for run in runs if run.active)


# --------------------------------------------------------------------------- keys, chunks, eval


def _seed_keys(
    seed: int | Sequence[int], sharding: jax.sharding.Sharding
) -> tuple[jax.Array, jax.Array]:
    """(init key, train key) from ``seed``, replicated on ``sharding``'s mesh; for a seed group,
    each stacked over its seeds."""
    return _jit_seed_keys(sharding)(device_loop.seeds_array(seed))


@functools.lru_cache(maxsize=8)
def _jit_seed_keys(sharding: jax.sharding.Sharding):
    def keys(seed):
        pair = jax.random.split(jax.random.key(seed))
        return pair[0], pair[1]

    return device_loop.jit_per_seed(keys, sharding)


def _run_chunk(
    state, data, order, first, count, rng, mean, std, *, spec: RunSpec, sharding, seed_group
):
    """Steps ``first .. first + count - 1`` of an epoch as one program (the state is donated)."""
    images, labels = data
    chunk = device_loop.train_chunk_seeds if seed_group else device_loop.train_chunk
    return chunk(
        state, images, labels, order, np.int32(first), np.int32(count), rng, mean, std,
        step_fn=steps.step_fn(spec.microbatches), batch_size=spec.batch_size,
        length=spec.chunk_length, batch_sharding=sharding,
    )  # fmt: skip


def evaluate(
    state: steps.TrainState,
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
        state, *test_data, mean, std, eval_fn=steps.eval_step, batch_size=batch_size,
        batch_sharding=sharding,
    )  # fmt: skip
    return _test_metrics(jax.device_get(sums))


def _test_metrics(sums: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean loss and accuracy from per-batch sums, added in float64."""
    totals = {k: float(np.sum(np.asarray(v, np.float64))) for k, v in sums.items()}
    return {
        "loss": totals["loss_sum"] / totals["count"],
        "accuracy": totals["correct"] / totals["count"],
    }


def _probe_images(spec: RunSpec, data, mean, std) -> jax.Array | None:
    """The first test images, preprocessed, for poolers whose report needs the pool inputs."""
    if spec.pooler != "lip":
        return None
    return steps.preprocess(jnp.asarray(data.test.images[:PROBE_IMAGES]), mean, std)


def _report_inputs(spec: RunSpec, params, probe) -> dict[str, jax.Array] | None:
    """The pool slots' inputs on the probe images (LIP's report describes its logits there)."""
    if probe is None:
        return None
    return models.pool_inputs(steps.model(spec), params, probe)


def _step(state: steps.TrainState) -> int:
    """The global step (the same for every seed of a group)."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _index(tree, i: int):
    """Seed ``i``'s slice of a group's tree: arrays, 0-d for scalars (as a separate run's host
    values), not NumPy scalars."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a[i]), tree)


def _ckpt_target(state: steps.TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _stack(items: Sequence[dict[str, Any]], sharding: jax.sharding.Sharding) -> dict[str, Any]:
    """Host checkpoint items of a group's runs stacked along a leading seed axis, on the mesh."""
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *items)
    return jax.tree_util.tree_map(lambda a: device_loop.put_replicated(a, sharding), stacked)


# --------------------------------------------------------------------------- signals


@contextlib.contextmanager
def _catch_signals():
    """Records SIGINT/SIGTERM in a list instead of dying, while the block runs.  The list starts
    with the Ctrl-C a command recorded before and Python dropped (:mod:`train.core.interrupts`)."""
    received: list[int] = interrupts.take()
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
