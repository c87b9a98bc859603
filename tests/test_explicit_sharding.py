"""Every pooler under explicit sharding (``jax.make_mesh``, JAX's default axis type): the batch
sharded over 8 virtual CPU devices gives the values and gradients of an unsharded run, inside a
``jax.set_mesh`` context, and the values outside one.

s3 and fractional with ``per_example=True`` split their keys like the batch, which JAX does only
with the mesh as context: outside one they refuse with a ``ValueError`` that says so.  A
subprocess, because the device count of a JAX process is fixed at start-up.
"""

from __future__ import annotations

import json

import jax
import pytest
from conftest import run_on_cpu_devices

SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
import jaxpool

GEOMETRIES = [{}, {"window_shape": 3, "strides": 2, "padding": "SAME"}]
PER_EXAMPLE = [{}, {"per_example": True}]  # one sample per example: keys split like the batch
BLUR = [{}, {"window_shape": 3, "strides": 2}, {"pad_mode": "edge"}]
OPTIONS = {"s3": PER_EXAMPLE, "fractional": PER_EXAMPLE, "blur": BLUR}
x = jax.random.normal(jax.random.key(0), (16, 8, 8, 4))
mesh = jax.make_mesh((8,), ("data",))
out = {}
for name in jaxpool.available():
    for geometry in OPTIONS.get(name, GEOMETRIES):
        module = jaxpool.create(name, **geometry)
        keys = {"params": jax.random.key(1), "pooling": jax.random.key(2)}
        params = module.init(keys, x, deterministic=True).get("params", {})

        def run(params, x, deterministic):
            def f(p, v):
                rngs = {"pooling": jax.random.key(3)}
                y = module.apply({"params": p}, v, deterministic=deterministic, rngs=rngs)
                return jnp.sum(y * jnp.arange(y.size).reshape(y.shape) / y.size), y

            (_, y), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, x)
            return y, grads

        label = "-".join([name, *geometry])
        for deterministic in (True, False):
            want = run(params, x, deterministic)
            with jax.set_mesh(mesh):
                xs = jax.device_put(x, P("data"))
                got = run(params, xs, deterministic)
                spec = str(jax.typeof(got[0]).sharding.spec)
            # relative to each leaf's largest magnitude (at least 1): LIP's zero-initialised
            # logit convolution has gradients in the hundreds (a zero-variance instance norm)
            errors = jax.tree_util.tree_map(
                lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
                / max(1.0, float(np.max(np.abs(np.asarray(b)), initial=0.0))),
                got, want,
            )
            out[f"{label}-{'det' if deterministic else 'train'}"] = {
                "max_error": max(jax.tree_util.tree_leaves(errors)),
                "spec": spec,
            }
# Outside a `jax.set_mesh` context, an array that carries its mesh (a NamedSharding): the forward
# pass (JAX itself needs the context for a gradient's scalar cotangent, flax's pools included).
xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
for name in jaxpool.available():
    module = jaxpool.create(name)
    params = module.init({"params": jax.random.key(1)}, x, deterministic=True).get("params", {})
    for deterministic in (True, False):
        apply = jax.jit(
            lambda p, v: module.apply(
                {"params": p}, v, deterministic=deterministic, rngs={"pooling": jax.random.key(3)}
            )
        )
        got, want = apply(params, xs), apply(params, x)
        out[f"{name}-outside-set_mesh-{'det' if deterministic else 'train'}"] = {
            "max_error": float(np.max(np.abs(np.asarray(got) - np.asarray(want)))),
            "spec": str(jax.typeof(got).sharding.spec),
        }
# Per-example draws need the batch's keys sharded like it, which JAX does only under the mesh
refused = {}
for name in ("s3", "fractional"):
    try:
        jaxpool.create(name, per_example=True).apply(
            {}, xs, deterministic=False, rngs={"pooling": jax.random.key(3)}
        )
    except ValueError as e:
        refused[name] = str(e)
print(json.dumps({"results": out, "refused": refused}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(jax, "set_mesh"), reason="explicit sharding needs jax.set_mesh")
def test_every_pooler_matches_unsharded_under_explicit_sharding():
    # XLA's cheapest backend optimisation: 104 small programs, where compiling is the cost.
    output = json.loads(run_on_cpu_devices(SCRIPT, flags="--xla_backend_optimization_level=0"))
    results = output["results"]
    # every pooler, both modes, two geometries (s3 and fractional: two options; blur three), and
    # outside a mesh context in its default geometry
    assert len(results) == 2 * (2 * 13 + 1) + 2 * 13
    for label, result in results.items():
        assert result["max_error"] < 1e-4, (label, result)
        assert result["spec"].startswith("P('data'"), (label, result)
    assert sorted(output["refused"]) == ["fractional", "s3"]
    for message in output["refused"].values():
        assert "per_example=True on a batch sharded explicitly over mesh axis 'data'" in message
        assert "inside `with jax.set_mesh(mesh):`" in message
