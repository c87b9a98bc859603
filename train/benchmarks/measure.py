r"""Benchmarks: pooler forward+backward, the standard CNN's train/eval throughput, compile time.

Run::

  python -m train.bench                       # every pooler, the whole table
  python -m train.bench --poolers max,tdgs --repeats 9 --json bench.json

Everything is measured in one process on whatever device JAX has (CPU here, GPU/TPU elsewhere;
the table says which).  Each figure is a median over ``--repeats`` timed batches of calls, after
warm-up (compilation excluded), every call blocked until its result is ready.  The batches are timed
round-robin (one of every pooler, then the next round), so a passing slowdown of the machine hits
all poolers alike.  Compare figures as ratios from one sitting: absolute times on a shared machine
vary by up to 2x between runs.

Measured:

* ``pool_fwdbwd_ms["<pooler>@<shape>"]``: one pooler layer, training mode, forward + backward
  (one jitted call returning the output and its vjp w.r.t. input and parameters, the cotangent an
  argument: see :func:`pooler_step`) on NHWC ``(256, 32, 32, 16)`` and ``(64, 16, 16, 32)``,
  with its ratio to jaxpool's max pool and to a jitted copy of the same tensor (the
  memory-traffic floor: ``misc_ms["copy@<shape>"]``); max is always measured and reported, as
  the reference of the ratios;
* ``cnn_train_img_s["<pooler>@<batch>"]`` / ``cnn_eval_img_s[...]``: the standard CNN on
  CIFAR-sized input (32x32x3, 10 classes; ``--cnn-input 28,28,1`` for MNIST's) with Adam, one
  jitted ``steps.train_step`` (micro-batched as ``train.main`` would on this device; its state
  donated and passed from call to call, updated in place as in ``train.main`` and torch) /
  ``eval_step``, batch 64 and 256;
* ``misc_ms["compile_train_step@<pooler>@<batch>"]``: lowering + compiling the train step;
* ``malloc``: the allocator setting the figures were taken under (:func:`keep_freed_memory`);
* ``repeats``: ``--repeats``;
* ``xla_flags``: ``XLA_FLAGS`` as the run saw it (the CLI adds those of :mod:`train.core.xla_cpu`
  unless given ``--no-xla-cpu-tuning``, and :mod:`train.core.xla_gpu`'s);
* ``pool_fwdbwd_loop_ms`` and ``cnn_train_loop_img_s`` (``--in-loop``; by default on GPU/TPU
  only): the same pool figures per pass, and CNN train images/s, measured as
  :data:`LOOP_ITERATIONS` dependent passes in one compiled program (:func:`pooler_loop`,
  :func:`cnn_train_loop`): what the device takes, without the per-call dispatch (about 0.08 ms
  per call on an H200, more than most pool passes there);
* ``page_faults_per_call["<pooler>@<shape>"]`` (and ``copy@<shape>``): minor page faults per timed
  call of the pool figures, the "faults" column: well above 0, that figure includes memory faulted
  back in (see :func:`time_interleaved`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

try:
    import resource
except ImportError:  # Windows
    resource = None

import jax
import jax.numpy as jnp
import numpy as np

import jaxpool
from configs import default as default_config
from train.core import models, run_config, steps

POOL_SHAPES = ((256, 32, 32, 16), (64, 16, 16, 32))
CNN_BATCHES = (64, 256)
CNN_IMAGE = (32, 32, 3)
# Passes per compiled program in the in-loop figures (see pooler_loop).
LOOP_ITERATIONS = 32

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_KEEP = 1 << 30


def keep_freed_memory() -> str:
    """Makes glibc's malloc keep freed memory for reuse; returns what was done, for the report.

    Each call of a benchmarked function allocates its outputs afresh (16 MiB for a pool's input
    gradient) and frees them when the next call's result replaces them.  By default glibc hands
    such large blocks back to the kernel (``munmap``, or trimming the heap), so the next call
    page-faults the same amount in again: about 1 us per 4 KiB page, several ms per call, more
    than the pooling itself, and it comes and goes with the allocator's state (dynamic
    thresholds), which made the figures swing by several times between sittings.  With ``mmap``
    off (``M_MMAP_MAX=0``) and trimming above 1 GiB only, freed blocks are mostly reused: some
    runs still fault (the faults column of the report says which figures), but most count none.
    A training step is not affected either way (measured: equal).

    The PyTorch reference gets the same setting from the environment::

      GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824
    """
    if not sys.platform.startswith("linux"):
        return f"default ({sys.platform} allocator)"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default (no glibc mallopt)"
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, _KEEP) != 1:
        return "default (mallopt refused)"
    return "glibc, freed memory kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB)"


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing: Windows)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 7,
    target_s: float = 0.25,
    faults: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each of ``fns``, timed round-robin.

    Each function is warmed up and given a batch size of about ``target_s`` seconds of calls; then
    each of ``repeats`` rounds times one batch of every function in turn.  A transient slowdown of
    the machine thus lands on all of them alike instead of on whichever was being timed, so the
    ratios between them (to max pool, to a copy) hold even where absolute times drift.

    ``faults``, if given, receives each function's minor page faults per timed call (the process's
    count across its batches): well above 0, its time includes memory the allocator handed back to
    the kernel and faulted in again (see :func:`keep_freed_memory`).
    """
    per_batch = {}
    for name, fn in fns.items():
        for _ in range(2):
            jax.block_until_ready(fn())
        start = time.perf_counter()
        jax.block_until_ready(fn())
        per_batch[name] = max(1, int(target_s / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    faulted = dict.fromkeys(fns, 0)
    for _ in range(repeats):
        for name, fn in fns.items():
            faults_before = _minor_faults()
            start = time.perf_counter()
            for _ in range(per_batch[name]):
                jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - start) / per_batch[name])
            faulted[name] += _minor_faults() - faults_before
    if faults is not None:
        faults.update({name: faulted[name] / (repeats * per_batch[name]) for name in fns})
    return {name: statistics.median(ts) for name, ts in times.items()}


def _shape_key(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


def pooler_step(name: str, shape: Sequence[int]) -> tuple[Callable[..., object], tuple]:
    """The jitted forward+backward of pooler ``name`` and its arguments: ``step(*args)`` returns
    ``(y, (d params, d x))``.

    Every input is an argument and the forward output is returned too: a cotangent closed over as
    a constant lets XLA fold the backward pass at compile time (avg's gradient becomes a copy of a
    constant), and an unused output lets it drop the forward pass's own work.
    """
    module = jaxpool.create(name)
    x = jax.random.uniform(jax.random.key(0), shape)
    variables = module.init(
        {"params": jax.random.key(1), "pooling": jax.random.key(2)}, x, deterministic=True
    )
    params = variables.get("params", {})
    out_shape = jax.eval_shape(lambda v: module.apply(variables, v, deterministic=True), x).shape
    cotangent = jax.random.normal(jax.random.key(3), out_shape)

    @jax.jit
    def step(params, x, key, cotangent):
        def apply(p, v):
            return module.apply({"params": p}, v, deterministic=False, rngs={"pooling": key})

        y, vjp = jax.vjp(apply, params, x)
        return y, vjp(cotangent)

    return step, (params, x, jax.random.key(4), cotangent)


def pooler_loop(
    name: str, shape: Sequence[int], iterations: int = LOOP_ITERATIONS
) -> tuple[Callable[..., object], tuple]:
    """``iterations`` forward+backward passes of pooler ``name`` in one compiled program: the
    device's time per pass without the per-call dispatch that dominates a GPU's per-call figure.

    A ``lax.fori_loop`` whose iterations depend on each other through a scalar ``s``: each pass
    takes the input, parameters and cotangent plus ``s`` (elementwise additions that XLA fuses
    into the pooler's own kernels), a key folded with the iteration, and leaves ``s = c * (the
    first element of its output and of each gradient)``, with ``c`` a runtime argument that is 0
    (nothing drifts, and XLA cannot see that it is 0 and hoist or drop the work).  The output and
    the gradients are carried, so each pass writes them as a call does.  Carrying the arrays
    themselves, updated as ``x + c * dx``, cost about two extra copies per pass (XLA copies
    loop-carried arrays it updates in place), which squeezed the ratios between poolers: avg /
    max 0.89 in the loop against 0.66 per call (2-core CPU, 256x32x32x16); with ``s``, 0.69
    against 0.77.  ``loop(*args)`` returns the final ``(s, y, d params, d x)``.
    """
    step, (params, x, key, cotangent) = pooler_step(name, shape)

    @jax.jit
    def loop(params, x, key, cotangent, c):
        def body(i, carry):
            s = carry[0]
            y, (d_params, dx) = step(
                jax.tree_util.tree_map(lambda p: p + s, params), x + s,
                jax.random.fold_in(key, i), cotangent + s,
            )  # fmt: skip
            firsts = [a.ravel()[0] for a in jax.tree_util.tree_leaves((y, d_params, dx))]
            return c * sum(firsts), y, d_params, dx

        outputs = jax.eval_shape(step, params, x, key, cotangent)
        init = jax.tree_util.tree_map(
            lambda a: jnp.zeros(a.shape, a.dtype), (c, outputs[0], *outputs[1])
        )
        return jax.lax.fori_loop(0, iterations, body, init)

    return loop, (params, x, key, cotangent, jnp.float32(0.0))


def pooler_fwd_bwd(name: str, shape: Sequence[int]) -> Callable[[], object]:
    """A no-argument closure running one jitted forward+backward of pooler ``name``."""
    step, args = pooler_step(name, shape)
    return lambda: step(*args)


def copy_floor(shape: Sequence[int]) -> Callable[[], object]:
    x = jax.random.uniform(jax.random.key(0), shape)
    copy = jax.jit(jnp.copy)
    return lambda: copy(x)


def cnn_steps(name: str, batch: int, image: Sequence[int] = CNN_IMAGE):
    """Compile time (s) and closures for one CNN train step and one eval step."""
    config = default_config.get_config()
    config.update(pooler=name, batch_size=batch)
    spec = run_config.describe(config, tuple(image), 10, batch)
    state = steps.create_train_state(spec, jax.random.key(0))
    rng = np.random.default_rng(0)
    train_batch = {
        "image": jnp.asarray(rng.integers(0, 256, (batch, *image), np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, (batch,), np.int32)),
    }
    eval_batch = dict(train_batch, mask=jnp.ones((batch,), jnp.float32))
    key = jax.random.key(1)
    # The step as train.main runs it: micro-batched as it would be on this device, the state
    # donated and updated in place (train.main's chunks donate theirs, as torch's optimizer
    # steps in place).  Donation matters to the figure: on a 2-core CPU, MNIST-sized input,
    # batch 64, a step that allocates a new state per call ran at 0.83x (max pool) and 0.98x
    # (TDGS) of the donated one.
    microbatches = spec.microbatches
    start = time.perf_counter()
    train = (
        jax.jit(steps.step_fn(microbatches), donate_argnums=0)
        .lower(state, train_batch, key)
        .compile()
    )
    compile_s = time.perf_counter() - start
    evaluate = jax.jit(steps.eval_step)
    # Each call trains the state of the previous one on the same batch (the same work per call).
    current = [jax.tree_util.tree_map(jnp.copy, state)]

    def train_once():
        current[0], metrics = train(current[0], train_batch, key)
        return current[0], metrics

    return compile_s, train_once, (lambda: evaluate(state, eval_batch))


def cnn_train_loop(name: str, batch: int, image: Sequence[int] = CNN_IMAGE):
    """A closure training ``LOOP_ITERATIONS`` steps of the CNN in one compiled chunk, as
    ``train.main`` runs its epochs (:func:`train.core.device_loop.train_chunk` over a resident split of
    random images), each call on from the previous call's (donated) state."""
    from train.core import device_loop

    config = default_config.get_config()
    config.update(pooler=name, batch_size=batch)
    n = batch * LOOP_ITERATIONS
    spec = run_config.describe(config, tuple(image), 10, n)
    state = steps.create_train_state(spec, jax.random.key(0))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (n, *image), np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (n,), np.int32))
    order = jnp.arange(n, dtype=jnp.int32)
    step = steps.step_fn(spec.microbatches)
    current = [state]

    def train_loop():
        current[0], out = device_loop.train_chunk(
            current[0], images, labels, order, np.int32(0), np.int32(LOOP_ITERATIONS),
            jax.random.key(1), None, None,
            step_fn=step, batch_size=batch, length=LOOP_ITERATIONS,
        )  # fmt: skip
        return current[0], out

    return train_loop


def check_cnn_input(poolers: Sequence[str], image: Sequence[int]) -> None:
    """Raises ``ValueError`` naming the first of ``poolers`` whose CNN cannot take ``image``
    (``H, W, C``): checked by tracing the CNN's init, before minutes of measuring.

    Each pooler shrinks the maps its own way (LIP to ``ceil(N/2)``, fractional to ``N/sqrt(2)``),
    and MaxBlurPool's reflect padding needs at least 4 rows and columns at its input, so the
    smallest image differs by pooler (MaxBlurPool: 16).
    """
    x = jax.ShapeDtypeStruct((1, *image), jnp.float32)
    rngs = {"params": jax.random.key(0), "pooling": jax.random.key(1)}
    for name in poolers:
        model = models.CNN(num_classes=10, pooler=name)
        try:
            jax.eval_shape(functools.partial(model.init, deterministic=True), rngs, x)
        except ValueError as e:
            size = ",".join(str(d) for d in image)
            raise ValueError(f"--cnn-input {size}: too small for the CNN with {name}: {e}") from e


def device_description() -> str:
    """``platform:device kind xN`` of what JAX runs on, e.g. ``gpu:NVIDIA H200 x1``."""
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind} x{jax.device_count()}"


def run(
    poolers: Sequence[str],
    repeats: int,
    with_cnn: bool = True,
    cnn_input: Sequence[int] = CNN_IMAGE,
    malloc: str = "default",
    in_loop: bool | None = None,
) -> dict:
    """Measures and prints every figure (see the module docstring); returns them.

    ``in_loop``: also the in-loop figures (:func:`pooler_loop`, :func:`cnn_train_loop`); None
    means on accelerators only (on a CPU a call's dispatch is small beside its work)."""
    device = jax.devices()[0]
    in_loop = device.platform != "cpu" if in_loop is None else in_loop
    results: dict = {
        "lib": f"jax {jax.__version__}",
        "device": device_description(),
        "malloc": malloc,
        "repeats": repeats,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "pool_fwdbwd_ms": {},
        "cnn_train_img_s": {},
        "cnn_eval_img_s": {},
        "misc_ms": {},
        "page_faults_per_call": {},
        "cnn_input": list(cnn_input),
    }
    if in_loop:
        results.update(pool_fwdbwd_loop_ms={}, cnn_train_loop_img_s={})
    print(
        f"jaxpool bench on {results['device']} ({results['lib']}), median of {repeats}; "
        f"malloc: {malloc}"
    )
    print(f"XLA_FLAGS: {results['xla_flags'] or '(none)'}")
    print(
        "x max: time / max pool's; x copy: time / a jitted copy of the same tensor (the memory "
        "floor); faults: minor page faults per call (memory faulted back in, see "
        "keep_freed_memory)"
    )
    print(f"{'pooler':<11}{'shape':<18}{'fwd+bwd ms':>11}{'x max':>8}{'x copy':>8}{'faults':>8}")
    faults = results["page_faults_per_call"]
    # max is every ratio's reference: timed, and reported, even where not asked for.
    pooled = list(dict.fromkeys(["max", *poolers]))
    for shape in POOL_SHAPES:
        skey = _shape_key(shape)
        fns = {"(copy)": copy_floor(shape)}
        fns.update({name: pooler_fwd_bwd(name, shape) for name in pooled})
        if in_loop:
            for name in pooled:
                loop, args = pooler_loop(name, shape)
                fns[f"{name} (loop)"] = functools.partial(loop, *args)
        faulted: dict[str, float] = {}
        ms = {name: s * 1e3 for name, s in time_interleaved(fns, repeats, faults=faulted).items()}
        if in_loop:
            for name in pooled:
                loop_ms = ms.pop(f"{name} (loop)") / LOOP_ITERATIONS
                results["pool_fwdbwd_loop_ms"][f"{name}@{skey}"] = loop_ms
                print(f"{name:<11}{skey:<18}{loop_ms:>11.3f}  (in a loop of {LOOP_ITERATIONS})")
        copy_ms, max_ms = ms["(copy)"], ms["max"]
        results["misc_ms"][f"copy@{skey}"] = copy_ms
        faults[f"copy@{skey}"] = faulted["(copy)"]
        for name in pooled:
            results["pool_fwdbwd_ms"][f"{name}@{skey}"] = ms[name]
            faults[f"{name}@{skey}"] = faulted[name]
            print(
                f"{name:<11}{skey:<18}{ms[name]:>11.3f}{ms[name] / max_ms:>8.2f}"
                f"{ms[name] / copy_ms:>8.2f}{faulted[name]:>8.0f}"
            )
        print(
            f"{'(copy)':<11}{skey:<18}{copy_ms:>11.3f}{'':>16}{faulted['(copy)']:>8.0f}", flush=True
        )
    if with_cnn:
        print(
            f"\nstandard CNN on {'x'.join(map(str, cnn_input))} input, Adam, train step as "
            f"train.main runs it (micro-batches: config.microbatch_size=0, automatic)"
        )
        print(f"{'pooler':<11}{'batch':>6}{'train img/s':>13}{'eval img/s':>12}{'compile s':>11}")
        for batch in CNN_BATCHES:
            steps_by_name = {name: cnn_steps(name, batch, cnn_input) for name in poolers}
            fns = {}
            for name, (_, train, evaluate) in steps_by_name.items():
                fns[("train", name)], fns[("eval", name)] = train, evaluate
                if in_loop:
                    fns[("loop", name)] = cnn_train_loop(name, batch, cnn_input)
            seconds = time_interleaved(fns, repeats)
            for name in steps_by_name if in_loop else ():
                loop_ips = batch * LOOP_ITERATIONS / seconds[("loop", name)]
                results["cnn_train_loop_img_s"][f"{name}@{batch}"] = loop_ips
                print(f"{name:<11}{batch:>6}{loop_ips:>13.0f}  (train, in a loop of "
                      f"{LOOP_ITERATIONS} steps)")  # fmt: skip
            for name, (compile_s, _, _) in steps_by_name.items():
                train_ips = batch / seconds[("train", name)]
                eval_ips = batch / seconds[("eval", name)]
                results["cnn_train_img_s"][f"{name}@{batch}"] = train_ips
                results["cnn_eval_img_s"][f"{name}@{batch}"] = eval_ips
                results["misc_ms"][f"compile_train_step@{name}@{batch}"] = compile_s * 1e3
                print(
                    f"{name:<11}{batch:>6}{train_ips:>13.0f}{eval_ips:>12.0f}{compile_s:>11.2f}",
                    flush=True,
                )
    print()
    print("\n".join(summary_table(results, pooled)))
    return results


def summary_table(results: Mapping, poolers: Sequence[str]) -> list[str]:
    """The run's figures as one table, a row per pooler (the sections above print them as they
    are measured): fwd+bwd ms with its ratios to max and to the copy at each pool shape, then CNN
    train and eval img/s at each batch and the train step's compile seconds."""
    pool, misc = results["pool_fwdbwd_ms"], results["misc_ms"]
    loop = results.get("pool_fwdbwd_loop_ms")
    loop_train = results.get("cnn_train_loop_img_s", {})
    batches = [
        b for b in CNN_BATCHES if any(k.endswith(f"@{b}") for k in results["cnn_train_img_s"])
    ]
    header = "".join(
        f"{_shape_key(s) + ' ms (x max, x copy)':>40}" + (f"{'in loop':>9}" if loop else "")
        for s in POOL_SHAPES
    )
    header += "".join(
        f"{f'train@{b}':>11}" + (f"{'in loop':>9}" if loop_train else "")
        + f"{f'eval@{b}':>11}{f'compile@{b}':>12}"
        for b in batches
    )  # fmt: skip
    lines = [
        "summary: fwd+bwd ms per pool shape"
        + ("; CNN img/s and compile s per batch" if batches else "")
        + ("; 'in loop': per pass inside one compiled loop (device time)" if loop else ""),
        f"{'pooler':<11}" + header,
    ]
    for name in poolers:
        row = f"{name:<11}"
        for shape in POOL_SHAPES:
            key = _shape_key(shape)
            ms = pool[f"{name}@{key}"]
            ratios = f"({ms / pool[f'max@{key}']:.2f}, {ms / misc[f'copy@{key}']:.2f})"
            row += f"{ms:>21.3f} {ratios:>18}"  # 18: up to (999.99, 9999.99)
            if loop:
                row += f"{loop[f'{name}@{key}']:>9.3f}"
        for b in batches:
            train = results["cnn_train_img_s"].get(f"{name}@{b}")
            if train is None:  # max measured only as the pool reference
                row += f"{'-':>11}" + (f"{'-':>9}" if loop_train else "") + f"{'-':>11}{'-':>12}"
                continue
            compile_s = misc[f"compile_train_step@{name}@{b}"] / 1e3
            row += f"{train:>11.0f}"
            if loop_train:
                row += f"{loop_train[f'{name}@{b}']:>9.0f}"
            row += f"{results['cnn_eval_img_s'][f'{name}@{b}']:>11.0f}{compile_s:>12.2f}"
        lines.append(row)
    return lines
