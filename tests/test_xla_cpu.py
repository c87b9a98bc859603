"""Tests of train/core/xla_cpu.py: when the XNNPACK convolution and vector-width flags are added to
XLA_FLAGS."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from train import cli
from train.benchmarks import measure
from train.core import xla_cpu, xla_gpu

# XLA:CPU flags, verified against the jaxlib that runs the CPU backend: CPU-only.
pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="XLA:CPU flags: checked where the backend is the CPU"
)


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


def test_the_cli_sets_them_before_jax_starts_and_jax_accepts_them():
    show = (
        "import os, jax.numpy as jnp; from train import cli; "
        "cli.run_main(lambda argv: print(os.environ.get('XLA_FLAGS', ''), argv[1:], "
        "float(jnp.ones(3).sum()), sep='\\n') or 0, ['x', {}])"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    expected = [xla_gpu.DETERMINISTIC_FLAG]
    if xla_cpu._jaxlib_version().startswith(xla_cpu.VERIFIED_JAXLIB):
        expected += xla_cpu.CONV_FLAGS
        if "avx512f" in xla_cpu._cpu_flags():
            expected.append(xla_cpu.VECTOR_FLAG)
    for args, want in (("'--y'", expected), (f"'{cli.NO_CPU_TUNING}', '--y'", expected[:1])):
        out = subprocess.run(
            [sys.executable, "-c", show.format(args)],
            capture_output=True, text=True, env=env, check=True,
        ).stdout.split("\n")  # fmt: skip
        assert out[0].split() == want
        assert out[1:3] == ["['--y']", "3.0"]  # the tuning flag is not passed on


def test_importing_the_packages_changes_no_global_state():
    code = "import os, jaxpool, train, train.main; print(os.environ.get('XLA_FLAGS', '<unset>'))"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "<unset>"


def test_wide_vectors_only_on_avx512_verified_jaxlib_and_not_over_the_user():
    avx512 = {"sse2", "avx2", "avx512f"}
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.prefer_wide_vectors(env, "0.10.2", avx512)
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        xla_cpu.VECTOR_FLAG,
    ]
    assert not xla_cpu.prefer_wide_vectors(env, "0.10.2", avx512)  # not twice
    mine = {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=256"}
    assert not xla_cpu.prefer_wide_vectors(mine, "0.10.2", avx512)
    assert mine == {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=256"}
    for version, flags in (("0.10.2", {"sse2", "avx2"}), ("0.10.2", set()), ("0.11.0", avx512)):
        env = {}
        assert not xla_cpu.prefer_wide_vectors(env, version, flags)
        assert env == {}


def test_cpu_flags_are_read_from_proc_cpuinfo_where_it_exists():
    flags = xla_cpu._cpu_flags()
    if os.path.exists("/proc/cpuinfo") and sys.platform.startswith("linux"):
        with open("/proc/cpuinfo") as f:
            text = f.read()
        assert "flags" not in text or flags  # x86 Linux lists them; some arches do not
        assert all(flag in text for flag in flags)
    else:
        assert flags == set()


@pytest.mark.parametrize("name", ["tdgs", "stochastic", "gated"])
def test_wide_vectors_give_bitwise_the_same_pooling(name):
    # prefer_wide_vectors promises only speed: the same step compiled for 256- and 512-bit vectors
    # must give the same output and gradients to the bit (exp/log included).
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU compile option")
    step, args = measure.pooler_step(name, (2, 8, 8, 16))
    lowered = step.lower(*args)
    outs = [
        lowered.compile(compiler_options={"xla_cpu_prefer_vector_width": width})(*args)
        for width in (256, 512)
    ]
    leaves = [jax.tree_util.tree_leaves(out) for out in outs]
    assert len(leaves[0]) >= 2  # y, d x (and d params)
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
