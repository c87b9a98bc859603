"""Tests of train/core/xla_gpu.py: when deterministic XLA:GPU ops are requested in XLA_FLAGS."""

from __future__ import annotations

from train.core import xla_gpu


def test_deterministic_gpu_ops_are_requested_unless_the_user_chose():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_gpu.request_deterministic_ops(env)
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        xla_gpu.DETERMINISTIC_FLAG,
    ]
    assert not xla_gpu.request_deterministic_ops(env)  # not twice
    for mine in ("--xla_gpu_deterministic_ops=false", "--xla_gpu_exclude_nondeterministic_ops"):
        env = {"XLA_FLAGS": mine}
        assert not xla_gpu.request_deterministic_ops(env) and env == {"XLA_FLAGS": mine}
