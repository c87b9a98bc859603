r"""Fast path of TDGS pooling (:func:`jaxpool.functional.tdgs_pool`) on XLA:CPU: the noise from
:mod:`jaxpool._fast_rng` and the window math with a hand-written derivative.

Per window ``R`` (``K`` elements) with inverse temperature ``1/t``, inverse Gumbel-softmax
temperature ``1/tau`` and one Gumbel ``g_k`` per element:

.. math::
  s_k = (R_k / t + g_k) / \tau, \qquad w = \mathrm{softmax}(s), \qquad
  y = R_{k^*},\ k^* = \mathrm{argmax}_k\, s_k \ \text{(first on ties)}

and the straight-through derivative is that of ``sum_k w_k R_k`` with the one-hot of ``k*`` held
fixed.  With ``m = sum_k w_k R_k`` and ``c_k = w_k (R_k - m)``:

.. math::
  \dot y = \dot R_{k^*} + \frac{1}{\tau} \sum_k c_k \left(\frac{\dot R_k}{t}
    + R_k \dot{(1/t)}\right) + \dot{(1/\tau)} \sum_k c_k (R_k / t + g_k)

Deterministic mode: ``w = softmax(R / t)``, ``y = m``,
``dy = sum_k (w_k + c_k / t) dR_k + d(1/t) sum_k c_k R_k``.  ``sum_k c_k R_k`` is computed as
``sum_k w_k (R_k - m)^2``, without cancellation.

The derivative is a ``jax.custom_jvp`` rule, linear in the tangents, so forward mode works and
JAX transposes it for reverse mode.  Differentiated twice (a gradient penalty), it differentiates
this first derivative, where the reference differentiates autodiff's straight-through surrogate
``sum_k (onehot_k + w_k - stop_gradient(w_k)) R_k`` again: first derivatives agree, second ones
do not.  The fast path draws its Gumbels with :func:`jaxpool._fast_rng.neg_gumbel`, not
``jax.random``: the same distribution, other numbers.

Non-overlapping VALID windows (the CNN's 2x2 pools) go through :func:`view_sample`: the same
math written over the view ``(N, Ho, kh, Wo, kw, C)`` of :func:`jaxpool._windows.window_view`, so
that the transposed derivative is one broadcasting loop writing the input's cotangent, where the
element form's (:func:`window_sample`) adds K zero-padded slices.  Forward + backward as below,
view against element form alternating in one process, two sittings (9 rounds each; the first with
other jobs running): 1.51 / 1.38 (training) and 1.89 / 1.72 (deterministic) at (256, 32, 32, 16),
1.41 / 1.37 and 1.43 / 1.48 at (64, 16, 16, 32); the CNN's train step did not change (0.96-1.04).

``implementation='auto'`` takes this path on the CPU backend, for every window geometry and both
modes, where the table below shows it faster.  Forward + backward (``jax.grad`` of a weighted sum
with respect to ``x`` and a per-position temperature, jitted), median of repeated runs, reference
and fast alternating in one process on a 2-core AMD EPYC (AVX-512), jaxlib 0.10.2:

  ================  ===================  =============  =============  ==================
  pooler            x shape (NHWC), 2x2  reference ms   fast ms        reference / fast
  ================  ===================  =============  =============  ==================
  tdgs              256, 32, 32, 16      102 / 58       38 / 23        2.75 (1.83-3.66) / 2.08 (0.68-3.01)
  tdgs              64, 16, 16, 32       3.71 / 1.76    1.62 / 0.74    2.47 (1.68-3.10) / 2.43 (2.07-2.86)
  tdgs det.         256, 32, 32, 16      51 / 25        25 / 11        1.80 (1.43-3.05) / 2.30 (1.84-3.19)
  tdgs det.         64, 16, 16, 32       1.46 / 0.68    0.63 / 0.38    2.07 (1.85-2.37) / 1.77 (1.68-1.91)
  ================  ===================  =============  =============  ==================

Two sittings (the first figure of each pair, with other jobs running; then the second, on a quiet
machine), 7 alternating rounds each; the ratio is the median of the per-round ratios, with its
range.  Every median ratio is above 1.

Training mode (``tdgs``, noise included) and ``deterministic=True`` (``tdgs det.``).

Overlapping or padded windows take the element form (:func:`window_sample`); measured the same way
at (64, 16, 16, 32), median of 9 alternating rounds with another job running, with the CLI's XLA
flags, reference / fast, training | deterministic: 3x3 stride 2 SAME 1.47 | 1.18, 3x3 stride 1
VALID 1.89 | 1.23 (jaxlib 0.10.2, 2026-12-05).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxpool import _fast_rng, _fast_windows, _window_ops, _windows

_F32 = jnp.float32

TDGS_WINS = True  # where 'auto' takes this path on CPU: the table above


def tdgs_pool(
    batched: jax.Array,
    temperature: jax.Array,
    spec: _windows.WindowSpec,
    key: jax.Array | None,
    deterministic: bool,
    tau: float,
    eps: float,
) -> jax.Array:
    """float32 TDGS of ``batched``, the ``(N, H, W, C)`` input; the other arguments as
    :func:`jaxpool.functional.tdgs_pool` (checked there), ``temperature`` float32."""
    n, c = batched.shape[0], batched.shape[-1]
    out_shape = (n, *spec.out_size, c)
    # Reciprocals of the (small) temperature and of tau: one multiply per element below.
    inv_t = _fast_windows.broadcast_param(1.0 / (jax.nn.relu(temperature) + eps), out_shape)
    inv_tau = 1.0 / jnp.asarray(tau, _F32)
    k = spec.num_elements
    # Minus one Gumbel per window element (unused when deterministic): TDGS subtracts it, which
    # saves XLA a negation pass over the noise.
    noise = jnp.zeros((), _F32) if deterministic else _fast_rng.neg_gumbel(key, (k, *out_shape))
    view = _windows.window_view(batched, spec)
    if view is not None:
        return view_sample(view.astype(_F32), inv_t, inv_tau, noise, not deterministic)
    values = _window_ops.f32(_windows.window_elements(batched, spec))
    offsets = _window_ops.padding_offsets(_windows.valid_masks(spec), k)
    return window_sample(tuple(values), inv_t, inv_tau, tuple(offsets), noise, not deterministic)


def _forward(values, inv_t, inv_tau, offsets, noise, hard: bool):
    """Returns ``(y, w, index)``: the output, the (soft) weights and the drawn element (None
    unless ``hard``).  ``offsets`` are 0 or ``-inf`` (padding) per element."""
    logits = [v * inv_t + o for v, o in zip(values, offsets, strict=True)]
    if not hard:
        weights = _window_ops.window_softmax(logits)
        return _window_ops.expectation(weights, values), weights, None
    scores = [(z - e) * inv_tau for z, e in zip(logits, noise, strict=True)]
    index = _window_ops.first_argmax(scores)
    return _window_ops.select(index, values), _window_ops.window_softmax(scores), index


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def window_sample(values, inv_t, inv_tau, offsets, noise, hard):
    """TDGS of windows given as K float32 ``(N, Ho, Wo, C)`` elements ``values``.

    ``inv_t``: ``(N, Ho, Wo, C)``; ``inv_tau``: scalar; ``offsets``: per element 0 or ``-inf``
    (padding); ``noise``: ``(K, N, Ho, Wo, C)`` minus Gumbels (ignored unless ``hard``).  No
    derivative reaches ``offsets`` or ``noise``.
    """
    return _forward(values, inv_t, inv_tau, offsets, noise, hard)[0]


@window_sample.defjvp
def _window_sample_jvp(hard, primals, tangents):
    values, inv_t, inv_tau, offsets, noise = primals
    d_values, d_inv_t, d_inv_tau, _, _ = tangents
    y, weights, index = _forward(values, inv_t, inv_tau, offsets, noise, hard)
    mean = _window_ops.window_dot(weights, values)
    centred = [v - mean for v in values]
    c = [w * r for w, r in zip(weights, centred, strict=True)]  # 0 on padding (w = 0, R = 0)
    spread = _window_ops.window_dot(weights, [r * r for r in centred])  # sum_k c_k R_k
    if not hard:
        coefficients = [w + inv_t * c_k for w, c_k in zip(weights, c, strict=True)]
        return y, _window_ops.window_dot(coefficients, list(d_values)) + spread * d_inv_t
    by_values = _window_ops.select(index, list(d_values)) + (
        inv_t * inv_tau
    ) * _window_ops.window_dot(c, list(d_values))
    # R_k / t + g_k, finite on padding too (R = 0 there), where c_k = 0.
    unscaled = [v * inv_t - e for v, e in zip(values, noise, strict=True)]
    by_tau = _window_ops.window_dot(c, unscaled) * d_inv_tau
    return y, by_values + inv_tau * spread * d_inv_t + by_tau


def _noise_view(noise: jax.Array, kh: int, kw: int) -> jax.Array:
    """The ``(K, N, Ho, Wo, C)`` noise laid out as a view ``(N, Ho, kh, Wo, kw, C)``."""
    _, n, ho, wo, c = noise.shape
    return noise.reshape(kh, kw, n, ho, wo, c).transpose(2, 3, 0, 4, 1, 5)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def view_sample(view, inv_t, inv_tau, noise, hard):
    """:func:`window_sample` of non-overlapping VALID windows, given as the float32 view
    ``(N, Ho, kh, Wo, kw, C)`` of :func:`jaxpool._windows.window_view`; the other arguments as
    there (``noise`` in the element layout, so both forms draw the same sample).

    The same values; the derivative is written over the view, so that its transpose (the
    backward pass) is one broadcasting loop that writes the input's cotangent, where the
    element form's transpose adds K zero-padded slices.
    """
    values = _windows.view_elements(view)
    offsets = [jnp.zeros((), _F32)] * len(values)
    return _forward(values, inv_t, inv_tau, offsets, noise, hard)[0]


@view_sample.defjvp
def _view_sample_jvp(hard, primals, tangents):
    view, inv_t, inv_tau, noise = primals
    d_view, d_inv_t, d_inv_tau, _ = tangents
    _, _, kh, _, kw, _ = view.shape
    per_window = _fast_windows.per_window
    values = _windows.view_elements(view)
    # The window's scores s_k and their maximum from the elements; exp(s - max) over the view.
    if hard:
        scores = [(v * inv_t - e) * inv_tau for v, e in zip(values, noise, strict=True)]
        view_scores = (view * per_window(inv_t) - _noise_view(noise, kh, kw)) * inv_tau
    else:
        scores = [v * inv_t for v in values]
        view_scores = view * per_window(inv_t)
    top = functools.reduce(jnp.maximum, scores)
    view_exps = jnp.exp(view_scores - per_window(top))
    exps = _windows.view_elements(view_exps)
    inv_total = 1.0 / _window_ops.window_sum(exps)
    mean = _window_ops.window_dot(exps, values) * inv_total  # m = sum_k w_k R_k
    view_weights = view_exps * per_window(inv_total)
    view_c = view_weights * (view - per_window(mean))  # c_k = w_k (R_k - m)
    centred = [v - mean for v in values]
    spread = _window_ops.window_dot(exps, [r * r for r in centred]) * inv_total  # sum c_k R_k
    if not hard:
        coefficients = view_weights + per_window(inv_t) * view_c
        return mean, jnp.sum(coefficients * d_view, axis=(2, 4)) + spread * d_inv_t
    index = _fast_windows.narrow_index(_window_ops.first_argmax(scores), len(values))
    hit = _fast_windows.is_element(index, kh, kw)
    coefficients = jnp.where(hit, 1.0, 0.0) + per_window(inv_t * inv_tau) * view_c
    by_values = jnp.sum(coefficients * d_view, axis=(2, 4))
    unscaled = [(v * inv_t - e) * r for v, e, r in zip(values, noise, centred, strict=True)]
    by_tau = _window_ops.window_dot(exps, unscaled) * inv_total * d_inv_tau
    y = _window_ops.select(index, values)
    return y, by_values + inv_tau * spread * d_inv_t + by_tau
