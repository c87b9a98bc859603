"""The command line: error cases exit 2 with one line; a tiny run prints its summary lines."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (arguments, devices, expected message): each must exit 2 with one line on stderr.
ERRORS = [
    (
        ["--pooler", "median", "--dataset", "digits"],
        1,
        "unknown pooler 'median'; choose one of: max",
    ),
    (["--dataset", "svhn"], 1, "unknown dataset 'svhn'; choose one of: mnist, cifar10"),
    (["--dataset", "digits", "--epochs", "0"], 1, "epochs must be a positive integer, got 0"),
    (["--batch-size", "many"], 1, "flag --batch-size=many: invalid literal for int()"),
    (["--dataset", "digits", "--learning-rate", "-1"], 1, "learning rate must be a positive"),
    (["--no-such-flag"], 1, "Unknown command line flag 'no-such-flag'"),
    (["--dataset", "digits", "--pooler-kwargs", "{oops"], 1, "--pooler-kwargs is not valid JSON"),
    (["--pooler", "max", "--pooler-kwargs", '{"tau": 1}'], 1, "bad pooler_kwargs {'tau': 1}"),
    (["--config", "configs/none.py"], 1, "cannot load --config: [Errno 2] No such file"),
    (["--config", "configs/digits.py", "--config.epochs=3"], 1, "unknown config field 'epochs'"),
    (["--dataset", "digits", "--batch-size", "12"], 8, "batch size 12 does not divide by the 8"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}"], 1, "dataset 'cifar10' is not prepared in"),
]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _start(args: list[str], devices: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "train.main", *args],
        cwd=ROOT,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_each_error_exits_2_with_one_line(tmp_path):
    # Started together: each one pays Python and JAX start-up, not training.
    procs = []
    for args, devices, message in ERRORS:
        args = [a.replace("{tmp}", str(tmp_path)) for a in args]
        procs.append((args, message, _start(args, devices)))
    for args, message, proc in procs:
        _, stderr = proc.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (args, stderr[-2000:])
        assert len(lines) == 1, (args, stderr[-2000:])
        assert lines[0].startswith("error: ") and message in lines[0], (args, lines)
        assert "Traceback" not in stderr


@pytest.mark.slow
def test_tiny_run_prints_epoch_lines_and_writes_outputs(tmp_path):
    workdir = tmp_path / "run"
    args = ["--dataset", "digits", "--pooler", "avg", "--epochs", "2", "--batch-size", "128"]
    args += ["--seed", "1", "--workdir", str(workdir), "--quiet"]
    proc = _start(args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("epoch 1/2  train loss ")
    assert "img/s" in lines[1]
    assert lines[-1].startswith("done: avg on digits, 2 epochs: test accuracy ")
    for name in ("config.json", "metrics.jsonl", "pooler_params.json", "summary.json"):
        assert (workdir / name).is_file(), name
    config = json.loads((workdir / "config.json").read_text())
    assert (config["pooler"], config["num_epochs"], config["batch_size"]) == ("avg", 2, 128)
    assert config["seed"] == 1 and config["progress"] is False
