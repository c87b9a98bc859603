"""Flax linen pooling layers: thin wrappers over :mod:`jaxpool.functional` (NHWC).

Each layer owns its parameters and randomness and calls the pure function; the math, formulas and
shapes are documented there.  Every layer takes ``deterministic``, as a field or a call argument:
the stochastic layers merge the two like :class:`flax.linen.Dropout` (one of them must be given)
and draw from the rng stream ``'pooling'``; the others compute the same either way and ignore it::

    model.apply(variables, x, rngs={"pooling": key})          # training
    model.apply(variables, x, deterministic=True)               # inference, no rng needed

``init`` in training mode may take one key: the noise then comes from ``'params'``, as flax's
``make_rng`` does for :class:`flax.linen.Dropout`; ``apply`` needs the ``'pooling'`` stream.
A stochastic layer's ``deterministic`` must be a Python bool; the other layers ignore it.

``strides=None`` means strides equal to the window (PyTorch's default).  Beware: flax's own
``nn.max_pool`` defaults to stride 1.  The study's eight layers also take ``implementation``
(``'auto'``, ``'reference'`` or ``'fast'``), passed to the pure function (see
:mod:`jaxpool.functional`); the later five have their reference implementation only.

A layer is described once, here: its hyperparameters are the dataclass fields, :meth:`Pooler.parameters`
declares its parameters (name, shape, initializer) for an input size, and :meth:`Pooler.pool` calls
the pure function.  The Linen ``__call__`` and the NNX layers of :mod:`jaxpool.nnx` both use these two
methods, so neither restates a shape or a formula.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxpool import _windows, functional

Window = int | Sequence[int]
_SHARING = ("layer", "channel", "region_channel")


def _check_choice(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}; got {value!r}")


class ParamSpec(NamedTuple):
    """One parameter of a layer: its shape for the given input and its initializer
    ``init(key, shape, dtype)``; parameters are float32."""

    shape: tuple[int, ...]
    init: nn.initializers.Initializer


class Pooler(nn.Module):
    """Base of every pooling layer: parameters from :meth:`parameters`, output from :meth:`pool`.

    Subclasses declare their hyperparameters as fields (a ``deterministic`` field among them)
    and override the two methods; stochastic ones set ``stochastic = True`` and have an
    ``rng_collection`` field.
    """

    stochastic: ClassVar[bool] = False

    def parameters(self, in_size: tuple[int, int] | None, channels: int) -> dict[str, ParamSpec]:
        """The parameters for inputs of spatial size ``in_size`` (None where unknown: layers whose
        parameter shapes need it raise) and ``channels`` channels; none by default."""
        return {}

    def pool(
        self,
        x: jax.Array,
        params: Mapping[str, jax.Array],
        key: jax.Array | None,
        deterministic: bool,
    ) -> jax.Array:
        """The layer's output for parameter values ``params`` (``key`` is None when deterministic)."""
        raise TypeError(f"{type(self).__name__} must define pool(x, params, key, deterministic)")

    def merge_mode(self, deterministic: bool | None) -> bool:
        """The call's ``deterministic`` merged with the field (as Dropout); a stochastic layer
        without either raises a ValueError naming the layer and the fix.  A stochastic layer's,
        where given, must be a Python bool (``'false'`` would be truthy); the other layers ignore
        both (a traced value included)."""
        if not self.stochastic:
            return True
        if self.deterministic is not None:
            _windows.check_flag(self.deterministic, "deterministic")
        if deterministic is not None:
            _windows.check_flag(deterministic, "deterministic")
        if self.deterministic is None and deterministic is None:
            raise ValueError(
                f"{type(self).__name__} is stochastic and needs to know the mode: call it with "
                "deterministic=True (inference) or deterministic=False (training, with "
                f"rngs={{'{self.rng_collection}': key}} in apply), or set deterministic= when "
                "constructing it"
            )
        return nn.merge_param("deterministic", self.deterministic, deterministic)

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
    ) -> jax.Array:
        batched, _ = _windows.check_input(x)
        params = {
            name: _checked_param(self, name, spec)
            for name, spec in self.parameters(batched.shape[1:3], batched.shape[-1]).items()
        }
        deterministic = self.merge_mode(deterministic)
        if not deterministic and rng is None:
            # init falls back to the 'params' stream, as flax's make_rng (nn.Dropout) does, so
            # that init(key, x, train=True) works; apply needs the pooling stream itself.
            fallback = self.is_initializing() and self.has_rng("params")
            if not self.has_rng(self.rng_collection) and not fallback:
                raise ValueError(
                    f"{type(self).__name__} is stochastic and deterministic=False needs noise: "
                    f"pass rngs={{'{self.rng_collection}': key}} to apply/init (or rng=key to the "
                    "call), or deterministic=True for inference"
                )
            rng = self.make_rng(self.rng_collection)
        return self.pool(x, params, None if deterministic else rng, deterministic)


def _checked_param(module: nn.Module, name: str, spec: ParamSpec) -> jax.Array:
    """``module.param`` that raises a clear ValueError when the input implies another shape."""
    if module.has_variable("params", name):  # boxed (nn.with_partitioning) or not
        existing = jnp.shape(nn.meta.unbox(module.get_variable("params", name)))
        check_shape(module, name, existing, spec.shape)
    return module.param(name, spec.init, spec.shape, jnp.float32)


def check_shape(layer, name: str, existing: tuple[int, ...], shape: tuple[int, ...]) -> None:
    """Raises a ValueError when parameter ``name`` of shape ``existing`` does not fit an input
    that needs ``shape``, saying whether the channel count or the spatial size differs."""
    existing, shape = tuple(existing), tuple(shape)
    if existing == shape:
        return
    head = f"{type(layer).__name__}.{name} has shape {existing} but this input needs {shape}"
    if len(existing) != len(shape):
        raise ValueError(
            f"{head}: it has {len(existing)} axes, not {len(shape)}. A parameter stacked "
            "over an ensemble or layers (nn.vmap/nn.scan, nnx.vmap/nnx.scan) is used inside the "
            "same transform; a parameter from a layer with another sharing (per=...) does not fit."
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


def _require_size(layer, in_size: tuple[int, int] | None, what: str) -> tuple[int, int]:
    if in_size is None:
        raise ValueError(
            f"{type(layer).__name__} with {what} has parameters whose shape depends on the input's "
            "spatial size: give input_size=(H, W) when constructing it"
        )
    return in_size


class _WindowedPool(Pooler):
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

    def _window(self) -> tuple[int, int]:
        return _windows.normalize_pair(self.window_shape, "window_shape")

    def _out_size(self, in_size: tuple[int, int]) -> tuple[int, int]:
        return _windows.window_spec(in_size, self.window_shape, self.strides, self.padding).out_size


class MaxPool(_WindowedPool):
    """Max pooling; see :func:`jaxpool.functional.max_pool`.  No parameters, not stochastic.

    Example::

      >>> y = jaxpool.MaxPool().apply({}, jnp.ones((8, 28, 28, 16)))   # (8, 14, 14, 16)
    """

    implementation: str = "auto"

    def pool(self, x, params, key, deterministic):
        return functional.max_pool(
            x, self.window_shape, self.strides, self.padding, implementation=self.implementation
        )


class AvgPool(_WindowedPool):
    """Average pooling, padding not counted; see :func:`jaxpool.functional.avg_pool`."""

    implementation: str = "auto"

    def pool(self, x, params, key, deterministic):
        return functional.avg_pool(
            x, self.window_shape, self.strides, self.padding, implementation=self.implementation
        )


class MixedPool(_WindowedPool):
    """Mixed max-average pooling (Lee et al., AISTATS 2016); see
    :func:`jaxpool.functional.mixed_pool`.  Not stochastic.

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
    implementation: str = "auto"

    def parameters(self, in_size, channels):
        _check_choice(self.per, ("channel", "layer"), "per")
        return {"alpha": ParamSpec((channels,) if self.per == "channel" else (), self.alpha_init)}

    def pool(self, x, params, key, deterministic):
        return functional.mixed_pool(
            x, params["alpha"], self.window_shape, self.strides, self.padding,
            implementation=self.implementation,
        )  # fmt: skip


def _kernel_shape(layer: _WindowedPool, in_size, channels: int) -> tuple[int, ...]:
    """The window-shaped kernel of gated/tree pooling for the sharing ``layer.per``."""
    _check_choice(layer.per, _SHARING, "per")
    window = layer._window()
    if layer.per == "layer":
        return window
    if layer.per == "channel":
        return (*window, channels)
    out = layer._out_size(_require_size(layer, in_size, "per='region_channel'"))
    return (*out, *window, channels)


class GatedPool(_WindowedPool):
    """Gated max-average pooling (Lee et al., AISTATS 2016); see
    :func:`jaxpool.functional.gated_pool`.  Not stochastic.

    Attributes:
      per: sharing of the gating mask ``gate_kernel`` and bias ``gate_bias``:
        ``'layer'``: ``(kh, kw)`` and ``()`` (Lee et al.'s released code); ``'channel'`` (default):
        ``(kh, kw, C)`` and ``(C,)``; ``'region_channel'``: ``(Ho, Wo, kh, kw, C)`` and
        ``(Ho, Wo, C)``, which fixes the spatial size at init.
      use_bias: learn ``gate_bias`` (default True).
      kernel_init, bias_init: initializers; zeros by default (gate 0.5 at init).
    """

    per: str = "channel"
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.zeros
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    implementation: str = "auto"

    def parameters(self, in_size, channels):
        _windows.check_flag(self.use_bias, "use_bias")
        shape = _kernel_shape(self, in_size, channels)
        specs = {"gate_kernel": ParamSpec(shape, self.kernel_init)}
        if self.use_bias:
            bias_shape = {
                "layer": (),
                "channel": shape[-1:],
                "region_channel": (*shape[:2], shape[-1]),
            }
            specs["gate_bias"] = ParamSpec(bias_shape[self.per], self.bias_init)
        return specs

    def pool(self, x, params, key, deterministic):
        return functional.gated_pool(
            x, params["gate_kernel"], params.get("gate_bias"),
            self.window_shape, self.strides, self.padding, implementation=self.implementation,
        )  # fmt: skip


def average_plus_noise(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Leaf-filter init: ``(1 + U(-0.5, 0.5)) / K`` for ``shape = (2, kh, kw, ...)``.

    Near the average filter, and different for the two leaves so that the tree's gate gets a
    gradient from the first step (equal leaves make the gate irrelevant).
    """
    k = shape[1] * shape[2] if len(shape) in (3, 4) else shape[3] * shape[4]
    return ((1.0 + jax.random.uniform(key, shape, dtype, -0.5, 0.5)) / k).astype(dtype)


class TreePool(_WindowedPool):
    """Two-level tree pooling (Lee et al., AISTATS 2016); see :func:`jaxpool.functional.tree_pool`.
    Not stochastic.

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
    implementation: str = "auto"

    def parameters(self, in_size, channels):
        shape = _kernel_shape(self, in_size, channels)
        return {
            "leaf_kernels": ParamSpec((2, *shape), self.leaf_init),
            "gate_kernel": ParamSpec(shape, self.gate_init),
        }

    def pool(self, x, params, key, deterministic):
        return functional.tree_pool(
            x, params["leaf_kernels"], params["gate_kernel"],
            self.window_shape, self.strides, self.padding, implementation=self.implementation,
        )  # fmt: skip


_RNG_NOTE = """

    .. note::
      Training needs ``apply(..., rngs={"pooling": key})`` (or ``rng=`` in the call)."""


class StochasticPool(_WindowedPool):
    """Stochastic pooling (Zeiler & Fergus, ICLR 2013); see :func:`jaxpool.functional.stochastic_pool`.

    Training samples one element per window; deterministic mode outputs the probability-weighted
    mean (formulas in the function's docstring).

    Attributes:
      mode: ``'l1'`` (default, the paper) or ``'softmax'``.
      rng_collection: rng stream to draw from; ``'pooling'``.
    """

    mode: str = "l1"
    rng_collection: str = "pooling"
    implementation: str = "auto"
    stochastic: ClassVar[bool] = True

    def pool(self, x, params, key, deterministic):
        return functional.stochastic_pool(
            x, self.window_shape, self.strides, self.padding,
            key=key, deterministic=deterministic, mode=self.mode,
            implementation=self.implementation,
        )  # fmt: skip


class S3Pool(Pooler):
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
    """

    stride: Window = 2
    grid_size: Window = 4
    per_example: bool = False
    test_mode: str = "expectation"
    deterministic: bool | None = None
    rng_collection: str = "pooling"
    implementation: str = "auto"
    stochastic: ClassVar[bool] = True

    def pool(self, x, params, key, deterministic):
        return functional.s3_pool(
            x, self.stride, self.grid_size,
            key=key, deterministic=deterministic, per_example=self.per_example,
            test_mode=self.test_mode, implementation=self.implementation,
        )  # fmt: skip


def uniform_around(center: float, half_width: float = 0.5) -> nn.initializers.Initializer:
    """Initializer ``center + U(-half_width, half_width)``."""

    def init(key, shape, dtype=jnp.float32):
        return center + jax.random.uniform(key, shape, dtype, -half_width, half_width)

    return init


class TDGSPool(_WindowedPool):
    """Temperature-driven Gumbel-softmax pooling; see :func:`jaxpool.functional.tdgs_pool`.

    Training outputs one element per window, a hard straight-through Gumbel-softmax sample at a
    learned temperature; deterministic mode outputs its expectation (formulas in the function's
    docstring).

    Attributes:
      per: ``'position'`` (default): ``temperature`` of shape ``(Ho, Wo, C)`` inferred at init (a
        later call with another spatial size raises); ``'channel'``: ``(C,)``; ``'layer'``: ``()``.
      init_temperature: ``temperature`` starts at ``init_temperature + U(-0.5, 0.5)``; 1.0.
      tau: Gumbel-softmax temperature; 1.0.
      eps: floor of the effective temperature; 0.1.
      rng_collection: rng stream to draw from; ``'pooling'``.

    Example::

      >>> layer = jaxpool.TDGSPool()
      >>> x = jnp.ones((1, 8, 8, 4))
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
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
    implementation: str = "auto"
    stochastic: ClassVar[bool] = True

    def parameters(self, in_size, channels):
        _check_choice(self.per, ("position", "channel", "layer"), "per")
        _windows.check_finite(self.init_temperature, "init_temperature")
        concrete = not isinstance(self.init_temperature, jax.core.Tracer)
        if concrete and (np.asarray(self.init_temperature) <= 0).any():
            raise ValueError(  # the sweep's --tdgs-init-temperatures says the same
                "init_temperature must be > 0: the temperature is relu(T) + eps with T from "
                "init_temperature + U(-0.5, 0.5), so at or below 0 most of T starts where relu "
                f"has no gradient and never learns; got {self.init_temperature!r}"
            )
        if self.per == "position":
            shape = (*self._out_size(_require_size(self, in_size, "per='position'")), channels)
        else:
            shape = (channels,) if self.per == "channel" else ()
        return {"temperature": ParamSpec(shape, uniform_around(self.init_temperature))}

    def pool(self, x, params, key, deterministic):
        return functional.tdgs_pool(
            x, params["temperature"], self.window_shape, self.strides, self.padding,
            key=key, deterministic=deterministic, tau=self.tau, eps=self.eps,
            implementation=self.implementation,
        )  # fmt: skip


# ----------------------------------------------------------------------------- after the study
class SoftPool(_WindowedPool):
    """SoftPool (Stergiou et al., ICCV 2021), a softmax-weighted mean; see
    :func:`jaxpool.functional.soft_pool`.  No parameters, not stochastic.

    Attributes:
      padding: ``'VALID'`` (default), ``'SAME'``, or explicit pixels (int or pair).
    """

    padding: str | int | Sequence[int] = "VALID"

    def pool(self, x, params, key, deterministic):
        return functional.soft_pool(x, self.window_shape, self.strides, self.padding)


class LPPool(_WindowedPool):
    """Learnable power-mean (LP / GeM) pooling; see :func:`jaxpool.functional.lp_pool`.  Not
    stochastic.

    Attributes:
      per: ``'layer'`` (default): a scalar ``p``; ``'channel'``: ``p`` of shape ``(C,)``.
      p_init: initializer of ``p``; the constant 3 (GeM).
      eps: the clamp; 1e-6.
      padding: ``'VALID'`` (default), ``'SAME'``, or explicit pixels (int or pair).
    """

    padding: str | int | Sequence[int] = "VALID"
    per: str = "layer"
    p_init: nn.initializers.Initializer = nn.initializers.constant(3.0)
    eps: float = 1e-6

    def parameters(self, in_size, channels):
        _check_choice(self.per, ("layer", "channel"), "per")
        return {"p": ParamSpec((channels,) if self.per == "channel" else (), self.p_init)}

    def pool(self, x, params, key, deterministic):
        return functional.lp_pool(
            x, params["p"], self.window_shape, self.strides, self.padding, eps=self.eps
        )


class LIPPool(_WindowedPool):
    """Local Importance-based Pooling with the official "simplified LIP" logit module (Gao et al.,
    ICCV 2019); see :func:`jaxpool.functional.lip_pool` and :func:`jaxpool.functional.lip_logits`.
    Not stochastic.

    As the official ``init_layer``, the logit convolution starts at zero, so LIP starts as average
    pooling.

    Attributes:
      window_shape, strides, padding: the official 3, 2 and 1 (explicit pixels) by default.
      logit_kernel_size: the logit convolution's window; 3.
      coefficient: the gate's scale; 12.
      epsilon: the instance normalisation's variance floor; 1e-5.
      kernel_init, scale_init, bias_init: initializers of ``logit_kernel`` ``(k, k, C, C)``,
        ``norm_scale`` ``(C,)`` and ``norm_bias`` ``(C,)``: zeros, ones, zeros.
    """

    window_shape: Window = 3
    strides: Window | None = 2
    padding: str | int | Sequence[int] = 1
    logit_kernel_size: Window = 3
    coefficient: float = 12.0
    epsilon: float = 1e-5
    kernel_init: nn.initializers.Initializer = nn.initializers.zeros
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    def parameters(self, in_size, channels):
        kernel = _windows.normalize_pair(self.logit_kernel_size, "logit_kernel_size")
        return {
            "logit_kernel": ParamSpec((*kernel, channels, channels), self.kernel_init),
            "norm_scale": ParamSpec((channels,), self.scale_init),
            "norm_bias": ParamSpec((channels,), self.bias_init),
        }

    def logits(self, x: jax.Array, params: Mapping[str, jax.Array]) -> jax.Array:
        """The importance logits of ``x`` for parameter values ``params``."""
        return functional.lip_logits(
            x, params["logit_kernel"], params["norm_scale"], params["norm_bias"],
            coefficient=self.coefficient, epsilon=self.epsilon,
        )  # fmt: skip

    def pool(self, x, params, key, deterministic):
        return functional.lip_pool(
            x, self.logits(x, params), self.window_shape, self.strides, self.padding
        )


class MaxBlurPool(Pooler):
    """Anti-aliased max pooling, MaxBlurPool (Zhang, ICML 2019); see
    :func:`jaxpool.functional.max_blur_pool`.  No parameters, not stochastic.

    Attributes:
      window_shape: the dense (stride 1) max's window; 2.
      strides: the blur's subsampling; 2.
      filter_size: binomial taps per axis, 1 to 7; 4 (``[1, 3, 3, 1]``).
      pad_mode: the blur's padding: ``'reflect'`` (default), ``'edge'`` or ``'constant'``.
      deterministic: accepted and ignored, as by every layer.
    """

    window_shape: Window = 2
    strides: Window = 2
    filter_size: int = 4
    pad_mode: str = "reflect"
    deterministic: bool | None = None

    def pool(self, x, params, key, deterministic):
        return functional.max_blur_pool(
            x, self.window_shape, self.strides, filter_size=self.filter_size, pad_mode=self.pad_mode
        )


class FractionalMaxPool(Pooler):
    """Fractional max pooling (Graham, 2014); see :func:`jaxpool.functional.fractional_max_pool`.

    Output ``floor(H / ratio) x floor(W / ratio)``.  Training draws new pooling regions per call;
    deterministic mode uses fixed, evenly spread regions.

    Attributes:
      ratio: ``alpha`` in (1, 2) or a pair; ``sqrt(2)``.
      sequence: ``'random'`` (default) or ``'pseudo_random'`` region boundaries.
      overlapping: regions share their boundary row/column; False.
      per_example: new regions per example instead of per call; False.
      deterministic: default for ``__call__``'s ``deterministic``.
      rng_collection: rng stream to draw from; ``'pooling'``.
    """

    ratio: float | Sequence[float] = math.sqrt(2)
    sequence: str = "random"
    overlapping: bool = False
    per_example: bool = False
    deterministic: bool | None = None
    rng_collection: str = "pooling"
    stochastic: ClassVar[bool] = True

    def pool(self, x, params, key, deterministic):
        return functional.fractional_max_pool(
            x, self.ratio, key=key, deterministic=deterministic, sequence=self.sequence,
            overlapping=self.overlapping, per_example=self.per_example,
        )  # fmt: skip


for _layer in (StochasticPool, S3Pool, TDGSPool, FractionalMaxPool):
    _layer.__doc__ += _RNG_NOTE
