"""Orbax checkpoints of a training run: save by step, restore the newest readable one.

A checkpoint holds a pytree of arrays (``train.core.loop`` saves params, optimizer state and step) and a
small JSON dict (where in the run it was taken, the running sums of the current epoch). Restoring
walks the steps from newest to oldest: a step whose files are corrupt or partial is reported and
skipped, so a crash while writing costs at most one checkpoint; when training reaches that step
again, its new checkpoint replaces the unreadable one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from train.core import interrupts, run_files

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Restored:
    """What :meth:`Checkpoints.restore_latest` found.

    Attributes:
      step: the step that was restored.
      item: the restored pytree, with the structure, dtypes and shardings of the target.
      meta: the JSON dict saved with it.
      skipped: ``(step, reason)`` for every newer checkpoint that could not be read.
    """

    step: int
    item: Any
    meta: dict[str, Any]
    skipped: tuple[tuple[int, str], ...] = ()


class Checkpoints:
    """A thin wrapper of ``ocp.CheckpointManager`` in ``directory``.

    Args:
      directory: where the step folders live (created if needed).
      max_to_keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )
        self._unreadable: set[int] = set()  # steps restore_latest could not read
        self._closed = False

    def all_steps(self) -> list[int]:
        """Steps of the finalised checkpoints, oldest first (unfinished writes are not listed)."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, item: Any, meta: dict[str, Any], *, replace: bool = False) -> bool:
        """Saves ``item`` and ``meta`` as ``step`` (asynchronously).

        Args:
          step: the step number.
          item: the pytree.
          meta: the JSON dict.
          replace: replace a checkpoint that exists at ``step``.

        Returns:
          False (and saves nothing) if ``step`` already exists, unless ``replace`` or
          :meth:`restore_latest` found it unreadable: then it is deleted and replaced.

        Raises:
          run_files.WriteError: this save, or an earlier one still pending, failed.
        """
        self.wait()  # an earlier save's error is that one's, not this step's
        if step in self._manager.all_steps():
            if not replace and step not in self._unreadable:
                return False
            if step in self._unreadable:
                logger.warning("replacing the unreadable checkpoint at step %d", step)
            self._manager.delete(step)
            self._unreadable.discard(step)
        args = ocp.args.Composite(item=ocp.args.StandardSave(item), meta=ocp.args.JsonSave(meta))
        with self._writing(f"the checkpoint of step {step}"):
            self._manager.save(step, args=args, force=True)
        return True

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Orbax's error from writing ``what`` as a :class:`run_files.WriteError` in one line
        (orbax raises a save's error at the next save or wait, whatever it was)."""
        try:
            yield
        except Exception as e:
            raise run_files.WriteError(
                f"cannot write {what} in {self.directory}: {_reason(e)}"
            ) from e

    def restore_latest(self, target: Any) -> Restored | None:
        """Restores the newest readable checkpoint into the structure of ``target``.

        Args:
          target: a pytree like the saved one (concrete or ``jax.ShapeDtypeStruct`` leaves); its
            shardings say where the restored arrays go.

        Returns:
          A :class:`Restored`, or ``None`` when there is no readable checkpoint.
        """
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        for name in sorted(os.listdir(self.directory)):
            if not name.isdigit() and name.split(".")[0].isdigit():
                logger.warning(
                    "ignoring %s: a checkpoint whose writing has not finished (still being "
                    "written, or the process was stopped while saving)",
                    os.path.join(self.directory, name),
                )
        skipped = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                args = ocp.args.Composite(
                    item=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                )
                restored = self._manager.restore(step, args=args)
            except Exception as e:  # any unreadable checkpoint: fall back to an older one
                if interrupts.received():
                    # A Ctrl-C while reading, which orbax turns into an error of its own: the
                    # checkpoint is not damaged, and the command stops.
                    raise KeyboardInterrupt from e
                reason = _reason(e)
                logger.warning(
                    "checkpoint at step %d is unreadable (%s); trying an older one", step, reason
                )
                skipped.append((step, reason))
                self._unreadable.add(step)
                continue
            return Restored(step, restored.item, dict(restored.meta), tuple(skipped))
        return None

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk.

        Raises:
          run_files.WriteError: a pending save failed.
        """
        with self._writing("a checkpoint"):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager; closing it again does nothing.

        Raises:
          run_files.WriteError: a pending save failed (the manager is released all the same).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        except run_files.WriteError:
            with contextlib.suppress(Exception):  # its own error, if any, is the same failure
                self._manager.close()
            raise
        with self._writing("a checkpoint"):
            self._manager.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close_quietly(self) -> None:
        """:meth:`close` after a failure: a pending save's error is logged, not raised."""
        try:
            self.close()
        except run_files.WriteError as e:  # names the directory itself
            logger.warning("%s", e)
        except Exception as e:
            logger.warning("%s: %s", self.directory, _reason(e))


def _reason(e: BaseException) -> str:
    """An exception's first line, without TensorStore's appended repr of a bound method; for a
    TensorStore error from the system (``[os_error_code='28']``), the system's words for it."""
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    code = re.search(r"\[os_error_code='(\d+)'\]", reason)
    if code:
        return os.strerror(int(code.group(1)))
    return reason.split(" See full TensorStore details")[0][:300]
