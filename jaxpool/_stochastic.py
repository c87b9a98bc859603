r"""Stochastic pooling, the Gumbel-softmax and TDGS pooling: the implementations behind
:func:`jaxpool.functional.stochastic_pool`, :func:`~jaxpool.functional.gumbel_softmax` and
:func:`~jaxpool.functional.tdgs_pool` (import them from there; the conventions are in that module's
docstring).  Each function's body is its reference implementation; the fast paths are in
:mod:`jaxpool._fast_rng` (noise) and :mod:`jaxpool._fast_tdgs`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxpool import _fast_rng, _fast_tdgs, _window_ops, _windows
from jaxpool._windows import Window

_F32 = jnp.float32


def stochastic_pool(
    x: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
    *,
    key: jax.Array | None = None,
    deterministic: bool = False,
    mode: str = "l1",
    implementation: str = "auto",
) -> jax.Array:
    r"""Stochastic pooling (Zeiler & Fergus, ICLR 2013).

    Training samples one element of each window and outputs it; ``deterministic=True`` outputs the
    expectation of that sample (Zeiler & Fergus's probabilistic weighting):

    .. math::
      i \sim \mathrm{Cat}(p), \quad y_{\mathrm{train}} = R_i, \qquad
      y_{\mathrm{det}} = \sum_{i \in R} p_i R_i

    ``mode='l1'`` (the paper): :math:`p_i = a_i / \sum_k a_k` with :math:`a = \max(R, 0)`, so
    :math:`y_{\mathrm{det}} = \sum a^2 / \sum a`.  A window with no positive mass samples uniformly,
    and its deterministic output is the plain mean (an all-zero window gives 0).
    ``mode='softmax'``: :math:`p = \mathrm{softmax}(R)` over the raw values (any sign).
    Gradients in training flow to the sampled element only; for finite inputs nothing is ever
    NaN.  Infinite inputs take their limits (a ``+inf`` activation takes all the probability, a
    ``-inf`` one none: never drawn, no part of the expectation), and a window holding a NaN
    outputs it.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      window_shape, strides, padding: as :func:`max_pool`.
      key: PRNG key; required unless ``deterministic``.  Draws are independent per window.
      deterministic: output the expectation instead of a sample.
      mode: ``'l1'`` or ``'softmax'``.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'`` (see :mod:`jaxpool.functional`).
        The reference draws its uniforms with ``jax.random.uniform``; the fast path with
        :func:`jaxpool._fast_rng.uniform`, the same distribution but other numbers, so the two
        draw different samples from one key.  ``'auto'``: the fast path on CPU, the reference elsewhere (measurements: :mod:`jaxpool._fast_rng`).

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Zeiler, Fergus. Stochastic Pooling for Regularization of Deep Convolutional Neural Networks.
      ICLR 2013 (arXiv:1301.3557).
    """
    if mode not in ("l1", "softmax"):
        raise ValueError(f"mode must be 'l1' or 'softmax'; got {mode!r}")
    deterministic = _windows.check_flag(deterministic, "deterministic")
    if not deterministic:
        key = _windows.require_key(key, "stochastic_pool")
    batched, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(batched.shape[1:3], window_shape, strides, padding)
    masks = _windows.valid_masks(spec)
    fast = (
        _windows.use_fast(implementation, _fast_rng.STOCHASTIC_WINS, batched.shape)
        and not deterministic
    )
    values = _window_ops.f32(_windows.window_elements(batched, spec))
    # A window whose largest activation is +inf (the limit of a growing one: it takes all the
    # probability) outputs +inf; one holding a NaN outputs NaN.  Decided per window, from its
    # maximum, after the arithmetic: the per-element math stays that of finite windows.
    top = jax.lax.stop_gradient(
        functools.reduce(jnp.maximum, _window_ops.masked(values, masks, -jnp.inf))
    )
    if mode == "softmax":
        probs = _window_ops.window_softmax(values, masks)
        weights = probs
    else:
        mass = [jnp.maximum(v, 0.0) for v in values]
        # p is the same for any scaling of a window's mass.  Dividing it by the power of two at or
        # below its largest element (exact; at least the smallest normal float32) keeps its sum
        # in [2**-23, 2K]: the derivative of w / total, which squares total, then stays finite
        # for tiny or huge mass (1e-20 would underflow to 0 and 1e20 overflow: NaN gradients).
        _, exponent = jnp.frexp(jnp.maximum(top, 0.0))
        scale = _power_of_two(exponent - 1)
        mass = [a / scale for a in mass]
        total = _window_ops.window_sum(mass)
        has_mass = total > 0
        valid = (
            [jnp.ones((), _F32) for _ in values]
            if masks is None
            else _window_ops.masked([jnp.ones(v.shape[1:], _F32) for v in values], masks, 0.0)
        )
        n_valid = _window_ops.window_sum(valid)
        # Proportional to the probabilities, which is all sampling needs; an all-zero window is
        # uniform over its valid elements.
        weights = [jnp.where(has_mass, a, u) for a, u in zip(mass, valid, strict=True)]
        # The denominator is never 0 (every window has a valid element), so no branch divides
        # by zero and the gradient stays finite.
        denominator = jnp.where(has_mass, total, n_valid)
        probs = [w / denominator for w in weights]
    if deterministic:
        y = _window_ops.expectation(probs, values)
    else:
        shape = values[0].shape
        uniforms = _fast_rng.uniform(key, shape) if fast else jax.random.uniform(key, shape, _F32)
        index = _window_ops.sample_index(uniforms, [jax.lax.stop_gradient(w) for w in weights])
        y = _window_ops.select(index, values)
    y = jnp.where(top == jnp.inf, jnp.inf, jnp.where(jnp.isnan(top), jnp.nan, y))
    return _windows.to_output(y, x.dtype, unbatched)


def _power_of_two(exponent: jax.Array) -> jax.Array:
    """``2**exponent`` as float32 for an integer ``exponent`` clipped to the normal range
    [-126, 127], built from its bits: exact on every backend (``jnp.ldexp`` computes a float
    ``pow``, which an accelerator may round)."""
    biased = jnp.clip(exponent, -126, 127).astype(jnp.int32) + 127
    return jax.lax.bitcast_convert_type(biased << 23, _F32)


def gumbel_softmax(
    key: jax.Array,
    logits: jax.Array,
    tau: float = 1.0,
    hard: bool = False,
    axis: int = -1,
    *,
    implementation: str = "auto",
) -> jax.Array:
    r"""Gumbel-softmax sample (Jang, Gu & Poole; Maddison, Mnih & Teh, ICLR 2017).

    .. math::
      y_{\mathrm{soft}} = \mathrm{softmax}\!\left(\frac{\mathrm{logits} + g}{\tau}\right),
      \quad g_i = -\log(-\log u_i),\ u_i \sim U(0, 1)

    With ``hard=True`` the value is the one-hot ``y_hard`` of ``argmax y_soft`` and the gradient is
    that of ``y_soft`` (straight-through): ``y_hard - stop_gradient(y_soft) + y_soft``.  Logits of
    ``-inf`` are never drawn.  The math runs in float32; the result has the dtype of ``logits``.

    Args:
      key: PRNG key.
      logits: unnormalised log-probabilities, any shape.
      tau: temperature, > 0.
      hard: return a straight-through one-hot sample.
      axis: the category axis.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'`` (see :mod:`jaxpool.functional`).
        The reference draws ``g`` with ``jax.random.gumbel``; the fast path with
        :func:`jaxpool._fast_rng.gumbel`, the same distribution but other numbers, so the two
        draw different samples from one key.  ``'auto'``: the fast path on CPU, the reference elsewhere (measurements: :mod:`jaxpool._fast_rng`).

    Returns:
      An array shaped like ``logits`` that sums to 1 along ``axis``.
    """
    _windows.check_positive(tau, "tau", " (a divisor)", normal=True)
    if key is None:
        raise ValueError("gumbel_softmax needs a PRNG key: pass jax.random.key(seed) as `key`")
    _windows.check_key(key, "gumbel_softmax")
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(
            f"logits must have a floating dtype (float32, bfloat16, float16, ...); got {logits.dtype}"
        )
    if _windows.use_fast(implementation, _fast_rng.GUMBEL_WINS, logits.shape):
        gumbels = _fast_rng.gumbel(key, logits.shape)
    else:
        gumbels = jax.random.gumbel(key, logits.shape, _F32)
    y_soft = jax.nn.softmax((logits.astype(_F32) + gumbels) / tau, axis=axis)
    if hard:
        index = jnp.argmax(y_soft, axis=axis)
        y_hard = jax.nn.one_hot(index, logits.shape[axis], axis=axis, dtype=_F32)
        y_soft = y_hard - jax.lax.stop_gradient(y_soft) + y_soft
    return y_soft.astype(logits.dtype)


def _temperature_for(temperature, spec: _windows.WindowSpec, channels: int) -> jax.Array:
    temperature = jnp.asarray(temperature)
    ho, wo = spec.out_size
    if temperature.shape not in ((ho, wo, channels), (channels,), ()):
        raise ValueError(
            f"temperature must have shape (Ho, Wo, C) = {(ho, wo, channels)} (per position), "
            f"({channels},) (per channel) or () (per layer) for this input; got "
            f"{temperature.shape}. A per-position temperature fixes the spatial size at init."
        )
    return temperature.astype(_F32)


def tdgs_pool(
    x: jax.Array,
    temperature: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
    *,
    key: jax.Array | None = None,
    deterministic: bool = False,
    tau: float = 1.0,
    eps: float = 0.1,
    implementation: str = "auto",
) -> jax.Array:
    r"""Temperature-driven Gumbel-softmax pooling (TDGS, jaxpool).

    Inside each window a hard straight-through Gumbel-softmax sample whose temperature is learned:

    .. math::
      t = \mathrm{relu}(\mathrm{temperature}) + \epsilon, \qquad
      y_{\mathrm{train}} = \sum_{i \in R} z_i R_i, \quad
      z = \mathrm{gumbel\_softmax}(R / t, \tau, \mathrm{hard}), \qquad
      y_{\mathrm{det}} = \sum_{i \in R} \mathrm{softmax}(R / t)_i R_i

    The training value is exactly one element of the window; its gradient flows through the soft
    sample to ``x`` and ``temperature``.  Deterministic mode is the expectation, without noise: it
    tends to the max as ``t -> 0`` and to the mean as ``t`` grows.  Infinite logits ``R / t`` take
    their limits (a ``+inf`` one takes all the weight, a ``-inf`` one none: never drawn); a window
    holding a NaN gives NaN.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      temperature: ``(Ho, Wo, C)`` per output position, ``(C,)`` per channel, or ``()`` per layer.
      window_shape, strides, padding: as :func:`max_pool`.
      key: PRNG key; required unless ``deterministic``.
      deterministic: output the expectation instead of a sample.
      tau: Gumbel-softmax temperature of the soft sample, > 0.
      eps: floor of the effective temperature, > 0.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'`` (see :mod:`jaxpool.functional`).
        The reference draws one Gumbel per window element with ``jax.random.gumbel``; the fast
        path (:mod:`jaxpool._fast_tdgs`) with :func:`jaxpool._fast_rng.gumbel`, the same
        distribution but other numbers, so the two draw different samples from one key.  Their
        second derivatives in training mode differ (take the reference for ``jax.hessian``).
        ``'auto'``: the fast path on CPU, the reference elsewhere (measurements: :mod:`jaxpool._fast_tdgs`).

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Gumbel-softmax and its straight-through estimator: Jang, Gu, Poole. Categorical
      Reparameterization with Gumbel-Softmax. ICLR 2017 (arXiv:1611.01144); Maddison, Mnih, Teh.
      The Concrete Distribution. ICLR 2017 (arXiv:1611.00712).
    """
    _windows.check_positive(eps, "eps", " (it keeps the temperature positive)", normal=True)
    _windows.check_positive(tau, "tau", " (a divisor)", normal=True)
    deterministic = _windows.check_flag(deterministic, "deterministic")
    if not deterministic:
        key = _windows.require_key(key, "tdgs_pool")
    batched, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(batched.shape[1:3], window_shape, strides, padding)
    n, c = batched.shape[0], batched.shape[-1]
    temperature = _temperature_for(temperature, spec, c)
    if _windows.use_fast(implementation, _fast_tdgs.TDGS_WINS, batched.shape):
        y = _fast_tdgs.tdgs_pool(batched, temperature, spec, key, deterministic, tau, eps)
        return _windows.to_output(y, x.dtype, unbatched)
    values = _window_ops.f32(_windows.window_elements(batched, spec))
    masks = _windows.valid_masks(spec)
    t = jax.nn.relu(temperature) + eps
    logits = [v / t for v in values]
    if deterministic:
        weights = _window_ops.window_softmax(logits, masks)
        return _windows.to_output(_window_ops.expectation(weights, values), x.dtype, unbatched)
    gumbels = jax.random.gumbel(key, (len(values), n, *spec.out_size, c), _F32)
    scores = [(z + g) / tau for z, g in zip(logits, gumbels, strict=True)]
    scores = _window_ops.masked(scores, masks, -jnp.inf)
    soft = _window_ops.window_softmax(scores)
    index = _window_ops.first_argmax(scores)
    # The drawn element plus sum_k (soft_k - stop_gradient(soft_k)) R_k: exactly 0 in value
    # (x - x is 0 exactly; infinite R_k, which have no derivative, are left out of it, as 0 * inf
    # is NaN), the soft sample's derivative.  So y is exactly the drawn element.
    surrogate = _window_ops.window_dot(
        [w - jax.lax.stop_gradient(w) for w in soft],
        [jnp.where(jnp.isfinite(v), v, 0.0) for v in values],
    )
    y = _window_ops.select(index, values) + surrogate
    return _windows.to_output(y, x.dtype, unbatched)
