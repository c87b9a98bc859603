"""The JSON files of a run directory: written atomically, read back tolerantly."""

from __future__ import annotations

import json
import math
import os
from typing import Any

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


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON; atomic, so a crash never leaves a half-written file."""
    write_text(path, json.dumps(obj, indent=1) + "\n")


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: a crash or a signal
    leaves the old file or the new one, never a truncated one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_metrics(path: str, upto_epoch: int) -> list[dict[str, Any]]:
    """Lines of ``metrics.jsonl`` for epochs <= ``upto_epoch`` (later ones are from a lost run)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
            if row.get("epoch", 0) <= upto_epoch:
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


def changed_run_fields(old: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """The :data:`RUN_FIELDS` whose value in ``config`` differs from ``old``, a run's saved
    ``config.json``."""
    new = json.loads(config.to_json_best_effort())
    return [k for k in RUN_FIELDS if old.get(k) != new.get(k)]
