"""Tests of train/xla_cpu.py: when the XNNPACK convolution flags are added to XLA_FLAGS."""

from __future__ import annotations

import os
import subprocess
import sys

from train import xla_cpu


def test_flags_added_on_jaxlib_0_10_after_existing_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.prefer_xnnpack_convolutions(env, "0.10.2")
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        *xla_cpu.CONV_FLAGS,
    ]
    assert not xla_cpu.prefer_xnnpack_convolutions(env, "0.10.2")  # not twice


def test_user_choice_and_unverified_jaxlib_are_left_alone():
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert not xla_cpu.prefer_xnnpack_convolutions(mine, "0.10.2")
    assert mine == {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    for version in ("0.9.1", "0.11.0", ""):
        env = {}
        assert not xla_cpu.prefer_xnnpack_convolutions(env, version)
        assert env == {}


def test_importing_train_sets_them_before_jax_starts_and_jax_accepts_them():
    code = (
        "import os, train, jax, jax.numpy as jnp; "
        "print(os.environ['XLA_FLAGS']); print(float(jnp.ones(3).sum()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split("\n")
    if xla_cpu._jaxlib_version().startswith(xla_cpu.VERIFIED_JAXLIB):
        assert out[0].split() == list(xla_cpu.CONV_FLAGS)
    assert out[1] == "3.0"
