"""Per-window reductions and selections shared by the poolers, with hand-written gradients.

Windows come as K ``(N, Ho, Wo, C)`` elements (see :mod:`jaxpool._windows`) or, on the fast path,
as a view ``x6`` of shape ``(N, Ho, kh, Wo, kw, C)``.  The custom VJPs here exist for speed on
XLA:CPU (their docstrings and comments say why); their values and gradients equal autodiff's of
the same formula, with the max's gradient going to the first maximal element as in
``flax.linen.max_pool`` and PyTorch (``tests/test_functional.py`` compares the view and the strided
paths, and the hand-written gradients with autodiff).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _windows

_F32 = jnp.float32

Elements = list  # K arrays (N, Ho, Wo, C)
Masks = list | None  # per element (Ho, Wo, 1) bool or None


def broadcast_param(param: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``broadcast_to(param, shape)`` for a parameter aligned with the trailing axes of ``shape``.

    Same value and gradient as the plain broadcast; the gradient's sum over the leading axes is a
    matrix-vector product, which XLA:CPU runs several times faster than the reduction it would
    otherwise fuse into the surrounding elementwise loops.
    """
    return _broadcast_trailing(param, tuple(shape), tuple(param.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _broadcast_trailing(param, shape, param_shape):
    return jnp.broadcast_to(param, shape)


def _broadcast_trailing_fwd(param, shape, param_shape):
    return jnp.broadcast_to(param, shape), None


def _broadcast_trailing_bwd(shape, param_shape, _, cotangent):
    flat = cotangent.reshape(-1, math.prod(param_shape))
    return ((jnp.ones((flat.shape[0],), flat.dtype) @ flat).reshape(param_shape),)


_broadcast_trailing.defvjp(_broadcast_trailing_fwd, _broadcast_trailing_bwd)


def masked(elems: Elements, masks: Masks, fill: float) -> Elements:
    if masks is None:
        return elems
    return [e if m is None else jnp.where(m, e, fill) for e, m in zip(elems, masks, strict=True)]


def f32(elems: Elements) -> Elements:
    return [e.astype(_F32) for e in elems]


def window_max(elems: Elements, masks: Masks) -> jax.Array:
    """Per-window max; its gradient goes to the first maximal element (row-major), as in
    ``flax.linen.max_pool`` and PyTorch, not split between ties."""
    elems = masked(elems, masks, -jnp.inf)
    return _max_to_first(len(elems), *elems)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def view_max(kh: int, kw: int, x6: jax.Array) -> jax.Array:
    """:func:`window_max` over each window of a view ``(N, Ho, kh, Wo, kw, C)`` (fast path).

    Only max pooling uses it. Mixed and gated pooling have their own view-form backward for the
    whole max/mean mixture (:func:`view_gate_mix`): this one as a term beside autodiff's
    gradient of the mean made their backward pass slower (0.84x).
    """
    return functools.reduce(jnp.maximum, _windows.view_elements(x6))


def _view_max_fwd(kh, kw, x6):
    return _max_and_index(_windows.view_elements(x6))


def _max_and_index(elems: Elements) -> tuple[jax.Array, jax.Array]:
    """Per-window max and the (narrow) index of its first maximal element, for a view-form
    backward pass.  The index goes through float32 on purpose: with the int32 index (or int32 ->
    int8) XLA:CPU compiled the backward pass's loop 3-6x slower (measured on jaxlib 0.10.2)."""
    index = narrow_index(first_argmax(elems).astype(_F32), len(elems))
    return functools.reduce(jnp.maximum, elems), index


def _view_max_bwd(kh, kw, index, cotangent):
    # dy where the view element is the stored first max, else 0: one broadcasting loop over the
    # view instead of K selects stacked back into it.
    zero = jnp.zeros((), cotangent.dtype)
    return (jnp.where(view_hit(index, kh, kw), per_window(cotangent), zero),)


def per_window(values: jax.Array) -> jax.Array:
    """``(N, Ho, Wo, C)`` per-window values, broadcastable over a view ``(N, Ho, kh, Wo, kw, C)``."""
    return values[:, :, None, :, None, :]


def view_hit(index: jax.Array, kh: int, kw: int) -> jax.Array:
    """``(N, Ho, kh, Wo, kw, C)`` bool: the view element is element ``index`` of its window."""
    k6 = (np.arange(kh)[:, None] * kw + np.arange(kw)).reshape(1, 1, kh, 1, kw, 1)
    return per_window(index) == k6.astype(index.dtype)


view_max.defvjp(_view_max_fwd, _view_max_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _max_to_first(k: int, *elems: jax.Array) -> jax.Array:
    del k
    return functools.reduce(jnp.maximum, elems)


def _max_to_first_fwd(k, *elems):
    # The index is the only residual: the backward pass is one select per element, which XLA
    # fuses with its neighbours; autodiff of the jnp.maximum chain (tie-splitting divisions per
    # element) made the CNN's backward pass several times slower.
    return _max_to_first(k, *elems), narrow_index(first_argmax(list(elems)), k)


def _max_to_first_bwd(k, index, cotangent):
    return _to_index(k, index, cotangent)


def narrow_index(index: jax.Array, k: int) -> jax.Array:
    """A window index as int8 where ``k`` elements fit: a residual a quarter the size."""
    return index.astype(jnp.int8) if k <= 127 else index


def _to_index(k: int, index: jax.Array, cotangent: jax.Array) -> tuple[jax.Array, ...]:
    """The K element cotangents of a selection: ``cotangent`` at the selected element, else 0."""
    zero = jnp.zeros((), cotangent.dtype)
    return tuple(jnp.where(index == i, cotangent, zero) for i in range(k))


_max_to_first.defvjp(_max_to_first_fwd, _max_to_first_bwd)


def window_sum(elems: Elements) -> jax.Array:
    # Padding holds 0, so the plain sum already excludes it.
    return functools.reduce(jnp.add, elems)


def window_mean(elems: Elements, spec: _windows.WindowSpec, masks: Masks) -> jax.Array:
    return window_sum(f32(elems)) / _windows.count_valid(spec, masks)


def window_softmax(logits: Elements) -> Elements:
    top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, logits))
    exps = [jnp.exp(z - top) for z in logits]
    total = window_sum(exps)
    return [e / total for e in exps]


def window_dot(weights: Elements, elems: Elements) -> jax.Array:
    """Per-window inner product ``w . R``; padding holds 0, so it contributes nothing."""
    return window_sum([w * e for w, e in zip(weights, elems, strict=True)])


def select(index: jax.Array, values: Elements) -> jax.Array:
    """``values[index]`` per window, exactly; the gradient reaches the selected element only."""
    return _select_saved(len(values), narrow_index(index, len(values)), *values)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _select_saved(k: int, index: jax.Array, *values: jax.Array) -> jax.Array:
    out = values[0]
    for i in range(1, k):
        out = jnp.where(index == i, values[i], out)
    return out


def _select_saved_fwd(k, index, *values):
    return _select_saved(k, index, *values), index


def _select_saved_bwd(k, index, cotangent):
    return (None, *_to_index(k, index, cotangent))


_select_saved.defvjp(_select_saved_fwd, _select_saved_bwd)


def first_argmax(scores: Elements) -> jax.Array:
    """Index of the largest score per window (the first one on ties)."""
    best, index = scores[0], jnp.zeros(scores[0].shape, jnp.int32)
    for k in range(1, len(scores)):
        better = scores[k] > best
        best, index = jnp.where(better, scores[k], best), jnp.where(better, k, index)
    return index


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def view_gate_mix(kh: int, kw: int, x6: jax.Array, z: jax.Array) -> jax.Array:
    r"""``g max(R) + (1 - g) mean(R)``, ``g = sigmoid(z)``, over each window of a float32 view
    ``x6`` ``(N, Ho, kh, Wo, kw, C)`` (fast path of mixed and gated pooling); ``z`` is the gate
    logit, ``(N, Ho, Wo, C)``.

    The backward pass is written by hand:

    .. math::
      \frac{\partial y}{\partial x_i} = g [i = i^*] + \frac{1 - g}{K}, \qquad
      \frac{\partial y}{\partial z} = g (1 - g) (\max R - \mathrm{mean} R)

    with ``i*`` the first maximal element.  The input's cotangent is then one broadcast over the
    view, where autodiff summed K zero-padded copies for the max and K for the mean (XLA:CPU
    runs each with a branch per element): 1.7-2x faster forward+backward at (256, 32, 32, 16).
    """
    return _view_gate_mix_fwd(kh, kw, x6, z)[0]  # XLA drops the unused residuals


def _view_gate_mix_fwd(kh, kw, x6, z):
    elems = _windows.view_elements(x6)
    window_max, index = _max_and_index(elems)
    window_mean = window_sum(elems) / len(elems)
    g = jax.nn.sigmoid(z)
    return g * window_max + (1 - g) * window_mean, (index, g, window_max - window_mean)


def _view_gate_mix_bwd(kh, kw, residuals, cotangent):
    index, g, spread = residuals
    by_mean = cotangent * (1 - g) / (kh * kw)
    hit = view_hit(index, kh, kw)
    dx6 = jnp.where(hit, per_window(cotangent * g + by_mean), per_window(by_mean))
    # g has z's sharding (the batch-broadcast mixed-pool logit is unsharded, see same_sharding)
    return dx6, same_sharding(cotangent * spread * g * (1 - g), g)


view_gate_mix.defvjp(_view_gate_mix_fwd, _view_gate_mix_bwd)


def same_sharding(cotangent: jax.Array, primal: jax.Array) -> jax.Array:
    """``cotangent`` resharded like ``primal`` under explicit sharding (a custom VJP must return
    its inputs' types; the broadcast temperature is unsharded while the batch is sharded)."""
    want = _windows.explicit_spec(primal)
    if _windows.explicit_spec(cotangent) == want:
        return cotangent
    return jax.sharding.reshard(cotangent, jax.sharding.PartitionSpec(*(want or ())))


def kernel_weights(
    kernel: jax.Array, spec: _windows.WindowSpec, shape: tuple[int, ...], name: str
) -> Elements:
    """A window-shaped kernel as K weights, each broadcastable to the elements' ``(N, Ho, Wo, C)``.

    Shapes: ``(kh, kw)`` per layer, ``(kh, kw, C)`` per channel, ``(Ho, Wo, kh, kw, C)`` per region
    and channel.
    """
    (kh, kw), (ho, wo), k = spec.window, spec.out_size, spec.num_elements
    channels = shape[-1]
    kernel = jnp.asarray(kernel)
    allowed = {
        (kh, kw): (k, 1),
        (kh, kw, channels): (k, channels),
        (ho, wo, kh, kw, channels): (ho, wo, k, channels),
    }
    if kernel.shape not in allowed:
        raise ValueError(
            f"{name} must have one of the shapes {sorted(allowed)} (per layer, per channel, per "
            f"region and channel) for window {spec.window}, output {spec.out_size} and "
            f"C={channels}; got {kernel.shape}"
        )
    weights = kernel.astype(_F32).reshape(allowed[kernel.shape])
    # Plain broadcasting here: K custom broadcasts would materialise K products for the gradient.
    if weights.ndim == 2:
        return [weights[i] for i in range(k)]
    return [weights[:, :, i, :] for i in range(k)]


def kernel_dot(
    kernel: jax.Array,
    spec: _windows.WindowSpec,
    x6: jax.Array | None,
    values: Elements,
    name: str,
) -> jax.Array:
    """``w . R`` per window for a window-shaped kernel (shapes as :func:`kernel_weights`).

    Where the windows are a view ``x6`` (``(N, Ho, kh, Wo, kw, C)``, fast path) the kernel's
    gradient is one reduction over that view (:func:`view_dot`); otherwise autodiff of the
    K-element sum, which XLA:CPU runs as K strided copies and K reductions.
    """
    weights = kernel_weights(kernel, spec, values[0].shape, name)  # also checks the shape
    if x6 is None:
        return window_dot(weights, values)
    (kh, kw), (ho, wo) = spec.window, spec.out_size
    kernel = jnp.asarray(kernel).astype(_F32)
    if kernel.ndim == 5:  # (Ho, Wo, kh, kw, C) -> (1, Ho, kh, Wo, kw, C)
        w6 = kernel.transpose(0, 2, 1, 3, 4).reshape(1, ho, kh, wo, kw, -1)
    else:  # (kh, kw) or (kh, kw, C) -> (1, 1, kh, 1, kw, 1 or C)
        w6 = kernel.reshape(1, 1, kh, 1, kw, -1)
    return view_dot(w6, x6)


@jax.custom_jvp
def view_dot(w6: jax.Array, x6: jax.Array) -> jax.Array:
    """``sum_{a, b} w6[..., a, :, b, :] x6[..., a, :, b, :]``: ``(N, Ho, Wo, C)`` from the window
    view ``x6`` ``(N, Ho, kh, Wo, kw, C)`` and a kernel ``w6`` broadcastable to it."""
    return window_dot(_windows.view_elements(w6), _windows.view_elements(x6))


@view_dot.defjvp
def _view_dot_jvp(primals, tangents):
    """Written so that its transpose (reverse mode) is fast on XLA:CPU: the input's cotangent
    is the output's broadcast over the view times ``w6``, and the kernel's is one reduction over
    the view.  The barrier sits on the kernel term only, so in reverse mode it lands on the
    reduction's operand: XLA then reads the ``(N, Ho, Wo, C)`` cotangent broadcast inside the
    reduction instead of first writing an x-sized broadcast copy (3x slower for tree pooling)."""
    w6, x6 = primals
    dw6, dx6 = tangents
    by_input = jnp.sum(w6 * dx6, axis=(2, 4))
    by_kernel = jax.lax.optimization_barrier(jnp.sum(dw6 * x6, axis=(2, 4)))
    return view_dot(w6, x6), by_input + by_kernel


def f32_windows(x4: jax.Array, spec: _windows.WindowSpec) -> tuple[jax.Array | None, Elements]:
    """The float32 window view of ``x4`` where the fast path applies (else None) and the K
    float32 window elements (slices of that view, or strided slices)."""
    x6 = _windows.window_view(x4.astype(_F32), spec)
    if x6 is not None:
        return x6, _windows.view_elements(x6)
    return None, f32(_windows.window_elements(x4, spec))
