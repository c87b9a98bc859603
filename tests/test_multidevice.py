"""Data parallelism: the same run on 1 and 8 (virtual CPU) devices, in subprocesses."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

import jaxpool

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Trains one digits epoch per pooler named on the command line; prints the final metrics as JSON.
SCRIPT = """
import json, sys
import jax
from configs import digits
from train import train_lib

out = {"devices": jax.device_count()}
for pooler in sys.argv[2:]:
    config = digits.get_config()
    config.update(num_epochs=1, pooler=pooler, progress=False)
    out[pooler] = train_lib.train_and_evaluate(config, f"{sys.argv[1]}/{pooler}")
print(json.dumps(out))
"""


def _start(workdir, poolers, devices: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(workdir), *poolers],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen, devices: int) -> dict:
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out.pop("devices") == devices
    return out


@pytest.mark.slow
def test_eight_devices_match_one_device_and_run_every_pooler(tmp_path):
    # Compilation dominates; split the poolers over two processes so both cores work.
    names = jaxpool.available()
    procs = [
        (_start(tmp_path / "one", ["max"], devices=1), 1),
        (_start(tmp_path / "eight", names[0::2], devices=8), 8),
        (_start(tmp_path / "eight", names[1::2], devices=8), 8),
    ]
    results = [_result(proc, devices) for proc, devices in procs]
    one = results[0]["max"]
    eight = {**results[1], **results[2]}
    assert set(eight) == set(names)
    for pooler in jaxpool.available():
        for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            assert math.isfinite(eight[pooler][key]), (pooler, key)
    # Same data, keys and global batch; only the reduction order of the gradient sums differs,
    # which moves the float32 results by rounding noise, far below these tolerances.
    many = eight["max"]
    assert many["step"] == one["step"] == 1438 // 64
    assert many["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert many["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4)
    assert many["train_accuracy"] == pytest.approx(one["train_accuracy"], abs=1.5 / 1408)
    assert many["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1.5 / 359)
    with open(tmp_path / "eight" / "max" / "summary.json") as f:
        assert json.load(f)["num_devices"] == 8
