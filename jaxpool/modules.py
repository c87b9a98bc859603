"""Flax linen pooling layers: thin wrappers over :mod:`jaxpool.functional` (NHWC).

Each layer owns its parameters and randomness and calls the pure function; the math, formulas and
shapes are documented there.  Every layer takes ``deterministic``, as a field or a call argument:
the stochastic layers merge the two like :class:`flax.linen.Dropout` (one of them must be given)
and draw from the rng stream ``'pooling'``; the others compute the same either way and ignore it::

    model.apply(variables, x, rngs={"pooling": key})          # training
    model.apply(variables, x, deterministic=True)               # inference, no rng needed

``strides=None`` means strides equal to the window (PyTorch's default).  Beware: flax's own
``nn.max_pool`` defaults to stride 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxpool import _windows, functional

Window = int | Sequence[int]
_SHARING = ("layer", "channel", "region_channel")


def _check_choice(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}; got {value!r}")


class _WindowedPool(nn.Module):
    """Shared fields of the windowed layers.

    Attributes:
      window_shape: int or ``(kh, kw)``; default ``(2, 2)``.
      strides: int, ``(sh, sw)``, or None (default) for strides equal to the window.
      padding: ``'VALID'`` (default) or ``'SAME'``.
      deterministic: default for ``__call__``'s ``deterministic``.
    """

    window_shape: Window = (2, 2)
    strides: Window | None = None
    padding: str = "VALID"
    deterministic: bool | None = None

    def _spec(self, x: jax.Array) -> _windows.WindowSpec:
        x4, _ = _windows.check_input(x)
        return _windows.window_spec(x4.shape[1:3], self.window_shape, self.strides, self.padding)


class MaxPool(_WindowedPool):
    """Max pooling; see :func:`jaxpool.functional.max_pool`.  No parameters, not stochastic.

    Example::

      >>> y = jaxpool.MaxPool().apply({}, jnp.ones((8, 28, 28, 16)))   # (8, 14, 14, 16)
    """

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        return functional.max_pool(x, self.window_shape, self.strides, self.padding)


class AvgPool(_WindowedPool):
    """Average pooling, padding not counted; see :func:`jaxpool.functional.avg_pool`."""

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        return functional.avg_pool(x, self.window_shape, self.strides, self.padding)


class MixedPool(_WindowedPool):
    """Mixed max-average pooling, ``y = s max(R) + (1 - s) mean(R)``, ``s = sigmoid(alpha)``.

    See :func:`jaxpool.functional.mixed_pool` (Lee et al., AISTATS 2016).  Deterministic mode
    computes the same (nothing is random).

    Attributes:
      per: ``'channel'`` (default): ``alpha`` of shape ``(C,)``; ``'layer'``: a scalar ``alpha``.
      alpha_init: initializer of ``alpha``; zeros (``s = 0.5``) by default.

    Example::

      >>> layer = jaxpool.MixedPool()
      >>> params = layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 4)))
      >>> jax.tree_util.tree_map(jnp.shape, params)
      {'params': {'alpha': (4,)}}
    """

    per: str = "channel"
    alpha_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        _check_choice(self.per, ("channel", "layer"), "per")
        shape = (x.shape[-1],) if self.per == "channel" else ()
        alpha = self.param("alpha", self.alpha_init, shape, jnp.float32)
        return functional.mixed_pool(x, alpha, self.window_shape, self.strides, self.padding)


def _kernel_shape(per: str, spec: _windows.WindowSpec, channels: int) -> tuple[int, ...]:
    _check_choice(per, _SHARING, "per")
    return {
        "layer": spec.window,
        "channel": (*spec.window, channels),
        "region_channel": (*spec.out_size, *spec.window, channels),
    }[per]


def _fixed_param(module: nn.Module, name: str, init, shape: tuple[int, ...]) -> jax.Array:
    """``module.param`` that raises a clear ValueError when the input implies another shape."""
    if module.has_variable("params", name):
        existing, shape = module.get_variable("params", name).shape, tuple(shape)
        if existing != shape:
            head = (
                f"{type(module).__name__}.{name} has shape {existing} but this input needs {shape}"
            )
            if existing[-1:] != shape[-1:]:  # the last axis of a shape that can differ is C
                raise ValueError(
                    f"{head}: it was initialised for inputs with {existing[-1]} channels and this "
                    f"input has {shape[-1]}. Call it with the channel count it was initialised with."
                )
            raise ValueError(
                f"{head}: a per-position parameter fixes the input's spatial size at "
                "init. Call it with the spatial size it was initialised with, or use a sharing "
                "option that does not depend on it (per='channel' or per='layer')."
            )
    return module.param(name, init, shape, jnp.float32)


class GatedPool(_WindowedPool):
    """Gated max-average pooling, ``y = g max(R) + (1 - g) mean(R)``, ``g = sigmoid(w . R + b)``.

    See :func:`jaxpool.functional.gated_pool` (Lee et al., AISTATS 2016).  Deterministic mode
    computes the same (nothing is random).

    Attributes:
      per: sharing of the gating mask ``w`` (``gate_kernel``) and bias ``b`` (``gate_bias``):
        ``'layer'``: ``(kh, kw)`` and ``()`` (Lee et al.'s released code); ``'channel'`` (default):
        ``(kh, kw, C)`` and ``(C,)``; ``'region_channel'``: ``(Ho, Wo, kh, kw, C)`` and
        ``(Ho, Wo, C)``, which fixes the spatial size at init.
      use_bias: learn ``gate_bias`` (default True).
      kernel_init, bias_init: initializers; zeros by default (``g = 0.5`` at init).
    """

    per: str = "channel"
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.zeros
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        spec = self._spec(x)
        shape = _kernel_shape(self.per, spec, x.shape[-1])
        kernel = _fixed_param(self, "gate_kernel", self.kernel_init, shape)
        bias = None
        if self.use_bias:
            bias_shape = {
                "layer": (),
                "channel": shape[-1:],
                "region_channel": (*shape[:2], shape[-1]),
            }
            bias = _fixed_param(self, "gate_bias", self.bias_init, bias_shape[self.per])
        return functional.gated_pool(x, kernel, bias, self.window_shape, self.strides, self.padding)


def average_plus_noise(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Leaf-filter init: ``(1 + U(-0.5, 0.5)) / K`` for ``shape = (2, kh, kw, ...)``.

    Near the average filter, and different for the two leaves so that the tree's gate gets a
    gradient from the first step (equal leaves make the gate irrelevant).
    """
    k = shape[1] * shape[2] if len(shape) in (3, 4) else shape[3] * shape[4]
    return ((1.0 + jax.random.uniform(key, shape, dtype, -0.5, 0.5)) / k).astype(dtype)


class TreePool(_WindowedPool):
    """Two-level tree pooling, ``y = sigmoid(w . R) v1 . R + (1 - sigmoid(w . R)) v2 . R``.

    See :func:`jaxpool.functional.tree_pool` (Lee et al., AISTATS 2016).  Deterministic mode
    computes the same (nothing is random).

    Attributes:
      per: sharing of ``leaf_kernels`` (``(2,) +`` kernel shape) and ``gate_kernel`` (no bias):
        ``'layer'`` ``(kh, kw)``, ``'channel'`` (default) ``(kh, kw, C)``, ``'region_channel'``
        ``(Ho, Wo, kh, kw, C)``.
      leaf_init: initializer of the leaves; :func:`average_plus_noise` by default.
      gate_init: initializer of the gate; zeros by default.
    """

    per: str = "channel"
    leaf_init: nn.initializers.Initializer = average_plus_noise
    gate_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        spec = self._spec(x)
        shape = _kernel_shape(self.per, spec, x.shape[-1])
        leaves = _fixed_param(self, "leaf_kernels", self.leaf_init, (2, *shape))
        gate = _fixed_param(self, "gate_kernel", self.gate_init, shape)
        return functional.tree_pool(x, leaves, gate, self.window_shape, self.strides, self.padding)


class _StochasticMixin:
    """``deterministic`` merging and rng handling shared by the stochastic layers (as Dropout)."""

    def _rng_and_mode(self, deterministic: bool | None, rng: jax.Array | None):
        if self.deterministic is None and deterministic is None:
            raise ValueError(
                f"{type(self).__name__} is stochastic and needs to know the mode: call it with "
                "deterministic=True (inference) or deterministic=False (training, with "
                f"rngs={{'{self.rng_collection}': key}} in apply), or set deterministic= when "
                "constructing it"
            )
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic:
            return None, True
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        return rng, False


class StochasticPool(_StochasticMixin, _WindowedPool):
    """Stochastic pooling (Zeiler & Fergus, ICLR 2013); see :func:`jaxpool.functional.stochastic_pool`.

    Training samples one element per window with ``p = max(R, 0) / sum max(R, 0)`` (``mode='l1'``)
    or ``softmax(R)`` (``mode='softmax'``); deterministic mode outputs ``sum p R``.

    Attributes:
      mode: ``'l1'`` (default, the paper) or ``'softmax'``.
      rng_collection: rng stream to draw from; ``'pooling'``.

    .. note::
      Training needs ``apply(..., rngs={"pooling": key})`` (or ``rng=`` in the call).
    """

    mode: str = "l1"
    rng_collection: str = "pooling"

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
    ) -> jax.Array:
        rng, deterministic = self._rng_and_mode(deterministic, rng)
        return functional.stochastic_pool(
            x, self.window_shape, self.strides, self.padding,
            key=rng, deterministic=deterministic, mode=self.mode,
        )  # fmt: skip


class S3Pool(_StochasticMixin, nn.Module):
    """S3Pool (Zhai et al., CVPR 2017); see :func:`jaxpool.functional.s3_pool`.

    Training: stride-1 max pool, then sorted random rows/columns, ``len(block) // stride`` per
    block of ``grid_size``.  Deterministic: the exact expectation of the training output
    (``test_mode='expectation'``), or the official code's average pool of the stride-1 max map
    (``test_mode='official'``).  Output ``(N, H // stride, W // stride, C)`` in both modes.

    Attributes:
      stride: downsampling factor (int or pair); 2 by default.
      grid_size: block size, a multiple of ``stride``; 4 by default.
      per_example: one row/column set per example instead of per call.
      test_mode: what deterministic mode computes: ``'expectation'`` (default) or ``'official'``.
      deterministic: default for ``__call__``'s ``deterministic``.
      rng_collection: rng stream to draw from; ``'pooling'``.

    .. note::
      Training needs ``apply(..., rngs={"pooling": key})`` (or ``rng=`` in the call).
    """

    stride: Window = 2
    grid_size: Window = 4
    per_example: bool = False
    test_mode: str = "expectation"
    deterministic: bool | None = None
    rng_collection: str = "pooling"

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
    ) -> jax.Array:
        rng, deterministic = self._rng_and_mode(deterministic, rng)
        return functional.s3_pool(
            x, self.stride, self.grid_size,
            key=rng, deterministic=deterministic, per_example=self.per_example,
            test_mode=self.test_mode,
        )  # fmt: skip


def uniform_around(center: float, half_width: float = 0.5) -> nn.initializers.Initializer:
    """Initializer ``center + U(-half_width, half_width)``."""

    def init(key, shape, dtype=jnp.float32):
        return center + jax.random.uniform(key, shape, dtype, -half_width, half_width)

    return init


class TDGSPool(_StochasticMixin, _WindowedPool):
    """Temperature-driven Gumbel-softmax pooling; see :func:`jaxpool.functional.tdgs_pool`.

    Training outputs one element per window, a hard straight-through Gumbel-softmax sample of
    ``softmax(R / t)``, ``t = relu(temperature) + eps``; deterministic mode outputs the expectation
    ``sum softmax(R / t) R``.

    Attributes:
      per: ``'position'`` (default): ``temperature`` of shape ``(Ho, Wo, C)`` inferred at init (a
        later call with another spatial size raises); ``'channel'``: ``(C,)``; ``'layer'``: ``()``.
      init_temperature: ``temperature`` starts at ``init_temperature + U(-0.5, 0.5)``; 1.0.
      tau: Gumbel-softmax temperature; 1.0.
      eps: floor of the effective temperature; 0.1.
      rng_collection: rng stream to draw from; ``'pooling'``.

    .. note::
      Training needs ``apply(..., rngs={"pooling": key})`` (or ``rng=`` in the call).

    Example::

      >>> layer = jaxpool.TDGSPool()
      >>> x = jnp.ones((1, 8, 8, 4))
      >>> variables = layer.init({"params": k1, "pooling": k2}, x, deterministic=False)
      >>> jax.tree_util.tree_map(jnp.shape, variables)
      {'params': {'temperature': (4, 4, 4)}}
      >>> layer.apply(variables, x, deterministic=False, rngs={"pooling": k3}).shape
      (1, 4, 4, 4)
    """

    per: str = "position"
    init_temperature: float = 1.0
    tau: float = 1.0
    eps: float = 0.1
    rng_collection: str = "pooling"

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
    ) -> jax.Array:
        _check_choice(self.per, ("position", "channel", "layer"), "per")
        channels = x.shape[-1]
        shape = {"position": (*self._spec(x).out_size, channels), "channel": (channels,)}
        temperature = _fixed_param(
            self, "temperature", uniform_around(self.init_temperature), shape.get(self.per, ())
        )
        rng, deterministic = self._rng_and_mode(deterministic, rng)
        return functional.tdgs_pool(
            x, temperature, self.window_shape, self.strides, self.padding,
            key=rng, deterministic=deterministic, tau=self.tau, eps=self.eps,
        )  # fmt: skip
