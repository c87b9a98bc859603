"""The JSON files of a run directory: written atomically, read back tolerantly."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import secrets
from collections.abc import Iterator
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; nothing keeps two processes apart there
    fcntl = None

import ml_collections

# Fields that define a run: a workdir holding a run with other values is not resumed.
RUN_FIELDS = (
    "dataset",
    "pooler",
    "pooler_kwargs",
    "learning_rate",
    "batch_size",
    "seed",
    "standardize",
)


LOCK_FILE = ".lock"  # in a run directory, held by the process that trains the run


class RunDirInUse(Exception):
    """Another process holds the run directory's lock: it is training that run.

    Attributes:
      holder: ``"process <pid>"``, or ``"another process"`` where its lock file says no pid.
    """

    def __init__(self, run_dir: str, holder: str):
        super().__init__(
            f"{run_dir} is in use: {holder} is training this run; wait for it to end, or use "
            "another directory"
        )
        self.holder = holder


class WriteError(Exception):
    """A run's files or checkpoint could not be written (a full disk, lost permissions); the
    message says which and why.  What is on disk stays resumable from its last checkpoint."""


# A filesystem without flock (some network and FUSE mounts) says so with one of these.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
logger = logging.getLogger(__name__)
_held: dict[str, list] = {}  # run directory -> [its open lock file, depth], in this process


@contextlib.contextmanager
def locked_run_dir(run_dir: str) -> Iterator[None]:
    """Holds ``<run_dir>/.lock`` (an advisory ``flock``; the system drops it when the process
    ends, however it ends) while one process trains the run: two ``train.main``, or two sweeps,
    on one run directory would otherwise interleave its metrics and checkpoints.  Creates the
    directory.  Re-entrant within a process (a sweep holds it around a run, its training again).

    Raises:
      RunDirInUse: another process holds it; the message names its process id.
      OSError: the directory or its lock file cannot be made.
    """
    key = os.path.realpath(run_dir)
    if key in _held:
        _held[key][1] += 1
    else:
        os.makedirs(run_dir, exist_ok=True)
        lock = open(os.path.join(run_dir, LOCK_FILE), "a+")
        try:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip()
            lock.close()
            holder = f"process {pid}" if pid.isdigit() else "another process"
            raise RunDirInUse(run_dir, holder) from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                lock.close()
                raise
            logger.warning(  # said, not refused: such a filesystem trained before the lock too
                "cannot lock %s (%s): nothing keeps another process from training this run "
                "at the same time",
                run_dir,
                e.strerror,
            )
        except BaseException:
            lock.close()
            raise
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        _held[key] = [lock, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if not _held[key][1]:
            _held.pop(key)[0].close()  # closing the file releases the lock


def workdir_problem(path: str) -> str | None:
    """Why ``path`` cannot be a workdir (a run's or a sweep's): ``path`` and what is wrong with
    it, or None.  A file, a broken symbolic link (making it said "File exists"), or a path that
    is not valid UTF-8 (orbax cannot write checkpoints there; shown escaped)."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} exists and is not a directory"
    if os.path.islink(path) and not os.path.exists(path):
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return f"{path!a} is not valid UTF-8 (orbax cannot write checkpoints there)"
    return None


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON; atomic, so a crash never leaves a half-written file."""
    write_text(path, json.dumps(obj, indent=1) + "\n")


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: a crash or a signal
    leaves the old file or the new one, never a truncated one.  The temporary file's name is
    unique, so two processes writing one file (two sweeps in one workdir) never share it."""
    folder, name = os.path.split(os.path.abspath(path))
    # O_EXCL on a fresh name: created with the umask's permissions, as open(path, "w") would be
    # (tempfile.mkstemp's are 0600, and reading the umask means setting it, process-wide).
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:  # named after the file the caller writes, not the temporary one
        raise OSError(e.errno, e.strerror, path) from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, path) from e
        raise


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable (not UTF-8, not JSON)
    or not an object: a run directory's files are read tolerantly, a damaged one reads as absent."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The keys of a metrics.jsonl row that readers rely on, and what their values must be.
METRIC_KEYS = {
    "epoch": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "test_accuracy": _number,
    "train_seconds": _number,
    "images_per_second": _number,
    "includes_startup": lambda v: isinstance(v, bool),
}


def read_metrics(path: str, upto_epoch: int) -> list[dict[str, Any]]:
    """Lines of ``metrics.jsonl`` for epochs <= ``upto_epoch`` (later ones are from a lost run).

    A line that is not a JSON object with :data:`METRIC_KEYS` (a torn last line from a crash, a
    damaged file) is left out; an unreadable file reads as empty.
    """
    rows = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:  # missing, a directory, no permission
        return []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not all(ok(row.get(k)) for k, ok in METRIC_KEYS.items()):
            continue
        if row["epoch"] <= upto_epoch:
            rows.append(row)
    return rows


def checkpoint_steps(run_dir: str | os.PathLike) -> list[int]:
    """Steps of the finalised checkpoints in ``<run_dir>/checkpoints``, oldest first, from the
    folder names alone (orbax's unfinished writes carry a suffix and are not counted)."""
    try:
        names = os.listdir(os.path.join(run_dir, "checkpoints"))
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def has_results(run_dir: str | os.PathLike) -> bool:
    """Whether a run directory holds work to keep: a finalised checkpoint or a finished epoch
    (its checkpoints may have been deleted to save space).  Without either, another config may
    start over there."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    return bool(checkpoint_steps(run_dir) or read_metrics(metrics, math.inf))


def stopped_saving_first_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether a run was killed (SIGKILL, a crash, a preempted machine) after writing its first
    epoch's ``metrics.jsonl`` row and before that epoch's checkpoint was finalised: epoch 1's row
    alone, no finalised checkpoint, and no ``summary.json`` or one from before that row (an
    earlier attempt stopped before its first epoch: ``epochs_completed`` 0).  Nothing there can
    be continued, and training the same config again reproduces that row, so starting over loses
    nothing (a run whose checkpoints were deleted by hand has a summary of its epochs or more
    rows, and stays refused)."""
    metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"), math.inf)
    if [row["epoch"] for row in metrics] != [1] or checkpoint_steps(run_dir):
        return False
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.lexists(summary_path):
        return True
    return (read_json(summary_path) or {}).get("epochs_completed") == 0


def changed_run_fields(
    old: dict[str, Any], config: ml_collections.ConfigDict | dict[str, Any]
) -> list[str]:
    """The :data:`RUN_FIELDS` whose value in ``config`` (a config, or one read back from JSON)
    differs from ``old``, a run's saved ``config.json``."""
    new = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())
    return [k for k in RUN_FIELDS if old.get(k) != new.get(k)]
