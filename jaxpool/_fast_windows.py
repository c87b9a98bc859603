r"""Fast paths of max, mixed, gated and tree pooling on XLA:CPU, for non-overlapping VALID windows.

The windows are a free reshape of the input, a *view* of shape ``(N, Ho, kh, Wo, kw, C)``
(:func:`jaxpool._windows.window_view`).  The derivatives here are ``jax.custom_jvp`` rules whose
tangents are linear in the input tangents, so forward mode works and JAX transposes them for
reverse mode; they are written so that the transposed (backward) pass is one broadcasting loop
over the view, where autodiff of the reference sums K zero-padded copies (one per window
element), which XLA:CPU runs with a branch per element.  Values and derivatives equal the
reference's up to float rounding, the max's derivative going to the first maximal element
(``tests/test_implementations.py``).

``implementation='auto'`` takes these paths on the CPU backend where the table below shows them
faster.  Forward + backward (``jax.grad`` of a weighted sum, jitted), median of repeated runs,
reference and fast alternating in one process on a 2-core Intel Xeon (AVX-512), jaxlib 0.10.2:

  ================  ===================  =============  =============  ==================
  pooler            x shape (NHWC), 2x2  reference ms   fast ms        reference / fast
  ================  ===================  =============  =============  ==================
  max               256, 32, 32, 16      8.2 / 3.3      5.3 / 1.4      2.08 (0.48-3.45) / 2.02 (1.94-2.48)
  max               64, 16, 16, 32       0.09 / 0.23    0.07 / 0.17    1.35 (1.27-1.53) / 1.37 (0.94-1.91)
  mixed             256, 32, 32, 16      7.7 / 16.8     2.2 / 5.9      2.68 (1.59-3.67) / 3.08 (2.19-7.41)
  mixed             64, 16, 16, 32       0.36 / 0.62    0.17 / 0.39    2.20 (1.30-2.50) / 2.21 (1.32-3.35)
  gated             256, 32, 32, 16      9.9 / 4.5      4.5 / 2.9      2.14 (1.79-2.97) / 1.76 (1.25-1.95)
  gated             64, 16, 16, 32       0.33 / 0.63    0.32 / 0.79    1.13 (1.04-1.28) / 1.24 (0.75-1.69)
  tree              256, 32, 32, 16      8.1 / 9.1      6.3 / 6.7      1.33 (1.15-1.67) / 1.32 (0.99-1.89)
  tree              64, 16, 16, 32       0.43 / 0.99    0.42 / 0.88    0.97 (0.95-1.31) / 1.21 (0.78-2.20)
  ================  ===================  =============  =============  ==================

Two sittings (the first figure of each pair, then the second), 7 alternating rounds each; the
ratio is the median of the per-round ratios, with its range.  The machine was shared with other
jobs, hence the spread; every median ratio is above 1 except where the notes say.

Parameters as the Linen modules' defaults (per channel; gated with a bias).  Tree pooling's fast
path tied the reference at the smaller shape (medians 0.97 and 1.21), so ``'auto'`` takes it
only from ``TREE_MIN_ELEMENTS`` input elements (the larger shape) on.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _window_ops, _windows

_F32 = jnp.float32

# Where 'auto' takes each fast path on CPU (non-overlapping VALID windows): the table above.
MAX_WINS = True
MIXED_WINS = True
GATED_WINS = True
TREE_MIN_ELEMENTS = 256 * 32 * 32 * 16  # 2**22


def tree_wins(size: int) -> bool:
    """Whether tree pooling's fast path was measured faster for an input of ``size`` elements
    (False for a symbolic size: ``jax.export`` with a polymorphic batch)."""
    return _windows.is_concrete((size,)) and size >= TREE_MIN_ELEMENTS


def broadcast_param(param: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``broadcast_to(param, shape)`` for a parameter aligned with the trailing axes of ``shape``.

    The tangent is the outer product of ones with the parameter's tangent, a dot, so its
    transpose, the parameter's gradient, is a matrix-vector product, which XLA:CPU runs faster
    than the reduction it would otherwise fuse into the surrounding elementwise loops.
    """
    return _broadcast_trailing(param, tuple(shape))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _broadcast_trailing(param: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jnp.broadcast_to(param, shape)


@_broadcast_trailing.defjvp
def _broadcast_trailing_jvp(shape, primals, tangents):
    (param,), (tangent,) = primals, tangents
    leading = math.prod(shape) // max(param.size, 1)
    ones = jnp.ones((leading, 1), tangent.dtype)
    outer = jnp.matmul(ones, tangent.reshape(1, -1), precision=jax.lax.Precision.HIGHEST)
    return jnp.broadcast_to(param, shape), outer.reshape(shape)


def per_window(values: jax.Array) -> jax.Array:
    """``(N, Ho, Wo, C)`` per-window values, broadcastable over a view ``(N, Ho, kh, Wo, kw, C)``."""
    return values[:, :, None, :, None, :]


def narrow_index(index: jax.Array, count: int) -> jax.Array:
    """A window's element index (``count`` elements) as the view loops read it best: int8 where
    ``count`` <= 127.

    The index goes int32 -> float32 -> int8 on purpose: converted from int32 directly (or kept
    int32) XLA:CPU compiled the backward loop over the view 3-6x slower (jaxlib 0.10.2).
    """
    index = index.astype(_F32)
    return index.astype(jnp.int8) if count <= 127 else index


def _first_max_and_index(elements: _window_ops.WindowElements) -> tuple[jax.Array, jax.Array]:
    """Per-window max and the index of its first maximal element (:func:`narrow_index`)."""
    index = narrow_index(_window_ops.first_argmax(elements), len(elements))
    return functools.reduce(jnp.maximum, elements), index


def is_element(index: jax.Array, kh: int, kw: int) -> jax.Array:
    """``(N, Ho, kh, Wo, kw, C)`` bool: the view element is element ``index`` of its window."""
    positions = (np.arange(kh)[:, None] * kw + np.arange(kw)).reshape(1, 1, kh, 1, kw, 1)
    return per_window(index) == positions.astype(index.dtype)


def _at_first_max(view_tangent: jax.Array, index: jax.Array) -> jax.Array:
    """Per window, ``view_tangent`` at the first maximal element: linear in ``view_tangent``; its
    transpose is one select over the view."""
    _, _, kh, _, kw, _ = view_tangent.shape
    hit = is_element(index, kh, kw)
    return jnp.sum(jnp.where(hit, view_tangent, jnp.zeros((), view_tangent.dtype)), axis=(2, 4))


@jax.custom_jvp
def view_max(view: jax.Array) -> jax.Array:
    """Per-window max of a view ``(N, Ho, kh, Wo, kw, C)``; derivative to the first maximum."""
    return functools.reduce(jnp.maximum, _windows.view_elements(view))


@view_max.defjvp
def _view_max_jvp(primals, tangents):
    (view,), (view_tangent,) = primals, tangents
    y, index = _first_max_and_index(_windows.view_elements(view))
    return y, _at_first_max(view_tangent, index)


@jax.custom_jvp
def view_gate_mix(view: jax.Array, logit: jax.Array) -> jax.Array:
    r"""``g max(R) + (1 - g) mean(R)``, ``g = sigmoid(logit)``, over each window of a float32
    view ``(N, Ho, kh, Wo, kw, C)``; ``logit`` is ``(N, Ho, Wo, C)``.

    .. math::
      \dot y = g \dot x_{i^*} + \frac{1 - g}{K} \sum_{i \in R} \dot x_i
        + g (1 - g) (\max R - \mathrm{mean}\, R)\, \dot z

    with ``i*`` the first maximal element and ``z`` the logit.
    """
    elements = _windows.view_elements(view)
    gate = jax.nn.sigmoid(logit)
    window_mean = _window_ops.window_sum(elements) / len(elements)
    return gate * functools.reduce(jnp.maximum, elements) + (1 - gate) * window_mean


@view_gate_mix.defjvp
def _view_gate_mix_jvp(primals, tangents):
    (view, logit), (view_tangent, t_logit) = primals, tangents
    elements = _windows.view_elements(view)
    window_max, index = _first_max_and_index(elements)
    window_mean = _window_ops.window_sum(elements) / len(elements)
    gate = jax.nn.sigmoid(logit)
    y = gate * window_max + (1 - gate) * window_mean
    by_input = gate * _at_first_max(view_tangent, index) + (1 - gate) * jnp.mean(
        view_tangent, axis=(2, 4)
    )
    by_logit = gate * (1 - gate) * (window_max - window_mean) * t_logit
    return y, by_input + by_logit


def kernel_dot(kernel: jax.Array, spec: _windows.WindowSpec, view: jax.Array) -> jax.Array:
    """``w . R`` per window of the float32 view ``view`` for a window-shaped kernel (shapes as
    :func:`jaxpool._window_ops.kernel_weights`, checked there)."""
    (kh, kw), (ho, wo) = spec.window, spec.out_size
    kernel = jnp.asarray(kernel).astype(_F32)
    if kernel.ndim == 5:  # (Ho, Wo, kh, kw, C) -> (1, Ho, kh, Wo, kw, C)
        kernel_view = kernel.transpose(0, 2, 1, 3, 4).reshape(1, ho, kh, wo, kw, -1)
    else:  # (kh, kw) or (kh, kw, C) -> (1, 1, kh, 1, kw, 1 or C)
        kernel_view = kernel.reshape(1, 1, kh, 1, kw, -1)
    return view_dot(kernel_view, view)


@jax.custom_jvp
def view_dot(kernel_view: jax.Array, view: jax.Array) -> jax.Array:
    """``sum_{a, b} kernel_view[..., a, :, b, :] view[..., a, :, b, :]``: ``(N, Ho, Wo, C)`` from the
    view ``(N, Ho, kh, Wo, kw, C)`` and a kernel broadcastable to it."""
    return _window_ops.window_dot(_windows.view_elements(kernel_view), _windows.view_elements(view))


@view_dot.defjvp
def _view_dot_jvp(primals, tangents):
    """Transposed, the input's cotangent is the output's broadcast over the view times the
    kernel, and the kernel's is one reduction over the view.  The barrier sits on the kernel
    term only, so in reverse mode it lands on the reduction's operand: XLA then reads the
    ``(N, Ho, Wo, C)`` cotangent broadcast inside the reduction instead of first writing an
    x-sized broadcast copy (3x slower for tree pooling)."""
    kernel_view, view = primals
    kernel_tangent, view_tangent = tangents
    by_input = jnp.sum(kernel_view * view_tangent, axis=(2, 4))
    by_kernel = jax.lax.optimization_barrier(jnp.sum(kernel_tangent * view, axis=(2, 4)))
    return view_dot(kernel_view, view), by_input + by_kernel
