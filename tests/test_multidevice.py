"""Every pooler end to end (digits on 8 virtual CPU devices, mock TFDS MNIST on 1); 1 device vs
8 devices vs 2 processes; and every pooler's gradient partitioned along a sharded batch.

The device count of a JAX process is fixed at start-up, hence subprocesses. Compilation dominates
these tiny runs, so the subprocesses ask XLA for its cheapest optimisation level and run side by
side to use both cores of a small CI machine.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import pytest
from conftest import run_on_cpu_devices

import jaxpool

ROOT = pathlib.Path(__file__).resolve().parents[1]

# argv: workdir, dataset ("digits" or a TFDS name served by tfds.testing.mock_data), poolers...
# Trains one epoch per pooler and prints {pooler: final metrics} as JSON on the last line.
SCRIPT = """
import json, sys
from unittest import mock
import jax
import tensorflow_datasets as tfds
from configs import digits
from train.core import loop

workdir, dataset, poolers = sys.argv[1], sys.argv[2], sys.argv[3:]
out = {"devices": jax.device_count()}
for pooler in poolers:
    config = digits.get_config()
    config.update(num_epochs=1, pooler=pooler, progress=False, dataset=dataset)
    if dataset == "digits":
        out[pooler] = loop.train_and_evaluate(config, f"{workdir}/{pooler}")
        continue
    config.update(batch_size=16, data_dir="/nonexistent")
    # as conftest.mock_tfds: the mock has no files, and its metadata says tfrecord
    array_record = mock.PropertyMock(return_value=tfds.core.FileFormat.ARRAY_RECORD)
    with tfds.testing.mock_data(num_examples=48), mock.patch.object(
        tfds.core.DatasetBuilder, "is_prepared", return_value=True
    ), mock.patch.object(tfds.core.DatasetInfo, "file_format", new_callable=lambda: array_record):
        out[pooler] = loop.train_and_evaluate(config, f"{workdir}/{pooler}")
print(json.dumps(out))
"""


def _start(workdir, dataset: str, poolers, devices: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    )
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(workdir), dataset, *poolers],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen, devices: int) -> dict:
    stdout, stderr = proc.communicate(timeout=500)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out.pop("devices") == devices
    return out


def _assert_finite(results: dict) -> None:
    for pooler, metrics in results.items():
        for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            assert math.isfinite(metrics[key]), (pooler, key)


@pytest.mark.slow
def test_every_pooler_trains_on_digits_with_8_devices_and_on_mock_tfds_with_1(tmp_path):
    names = jaxpool.available()
    # blur does not fit 8x8 digits (test_models): it runs on the 28x28 mock data only.
    digits = [name for name in names if name != "blur"]
    # The TFDS path on 28x28 images: blur, and one pooler of each kind (plain, learned per
    # position, random, learned convolution); every pooler's layer on 28x28 is in test_models.
    mock = ["blur", "max", "tdgs", "s3", "lip"]
    # 8-device compilation costs about twice the 1-device one: two processes share the digits runs.
    procs = [
        (_start(tmp_path / "digits", "digits", digits[0::2], devices=8), 8),
        (_start(tmp_path / "digits", "digits", digits[1::2], devices=8), 8),
        (_start(tmp_path / "mock", "mnist", mock, devices=1), 1),
    ]
    first, second, on_mock = (_result(proc, devices) for proc, devices in procs)
    on_digits = {**first, **second}
    assert set(on_digits) == set(digits) and set(on_mock) == set(mock)
    _assert_finite(on_digits)
    _assert_finite(on_mock)
    for pooler in digits:
        assert on_digits[pooler]["step"] == 1438 // 64
    for pooler in mock:
        assert on_mock[pooler]["step"] == 48 // 16
        with open(tmp_path / "mock" / pooler / "pooler_params.json") as f:
            assert set(json.load(f)["layers"]) == {"pool1", "pool2", "pool3"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_one_device_eight_devices_and_two_processes_agree(tmp_path):
    """Max pooling on digits: 1 device, 8 devices, and 2 processes x 2 devices (multi-host on one
    machine, ``jax.distributed`` configured from the environment) give the same metrics."""
    port = _free_port()
    args = ["--dataset", "digits", "--pooler", "max", "--epochs", "1", "--quiet"]
    multi = []
    for process_id in (0, 1):
        env = dict(os.environ)
        env.update(
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process_id),
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
        )
        multi.append(
            subprocess.Popen(
                [sys.executable, "-m", "train.main", *args, "--workdir", str(tmp_path / "multi")],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    single = _start(tmp_path / "one", "digits", ["max"], devices=1)
    eight = _start(tmp_path / "eight", "digits", ["max"], devices=8)
    for proc in multi:
        _, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, stderr[-3000:]
    one = _result(single, 1)["max"]
    runs = {"eight": _result(eight, 8)["max"]}
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert (summary["num_processes"], summary["num_devices"]) == (2, 4)
    runs["two processes"] = summary["final"]
    with open(tmp_path / "eight" / "max" / "summary.json") as f:
        assert json.load(f)["num_devices"] == 8
    # Same data order, keys and global batch; only the reduction order of the per-device sums
    # differs, which moves float32 results by rounding noise (~1e-7 relative per step), far
    # below these tolerances after 22 steps.
    for name, run in runs.items():
        assert run["step"] == one["step"] == 1438 // 64, name
        assert run["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4), name
        assert run["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4), name
        assert run["train_accuracy"] == pytest.approx(one["train_accuracy"], abs=1.5 / 1408), name
        assert run["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1.5 / 359), name


PARTITION_SCRIPT = """
import math, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jaxpool

mesh = Mesh(np.array(jax.devices()), ("data",))
# 16x16 maps: each device's pooled output (2, 8, 8, 4) outsizes every pooler's parameters, so an
# all-reduce smaller than that is not one of activations.
x = jax.device_put(jnp.ones((16, 16, 16, 4)), NamedSharding(mesh, P("data")))
for name in jaxpool.available():
    module = jaxpool.create(name)
    keys = {"params": jax.random.key(1), "pooling": jax.random.key(2)}
    variables = module.init(keys, x, deterministic=True)
    params = variables.get("params", {})

    def loss(p, v, k):
        y = module.apply({"params": p}, v, deterministic=False, rngs={"pooling": k})
        return (y**2).sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    hlo = grad.lower(params, x, jax.random.key(0)).compile().as_text()
    moves = re.findall(r" (all-gather|all-to-all|collective-permute)(?:-start)?\\(", hlo)
    assert not moves, (name, moves)
    # Only parameter gradients are summed: no all-reduce without parameters, and with them none
    # as large as one device's activations (however XLA splits or combines the gradients).
    reduced = [
        sum(math.prod(int(d) for d in dims.split(",") if d) for dims in shapes)
        for line in hlo.splitlines()
        if re.search(r" all-reduce(?:-start)?\\(", line)
        for shapes in [re.findall(r"f32\\[([\\d,]*)\\]", re.split(r" all-reduce", line)[0])]
    ]
    size = sum(p.size for p in jax.tree_util.tree_leaves(params))
    activations = 2 * 8 * 8 * 4  # one device's pooled output
    assert size < activations, (name, size)
    assert (reduced and max(reduced) < activations) if size else not reduced, (name, reduced)
print("ok")
"""


def test_every_pooler_partitions_along_a_sharded_batch():
    """Forward and backward of every pooler on a batch sharded over 8 devices: each device works
    on its own examples (noise included) and only the parameter gradient is summed across them;
    no activation or noise is gathered or moved between devices."""
    flags = "--xla_backend_optimization_level=0"
    assert run_on_cpu_devices(PARTITION_SCRIPT, flags=flags) == "ok"
