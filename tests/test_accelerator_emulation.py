"""tests/accelerator_emulation.py: the rounding, and that installed it changes default-precision
matmuls and convolutions only and makes 'auto' take the reference paths (in a fresh process: it
would change every later test)."""

from __future__ import annotations

import json

import accelerator_emulation
import jax.numpy as jnp
import numpy as np
import pytest
from accelerator_emulation import round_mantissa
from conftest import run_on_cpu_devices


@pytest.mark.parametrize("bits", [10, 7])
def test_rounding_keeps_the_mantissa_bits_to_nearest_even(bits):
    one = 1.0
    ulp = 2.0**-bits  # the spacing at 1
    x = jnp.array(
        [one + ulp / 4, one + 3 * ulp / 4, one + ulp / 2, one + 3 * ulp / 2, -(one + 3 * ulp / 4)],
        jnp.float32,
    )
    # below half: down; above half: up; exactly half: to the even neighbour (1, then 1 + 2 ulp)
    want = [one, one + ulp, one, one + 2 * ulp, -(one + ulp)]
    np.testing.assert_array_equal(round_mantissa(x, bits), np.array(want, np.float32))
    assert round_mantissa(jnp.ones(2, jnp.bfloat16), bits).dtype == jnp.bfloat16  # untouched


def test_an_unknown_accelerator_is_refused():
    with pytest.raises(ValueError, match="JAXPOOL_TEST_AS: expected one of"):
        accelerator_emulation.install("fpga")


EMULATED = """
import sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
import accelerator_emulation
from jaxpool import _windows
assert _windows.use_fast("auto", True)
accelerator_emulation.install("gpu")
assert not _windows.use_fast("auto", True) and _windows.use_fast("fast", True)
x = jax.random.normal(jax.random.key(0), (64, 64))
y = jax.random.normal(jax.random.key(1), (64, 64))
exact = np.asarray(x, np.float64) @ np.asarray(y, np.float64)
k = jax.random.normal(jax.random.key(2), (3, 3, 4, 4))
im = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))
conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
r = lambda a: accelerator_emulation.round_mantissa(a, 10)
with jax.default_matmul_precision("highest"):
    matmul_highest = float(np.abs(np.asarray(x @ y) - exact).max())
    conv_highest = np.asarray(jax.jit(conv)(im, k))
    # what the emulation must compute: float32 products of the rounded operands
    matmul_rounded = np.asarray(r(x) @ r(y))
    conv_rounded = np.asarray(conv(r(im), r(k)))
    grad_highest = np.asarray(jax.grad(lambda b: conv(im, b).sum())(k))
    grad_rounded = np.asarray(jax.grad(lambda b: conv(r(im), b).sum())(k))
matmul_default = np.asarray(jax.jit(jnp.dot)(x, y))
conv_default = np.asarray(conv(im, k))
# reverse mode: the kernel's gradient of sum(conv) is itself a default-precision convolution
grad = np.asarray(jax.grad(lambda b: conv(im, b).sum())(k))
print(
    matmul_highest,
    float(np.abs(matmul_default - exact).max()),
    float(np.abs(matmul_default - matmul_rounded).max()),
    float(np.abs(conv_default - conv_highest).max()),
    float(np.abs(conv_default - conv_rounded).max()),
    float(np.abs(grad - grad_highest).max()),
    float(np.abs(grad - grad_rounded).max()),
)
"""


def test_installed_it_rounds_default_precision_matmuls_and_takes_the_reference_paths():
    out = run_on_cpu_devices(EMULATED, devices=1).split()
    highest, default, default_vs_rounded, conv_default, conv_vs_rounded = map(float, out[:5])
    grad_default, grad_vs_rounded = map(float, out[5:])
    assert highest < 1e-4  # float32 against float64, inner dimension 64
    assert default > 1e-3  # TF32: ~1e-3 relative per product
    assert conv_default > 1e-3
    # ... and it is exactly the float32 product of the operands rounded to TF32 (up to the order
    # of the float32 sums: 64 terms of magnitude <= ~10)
    assert default_vs_rounded < 1e-4 and conv_vs_rounded < 1e-4
    # reverse mode: the kernel's gradient, a convolution of the input with the cotangent (ones),
    # is rounded too
    assert grad_default > 1e-3 and grad_vs_rounded < 1e-4


TRANSCENDENTALS = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
import accelerator_emulation
x = jax.random.normal(jax.random.key(0), (20000,)) * 4
fns = {
    "exp": jnp.exp, "log": lambda v: jnp.log(jnp.abs(v)), "tanh": jnp.tanh,
    "pow": lambda v: jnp.abs(v) ** 2.5, "sigmoid": jax.nn.sigmoid,
}
before = {name: np.asarray(jax.jit(f)(x)) for name, f in fns.items()}
accelerator_emulation.install("gpu")
fresh = {  # new functions: new programs, lowered with the emulation
    "exp": lambda v: jnp.exp(v), "log": lambda v: jnp.log(jnp.abs(v)), "tanh": lambda v: jnp.tanh(v),
    "pow": lambda v: jnp.abs(v) ** 2.5, "sigmoid": lambda v: jax.nn.sigmoid(v),
}
out = {}
for name, f in fresh.items():
    ulps = np.asarray(jax.jit(f)(x)).view(np.int32).astype(np.int64) - before[name].view(np.int32)
    out[name] = [int(ulps.min()), int(ulps.max()), float((ulps != 0).mean())]
# the same input gives the same output in another program, and exact results stay exact
inside = jax.jit(lambda v: (jnp.exp(v) * 2.0, jnp.exp(v[::-1])))(x)
alone = jax.jit(lambda v: jnp.exp(v))(x)
out["same"] = bool((inside[0] / 2 == alone).all() and (inside[1] == alone[::-1]).all())
exact = jax.jit(lambda: (jnp.exp(0.0), jnp.log(1.0), jnp.tanh(0.0), jnp.float32(3.0) ** 1.0))()
out["exact"] = [float(v) for v in exact]
big = jax.jit(lambda v: (jnp.tanh(v * 10), jnp.exp(v * 1e-7)))(x)
out["tanh_max"] = float(jnp.abs(big[0]).max())
out["exp_side"] = not bool((((big[1] > 1) & (x < 0)) | ((big[1] < 1) & (x > 0))).any())
print(json.dumps(out))
"""


def test_installed_it_moves_transcendental_results_by_a_few_ulp():
    out = json.loads(run_on_cpu_devices(TRANSCENDENTALS, devices=1))
    for name in ("exp", "log", "tanh", "pow"):
        lo, hi, share = out[name]
        assert (lo, hi) == (-2, 2) and share > 0.7, (name, out[name])  # 4 of 5 hashes move
    # sigmoid = 1 / (1 + exp(-x)) moves with exp: by its 2 ulp where sigmoid(x) ~ exp(x) (x << 0),
    # and a rounding of the sum and the division on top
    lo, hi, share = out["sigmoid"]
    assert max(-lo, hi) <= 4 and share > 0.3, out["sigmoid"]
    assert out["same"]
    # exp(0) = 1, log(1) = 0, tanh(0) = 0, 3 ** 1 = 3; tanh within [-1, 1]; exp(v) not past 1 from v's side
    assert out["exact"] == [1.0, 0.0, 0.0, 3.0]
    assert out["tanh_max"] == 1.0 and out["exp_side"]


def test_deterministic_gpu_ops_are_recognised_in_xla_flags():
    on = (
        "--xla_gpu_deterministic_ops=true",
        "--a=1 --xla_gpu_deterministic_ops",
        "--xla_gpu_exclude_nondeterministic_ops=1",
    )
    off = ("", "--xla_gpu_deterministic_ops=false", "--xla_gpu_deterministic_ops_x=true")
    assert all(accelerator_emulation.deterministic_gpu_ops(flags) for flags in on)
    assert not any(accelerator_emulation.deterministic_gpu_ops(flags) for flags in off)


SELECT_AND_SCATTER = """
import sys
import flax.linen as nn
import jax, jax.numpy as jnp
sys.path.insert(0, "tests")
import accelerator_emulation
import jaxpool
accelerator_emulation.install(sys.argv[1])
x = jnp.ones((1, 8, 8, 2))
for pool in (jaxpool.max_pool, jaxpool.max_blur_pool):  # no select-and-scatter: they compile
    jax.grad(lambda v: pool(v).sum())(x)
try:
    jax.grad(lambda v: nn.max_pool(v, (2, 2), (2, 2)).sum())(x)
    print("compiled")
except NotImplementedError as e:
    print("refused" if "--xla_gpu_deterministic_ops" in str(e) else str(e))
"""


@pytest.mark.parametrize(
    ("accelerator", "flags", "want"),
    [
        ("gpu", "--xla_gpu_deterministic_ops=true", "refused"),
        ("gpu", "", "compiled"),
        ("tpu", "--xla_gpu_deterministic_ops=true", "compiled"),
    ],
)
def test_installed_for_a_gpu_with_deterministic_ops_it_refuses_select_and_scatter(
    accelerator, flags, want
):
    script = SELECT_AND_SCATTER.replace("sys.argv[1]", repr(accelerator))
    assert run_on_cpu_devices(script, devices=1, flags=flags) == want
