r"""The window math of TDGS pooling (:func:`jaxpool.functional.tdgs_pool`), with hand-written
gradients.

Per window ``R`` (``K`` elements) with inverse temperature ``1/t``, inverse Gumbel-softmax
temperature ``1/tau`` and one Gumbel ``g_k = -noise_k`` per element:

.. math::
  s_k = (R_k / t + g_k) / \tau, \qquad w = \mathrm{softmax}(s), \qquad
  y = R_{k^*},\ k^* = \mathrm{argmax}_k\, s_k \ \text{(first on ties)}

and the straight-through gradient is that of ``sum_k w_k R_k``.  With ``m = sum_k w_k R_k`` and
``a_k = dy w_k (R_k - m)``:

.. math::
  \frac{\partial}{\partial R_k} = dy [k = k^*] + \frac{a_k}{\tau t}, \qquad
  \frac{\partial}{\partial (1/t)} = \frac{1}{\tau} \sum_k a_k R_k, \qquad
  \frac{\partial}{\partial (1/\tau)} = \sum_k a_k (R_k / t + g_k)

Deterministic mode: ``w = softmax(R / t)``, ``y = sum_k w_k R_k``,
``dR_k = dy w_k + a_k / t``, ``d(1/t) = sum_k a_k R_k``.

Two forms of the same math:

* :func:`window_sample`: windows as K ``(N, Ho, Wo, C)`` elements (any geometry, padding as a
  ``-inf`` logit offset) and both modes;
* :func:`view_sample`: training mode on the reshape view ``(N, Ho, kh, Wo, kw, C)`` of
  non-overlapping VALID windows.  Its backward pass computes the K weights of a window once, as
  one loop over the view, and the input gradient as a second loop over the view, where the
  element form recomputes each window's maximum in K separate loops and stacks K gradients back
  into the input.  Same draw, value and gradients (``tests/test_functional.py`` compares the two
  and both with autodiff).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxpool import _window_ops, _windows

_F32 = jnp.float32


# ----------------------------------------------------------------------------- window elements


def _forward(values, inv_t, inv_tau, offsets, noise, hard: bool):
    """TDGS over a window given as elements; returns ``(y, weights, index, logits)``.

    ``hard``: ``y`` is the element drawn by the Gumbel-max trick on ``(R / t + g) / tau`` (with
    ``g = -noise``) and ``weights`` the soft sample; otherwise ``weights = softmax(R / t)`` and
    ``y = sum weights R``.  ``index`` is the drawn element (None unless ``hard``); ``logits`` are
    the (perturbed) logits.
    """
    logits = [v * inv_t + o for v, o in zip(values, offsets, strict=True)]
    if not hard:
        weights = _window_ops.window_softmax(logits)
        return _window_ops.window_dot(weights, values), weights, None, logits
    perturbed = [(z - e) * inv_tau for z, e in zip(logits, noise, strict=True)]
    index = _window_ops.first_argmax(perturbed)
    return (
        _window_ops.select(index, values),
        _window_ops.window_softmax(perturbed),
        index,
        perturbed,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def window_sample(values, inv_t, inv_tau, offsets, noise, hard):
    """TDGS of windows given as K float32 ``(N, Ho, Wo, C)`` elements ``values``.

    ``inv_t``: ``(N, Ho, Wo, C)``; ``inv_tau``: scalar; ``offsets``: per element 0 or ``-inf``
    (padding); ``noise``: ``(K, N, Ho, Wo, C)`` minus Gumbels (ignored unless ``hard``).  The
    gradient (module docstring) is written by hand: one fused pass instead of autodiff's many.
    """
    return _forward(values, inv_t, inv_tau, offsets, noise, hard)[0]


def _window_sample_fwd(values, inv_t, inv_tau, offsets, noise, hard):
    # Recomputing in the backward pass is cheaper than storing K weights.  The value comes from
    # _forward, not window_sample: differentiated again (a gradient penalty), y is then the
    # drawn element itself, as in the view form, not the straight-through surrogate.
    y = _forward(values, inv_t, inv_tau, offsets, noise, hard)[0]
    return y, (values, inv_t, inv_tau, offsets, noise)


def _window_sample_bwd(hard, residuals, cotangent):
    values, inv_t, inv_tau, offsets, noise = residuals
    _, weights, index, scaled = _forward(values, inv_t, inv_tau, offsets, noise, hard)
    mean = _window_ops.window_dot(weights, values)
    centred = [v - mean for v in values]
    # a_k is 0 for padding (w = 0, R = 0).
    a = [cotangent * w * c for w, c in zip(weights, centred, strict=True)]
    # sum_k a_k R_k = dy sum_k w_k (R_k - m)^2, as the view form: no cancellation.
    d_inv_t = cotangent * _window_ops.window_dot(weights, [c * c for c in centred])
    if hard:
        d_values = [
            jnp.where(index == k, cotangent, 0.0) + a_k * (inv_t * inv_tau)
            for k, a_k in enumerate(a)
        ]
        d_inv_t = d_inv_t * inv_tau
        # Unscaled logits R/t + g, 0 at padding (their -inf times w = 0 would be NaN).
        finite = [jnp.where(o == 0, z / inv_tau, 0.0) for o, z in zip(offsets, scaled, strict=True)]
        d_inv_tau = jnp.sum(_window_ops.window_dot(a, finite))
    else:
        d_values = [cotangent * w + a_k * inv_t for w, a_k in zip(weights, a, strict=True)]
        d_inv_tau = jnp.zeros_like(inv_tau)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, (offsets, noise))
    return (tuple(d_values), _window_ops.same_sharding(d_inv_t, inv_t), d_inv_tau, *zeros)


window_sample.defvjp(_window_sample_fwd, _window_sample_bwd)


# ----------------------------------------------------------------------------- reshape view


def _scores(values, inv_t, inv_tau, noise):
    """The perturbed logits ``s_k``, in the operations of :func:`_forward` (the same draw)."""
    return [(v * inv_t - e) * inv_tau for v, e in zip(values, noise, strict=True)]


def _noise_view(noise: jax.Array, kh: int, kw: int) -> jax.Array:
    """``(K, N, Ho, Wo, C)`` noise as the view ``(N, Ho, kh, Wo, kw, C)`` (element ``k`` of a
    window at ``(k // kw, k % kw)``), for loops over the view."""
    _, n, ho, wo, c = noise.shape
    return noise.reshape(kh, kw, n, ho, wo, c).transpose(2, 3, 0, 4, 1, 5)


@jax.custom_vjp
def view_sample(x6, inv_t, inv_tau, noise):
    """Training-mode TDGS on a view ``x6`` ``(N, Ho, kh, Wo, kw, C)`` of non-overlapping windows;
    returns float32 ``(N, Ho, Wo, C)``.

    ``inv_t``: float32 ``(N, Ho, Wo, C)``; ``inv_tau``: float32 scalar; ``noise``: float32
    ``(K, N, Ho, Wo, C)``, minus one Gumbel per element (the layout of the element form, so
    both draw the same sample).
    """
    return _view_sample_fwd(x6, inv_t, inv_tau, noise)[0]  # XLA drops the unused residuals


def _view_sample_fwd(x6, inv_t, inv_tau, noise):
    values = _window_ops.f32(_windows.view_elements(x6))
    index = _window_ops.narrow_index(
        _window_ops.first_argmax(_scores(values, inv_t, inv_tau, noise)), len(values)
    )
    return _window_ops.select(index, values), (x6, inv_t, inv_tau, noise, index)


def _view_sample_bwd(residuals, cotangent):
    x6, inv_t, inv_tau, noise, index = residuals
    kh, kw = x6.shape[2], x6.shape[4]
    per_window = _window_ops.per_window
    values = _window_ops.f32(_windows.view_elements(x6))
    # Window maximum from the elements (one loop over windows, reading x and noise once) ...
    top = functools.reduce(jnp.maximum, _scores(values, inv_t, inv_tau, noise))
    # ... then the unnormalised weights as one loop over the view, stored once for the rest.
    v6 = x6.astype(_F32)
    s6 = (v6 * per_window(inv_t) - _noise_view(noise, kh, kw)) * inv_tau
    e6 = jnp.exp(s6 - per_window(top))
    exps = _windows.view_elements(e6)
    inv_total = 1.0 / _window_ops.window_sum(exps)
    mean = _window_ops.window_dot(exps, values) * inv_total
    # a = dy w (R - m) over the view; dR = dy [k = k*] + a / (tau t).
    a6 = per_window(cotangent * inv_total) * e6 * (v6 - per_window(mean))
    hit = _window_ops.view_hit(index, kh, kw)
    dx6 = jnp.where(hit, per_window(cotangent), 0.0) + a6 * per_window(inv_t * inv_tau)
    # Per window: sum_k a_k R_k = dy sum_k w_k (R_k - m)^2 (no cancellation), and
    # sum_k a_k (R_k / t + g_k).
    centred = [v - mean for v in values]
    spread = _window_ops.window_dot(exps, [c * c for c in centred])
    d_inv_t = cotangent * inv_total * spread * inv_tau
    unscaled = [(v * inv_t - e) * c for v, e, c in zip(values, noise, centred, strict=True)]
    d_inv_tau = jnp.sum(cotangent * inv_total * _window_ops.window_dot(exps, unscaled))
    return (
        dx6.astype(x6.dtype),
        _window_ops.same_sharding(d_inv_t, inv_t),
        d_inv_tau,
        jnp.zeros_like(noise),
    )


view_sample.defvjp(_view_sample_fwd, _view_sample_bwd)
