r"""Pure pooling functions (NHWC), the math behind :mod:`jaxpool.modules`.

Every function takes ``x`` of shape ``(N, H, W, C)`` or unbatched ``(H, W, C)`` and any floating
dtype, and returns the same dtype; probability and softmax math runs in float32.  ``strides=None``
means strides equal to the window (as in PyTorch; note that ``flax.linen.max_pool`` defaults to
stride 1).  ``padding`` is ``'VALID'`` (a window larger than the input is an error) or ``'SAME'``
(output ``ceil(H / stride)``, as flax); padded positions are never the max, never counted in an
average or expectation, and never sampled.  Inside each window ``R`` the ``K = kh * kw`` elements
are flattened in row-major ``(kh, kw)`` order; learnable window-shaped kernels use the same order.

Stochastic functions take an explicit ``key`` and raise without one unless ``deterministic=True``.
Their per-element noise (uniforms, Gumbels) comes from the Threefry-2x32-20 generator of
``jax.random`` seeded by ``key`` and written in jnp ops (:func:`jaxpool._rng.uniform`): the
distributions of ``jax.random.uniform`` and ``jax.random.gumbel``, other bits.  As with
``jax.random``, a ``vmap`` over keys equals a loop over them, and the samples do not depend on how
the batch is sharded.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _rng, _tdgs, _window_ops, _windows

Window = int | Sequence[int]
_F32 = jnp.float32


def _finish(y: jax.Array, dtype, unbatched: bool) -> jax.Array:
    y = y.astype(dtype)
    return y[0] if unbatched else y


# ----------------------------------------------------------------------------- baselines
def max_pool(
    x: jax.Array, window_shape: Window = 2, strides: Window | None = None, padding: str = "VALID"
) -> jax.Array:
    r"""Max pooling: :math:`y = \max_{i \in R} x_i` over each window ``R``.

    Equal to ``flax.linen.max_pool(x, window_shape, strides, padding)`` with the same strides.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      window_shape: int or ``(kh, kw)``.
      strides: int, ``(sh, sw)``, or None for strides equal to the window.
      padding: ``'VALID'`` or ``'SAME'``.

    Returns:
      ``(N, Ho, Wo, C)`` (or ``(Ho, Wo, C)``), the dtype of ``x``.
    """
    x4, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    x6 = _windows.window_view(x4, spec)
    if x6 is not None:
        return _finish(_window_ops.view_max(x6.shape[2], x6.shape[4], x6), x.dtype, unbatched)
    elems = _windows.window_elements(x4, spec)
    return _finish(_window_ops.window_max(elems, _windows.valid_masks(spec)), x.dtype, unbatched)


def avg_pool(
    x: jax.Array, window_shape: Window = 2, strides: Window | None = None, padding: str = "VALID"
) -> jax.Array:
    r"""Average pooling over the real (non-padding) elements: :math:`y = \frac{1}{|R|}\sum_{i\in R} x_i`.

    Equal to ``flax.linen.avg_pool(x, window_shape, strides, padding, count_include_pad=False)``.
    Shapes as :func:`max_pool`; the sum runs in float32.
    """
    x4, unbatched = _windows.check_input(x)
    elems, masks, spec = _windows.windows(x4, window_shape, strides, padding)
    return _finish(_window_ops.window_mean(elems, spec, masks), x.dtype, unbatched)


# ----------------------------------------------------------------------------- Lee et al.
def mixed_pool(
    x: jax.Array,
    alpha: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
) -> jax.Array:
    r"""Mixed max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    .. math::
      y = s \max_{i \in R} x_i + (1 - s) \frac{1}{|R|} \sum_{i \in R} x_i,
      \qquad s = \sigma(\alpha)

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      alpha: mixing logit, shape ``(C,)`` (one per channel) or ``()`` (one per layer).
      window_shape, strides, padding: as :func:`max_pool`.

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Lee, Gallagher, Tu. Generalizing Pooling Functions in Convolutional Neural Networks: Mixed,
      Gated, and Tree. AISTATS 2016 (arXiv:1509.08985).
    """
    x4, unbatched = _windows.check_input(x)
    alpha = jnp.asarray(alpha)
    channels = x4.shape[-1]
    if alpha.shape not in ((), (channels,)):
        raise ValueError(
            f"alpha must have shape () or (C,) = ({channels},) for an input with C={channels}; "
            f"got {alpha.shape}"
        )
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    x6 = _windows.window_view(x4.astype(_F32), spec)
    if x6 is not None:
        z = _window_ops.broadcast_param(alpha.astype(_F32), (x6.shape[0], *spec.out_size, channels))
        return _finish(_window_ops.view_gate_mix(*spec.window, x6, z), x.dtype, unbatched)
    elems, masks = _windows.window_elements(x4, spec), _windows.valid_masks(spec)
    s = _window_ops.broadcast_param(jax.nn.sigmoid(alpha.astype(_F32)), elems[0].shape)
    y = s * _window_ops.window_max(elems, masks).astype(_F32) + (1 - s) * _window_ops.window_mean(
        elems, spec, masks
    )
    return _finish(y, x.dtype, unbatched)


def _bias_for(bias, kernel_rank: int, spec: _windows.WindowSpec, channels: int) -> jax.Array:
    expected = {2: (), 3: (channels,), 5: (*spec.out_size, channels)}[kernel_rank]
    bias = jnp.asarray(bias)
    if bias.shape != expected:
        raise ValueError(
            f"gate_bias must have shape {expected} to match gate_kernel of rank {kernel_rank}; "
            f"got {bias.shape}"
        )
    return bias.astype(_F32)


def gated_pool(
    x: jax.Array,
    gate_kernel: jax.Array,
    gate_bias: jax.Array | None = None,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
) -> jax.Array:
    r"""Gated max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    .. math::
      y = g \max_{i \in R} x_i + (1 - g) \frac{1}{|R|} \sum_{i \in R} x_i,
      \qquad g = \sigma(w^\top R + b)

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      gate_kernel: the window-shaped gating mask ``w``: ``(kh, kw)`` shared by all channels (Lee et
        al.'s released code), ``(kh, kw, C)`` one per channel, or ``(Ho, Wo, kh, kw, C)`` one per
        output position and channel.
      gate_bias: ``b``, shape ``()``, ``(C,)`` or ``(Ho, Wo, C)`` to match, or None for no bias.
      window_shape, strides, padding: as :func:`max_pool`.

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.
    """
    x4, unbatched = _windows.check_input(x)
    channels = x4.shape[-1]
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    masks = _windows.valid_masks(spec)
    x6, values = _window_ops.f32_windows(x4, spec)
    shape = values[0].shape
    z = _window_ops.kernel_dot(gate_kernel, spec, x6, values, "gate_kernel")
    if gate_bias is not None:
        bias = _bias_for(gate_bias, jnp.ndim(gate_kernel), spec, channels)
        z = z + _window_ops.broadcast_param(bias, shape)
    if x6 is not None:
        return _finish(_window_ops.view_gate_mix(*spec.window, x6, z), x.dtype, unbatched)
    g = jax.nn.sigmoid(z)
    y = g * _window_ops.window_max(values, masks) + (1 - g) * _window_ops.window_mean(
        values, spec, masks
    )
    return _finish(y, x.dtype, unbatched)


def tree_pool(
    x: jax.Array,
    leaf_kernels: jax.Array,
    gate_kernel: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
) -> jax.Array:
    r"""Two-level tree pooling (Lee, Gallagher & Tu, AISTATS 2016).

    .. math::
      y = \sigma(w^\top R)\, v_1^\top R + \left(1 - \sigma(w^\top R)\right) v_2^\top R

    Two learned leaf pooling filters ``v1, v2`` and one gating mask ``w``, window-shaped, no bias
    (as Lee et al.).  The leaves are free linear filters, so ``y`` need not lie in ``[min R, max R]``.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      leaf_kernels: ``(2,) +`` a gate-kernel shape (see :func:`gated_pool`): ``v1 = leaf_kernels[0]``,
        ``v2 = leaf_kernels[1]``.
      gate_kernel: ``w``, same sharing as the leaves: ``(kh, kw)``, ``(kh, kw, C)`` or
        ``(Ho, Wo, kh, kw, C)``.
      window_shape, strides, padding: as :func:`max_pool`.

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.
    """
    x4, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    x6, values = _window_ops.f32_windows(x4, spec)
    leaf_kernels, gate_kernel = jnp.asarray(leaf_kernels), jnp.asarray(gate_kernel)
    if leaf_kernels.shape != (2, *gate_kernel.shape):
        raise ValueError(
            f"leaf_kernels must have shape (2,) + gate_kernel.shape = {(2, *gate_kernel.shape)}; "
            f"got {leaf_kernels.shape}"
        )
    gate = jax.nn.sigmoid(_window_ops.kernel_dot(gate_kernel, spec, x6, values, "gate_kernel"))
    leaves = [
        _window_ops.kernel_dot(leaf, spec, x6, values, "leaf_kernels[i]") for leaf in leaf_kernels
    ]
    y = gate * leaves[0] + (1 - gate) * leaves[1]
    return _finish(y, x.dtype, unbatched)


# ----------------------------------------------------------------------------- stochastic
def stochastic_pool(
    x: jax.Array,
    window_shape: Window = 2,
    strides: Window | None = None,
    padding: str = "VALID",
    *,
    key: jax.Array | None = None,
    deterministic: bool = False,
    mode: str = "l1",
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
    Gradients in training flow to the sampled element only; nothing is ever NaN.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      window_shape, strides, padding: as :func:`max_pool`.
      key: PRNG key; required unless ``deterministic``.  Draws are independent per window.
      deterministic: output the expectation instead of a sample.
      mode: ``'l1'`` or ``'softmax'``.

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Zeiler, Fergus. Stochastic Pooling for Regularization of Deep Convolutional Neural Networks.
      ICLR 2013 (arXiv:1301.3557).
    """
    if mode not in ("l1", "softmax"):
        raise ValueError(f"mode must be 'l1' or 'softmax'; got {mode!r}")
    if not deterministic:
        key = _windows.require_key(key, "stochastic_pool")
    x4, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    masks = _windows.valid_masks(spec)
    # The sample's gradient is a custom VJP anyway; the expectation keeps forward mode.
    values = _window_ops.f32(_windows.window_elements(x4, spec, stack_gradient=not deterministic))
    if mode == "softmax":
        probs = _window_ops.window_softmax(_window_ops.masked(values, masks, -jnp.inf))
        weights = probs
    else:
        mass = [jnp.maximum(v, 0.0) for v in values]
        total = _window_ops.window_sum(mass)
        has_mass = total > 0
        valid = (
            [jnp.ones(()) for _ in values]
            if masks is None
            else _window_ops.masked([jnp.ones(v.shape[1:]) for v in values], masks, 0.0)
        )
        n_valid = _window_ops.window_sum(valid)
        # Proportional to the probabilities (sampling needs no more: _rng.sample_index scales its
        # uniform by their sum); an all-zero window is uniform over its valid elements.
        weights = [jnp.where(has_mass, a, u) for a, u in zip(mass, valid, strict=True)]
        # The denominator is never 0 (every window has a valid element), so no branch divides
        # by zero and the gradient stays finite.
        denominator = jnp.where(has_mass, total, n_valid)
        probs = [w / denominator for w in weights]
    if deterministic:
        y = _window_ops.window_dot(probs, values)
    else:
        index = _rng.sample_index(key, [jax.lax.stop_gradient(w) for w in weights])
        y = _window_ops.select(index, values)
    return _finish(y, x.dtype, unbatched)


def gumbel_softmax(
    key: jax.Array, logits: jax.Array, tau: float = 1.0, hard: bool = False, axis: int = -1
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

    Returns:
      An array shaped like ``logits`` that sums to 1 along ``axis``.
    """
    if isinstance(tau, (int, float)) and not tau > 0:
        raise ValueError(f"tau must be > 0; got {tau!r}")
    logits = jnp.asarray(logits)
    gumbels = _rng.gumbel(key, logits.shape)
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
    tends to the max as ``t -> 0`` and to the mean as ``t`` grows.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      temperature: ``(Ho, Wo, C)`` per output position, ``(C,)`` per channel, or ``()`` per layer.
      window_shape, strides, padding: as :func:`max_pool`.
      key: PRNG key; required unless ``deterministic``.
      deterministic: output the expectation instead of a sample.
      tau: Gumbel-softmax temperature of the soft sample, > 0.
      eps: floor of the effective temperature, > 0.

    Returns:
      ``(N, Ho, Wo, C)``, the dtype of ``x``.

    References:
      Gumbel-softmax and its straight-through estimator: Jang, Gu, Poole. Categorical
      Reparameterization with Gumbel-Softmax. ICLR 2017 (arXiv:1611.01144); Maddison, Mnih, Teh.
      The Concrete Distribution. ICLR 2017 (arXiv:1611.00712).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps the temperature positive); got {eps!r}")
    if isinstance(tau, (int, float)) and not tau > 0:
        raise ValueError(f"tau must be > 0; got {tau!r}")
    if not deterministic:
        key = _windows.require_key(key, "tdgs_pool")
    x4, unbatched = _windows.check_input(x)
    spec = _windows.window_spec(x4.shape[1:3], window_shape, strides, padding)
    n, c = x4.shape[0], x4.shape[-1]
    # Reciprocals of the (small) temperature and of tau: one multiply per element below.
    inv_t = 1.0 / (jax.nn.relu(_temperature_for(temperature, spec, c)) + eps)
    inv_t = _window_ops.broadcast_param(inv_t, (n, *spec.out_size, c))
    inv_tau = 1.0 / jnp.asarray(tau, _F32)
    k = spec.window[0] * spec.window[1]
    # One Gumbel per window element, (K, N, Ho, Wo, C), negated.
    noise = None if deterministic else _rng.neg_gumbel(key, (k, n, *spec.out_size, c))
    x6 = None if deterministic else _windows.window_view(x4, spec)
    if x6 is not None:
        return _finish(_tdgs.view_sample(x6, inv_t, inv_tau, noise), x.dtype, unbatched)
    values = _window_ops.f32(_windows.window_elements(x4, spec, stack_gradient=True))
    masks = _windows.valid_masks(spec)
    # Padding enters the logits as an offset of -inf (0 elsewhere): never drawn, weight 0.
    offsets = tuple(
        jnp.zeros(()) if m is None else jnp.where(m, 0.0, -jnp.inf)
        for m in (masks or [None] * len(values))
    )
    noise = jnp.zeros(()) if deterministic else noise
    y = _tdgs.window_sample(tuple(values), inv_t, inv_tau, offsets, noise, not deterministic)
    return _finish(y, x.dtype, unbatched)


# ----------------------------------------------------------------------------- S3Pool
def _s3_indices(key: jax.Array, size: int, stride: int, grid: int) -> jax.Array:
    """Sorted, distinct indices into the stride-1 max map: ``size // stride`` of them.

    The axis of the original input is cut into blocks of ``grid`` rows; block ``b`` contributes
    ``len(b) // stride`` rows drawn without replacement among its rows that exist in the max map
    (``row < size - stride + 1``).
    """
    n_blocks = -(-size // grid)
    rows = np.arange(n_blocks * grid).reshape(n_blocks, grid)
    available = rows < size - stride + 1
    block_len = np.minimum(grid, size - np.arange(n_blocks) * grid)
    need = (block_len // stride)[:, None]
    # A few scores per call: jax.random is cheap here.
    scores = jnp.where(available, jax.random.uniform(key, (n_blocks, grid)), 2.0)
    ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    chosen = (ranks < need).reshape(-1)
    return jnp.nonzero(chosen, size=size // stride)[0]


def s3_pool(
    x: jax.Array,
    stride: Window = 2,
    grid_size: Window = 4,
    *,
    key: jax.Array | None = None,
    deterministic: bool = False,
    per_example: bool = False,
) -> jax.Array:
    r"""S3Pool: pooling with stochastic spatial sampling (Zhai et al., CVPR 2017).

    1. ``m`` = max pool of ``x`` with window ``stride``, stride 1, VALID: ``(N, H-s+1, W-s+1, C)``.
    2. Each spatial axis of the *original* input is cut into blocks of ``grid_size`` rows; from each
       block, ``len(block) // stride`` distinct rows are drawn without replacement among the block's
       rows that exist in ``m`` and kept sorted.  Columns likewise, independently.
    3. The output is ``m`` at the intersections: ``(N, H // stride, W // stride, C)``.

    One row/column set per call is shared by the batch and channels (``per_example=True``: one set
    per example).  ``deterministic=True`` outputs the average pool of ``m`` (window = stride =
    ``stride``, ``stride // 2`` padding on each side, padding not counted), keeping the first
    ``H // stride`` x ``W // stride`` outputs: the same shape as training, for every input size.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``, with ``H, W >= stride``.
      stride: int or pair, the downsampling factor ``s``.
      grid_size: int or pair ``g``, a multiple of ``stride``.
      key: PRNG key; required unless ``deterministic``.
      deterministic: average-pool instead of sampling.
      per_example: draw a separate row/column set for each example.

    Returns:
      ``(N, H // s, W // s, C)``, the dtype of ``x``.

    References:
      Zhai, Wu, Kumar, Cheng, Lu, Zhang. S3Pool: Pooling with Stochastic Spatial Sampling.
      CVPR 2017 (arXiv:1611.05138).
    """
    strides = _windows.normalize_pair(stride, "stride")
    grid = _windows.normalize_pair(grid_size, "grid_size")
    if grid[0] % strides[0] or grid[1] % strides[1]:
        raise ValueError(
            f"grid_size must be a multiple of stride; got grid_size={grid_size!r}, stride={stride!r}"
        )
    if not deterministic:
        key = _windows.require_key(key, "s3_pool")
    x4, unbatched = _windows.check_input(x)
    n, h, w, _ = x4.shape
    if h < strides[0] or w < strides[1]:
        raise ValueError(
            f"s3_pool needs H >= stride and W >= stride; got input {x.shape}, stride={stride!r}"
        )
    elems, _, _ = _windows.windows(x4, strides, 1, "VALID")
    max_map = _window_ops.window_max(elems, None)  # (N, H-s+1, W-s+1, C)
    out_h, out_w = h // strides[0], w // strides[1]
    if deterministic:
        pads = ((strides[0] // 2,) * 2, (strides[1] // 2,) * 2)
        m_elems, masks, spec = _windows.windows(max_map, strides, strides, pads)
        y = _window_ops.window_mean(m_elems, spec, masks)[:, :out_h, :out_w]
        return _finish(y, x.dtype, unbatched)

    def sample(k, m):
        k_rows, k_cols = jax.random.split(k)
        rows = _s3_indices(k_rows, h, strides[0], grid[0])
        cols = _s3_indices(k_cols, w, strides[1], grid[1])
        return jnp.take(jnp.take(m, rows, axis=-3), cols, axis=-2)

    if per_example:
        y = jax.vmap(sample)(jax.random.split(key, n), max_map)
    else:
        y = sample(key, max_map)
    return _finish(y, x.dtype, unbatched)
