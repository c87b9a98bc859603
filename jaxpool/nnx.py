"""Flax NNX pooling layers: the layers of :mod:`jaxpool.modules` for ``flax.nnx`` (NHWC).

Same class names and hyperparameters as the Linen layers, parameters of the same names, shapes and
initial distributions, and the same pure functions underneath: each NNX layer holds its
hyperparameters and asks its Linen twin (an unbound ``flax.linen`` module built from them) for the
parameter declarations and the output, so no shape or formula is written twice.

The constructor takes the Linen layer's hyperparameters, by keyword or in the Linen field order
(``MaxPool(3)`` pools 3x3 as ``jaxpool.MaxPool(3)`` does), and what NNX needs in addition, as
keyword-only arguments:

- ``in_features``: the input's channel count, where a parameter's shape depends on it;
- ``input_size=(H, W)``: the spatial size, where a parameter is per output position
  (``TDGSPool(per='position')``, ``GatedPool``/``TreePool(per='region_channel')``);
- ``rngs=nnx.Rngs(...)``: for initialising parameters (stream ``params``) and, for the stochastic
  layers, their noise (stream ``rng_collection``, ``'pooling'`` by default; ``default`` where the
  Rngs has no such stream; with neither, training calls need ``rngs=``); or one ``nnx.RngStream``
  for both, as ``nnx.Dropout(rngs=rngs.pooling)``.

Hyperparameters are static (a NumPy/JAX scalar given for one is stored as the Python number it
holds), and ``inspect.signature`` / ``help()`` of a layer class list them with their defaults.

``deterministic`` works as in ``nnx.Dropout``: an attribute set by the constructor,
``model.eval()`` (True) and ``model.train()`` (False) or ``nnx.view(model, deterministic=...)``,
overridden by the call's ``deterministic``;
a stochastic layer with neither raises.  The call's ``rngs`` (a key, an ``nnx.Rngs`` or an
``RngStream``) overrides the constructor's.

Example::

  >>> from flax import nnx
  >>> import jaxpool.nnx as pnnx
  >>> layer = pnnx.TDGSPool(in_features=16, input_size=(28, 28), rngs=nnx.Rngs(0))
  >>> layer.temperature.shape
  (14, 14, 16)
  >>> layer(jnp.ones((8, 28, 28, 16)), deterministic=True).shape
  (8, 14, 14, 16)
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpool import _windows, modules

# Fields every flax Linen Module has that are not hyperparameters of a pooler.
_LINEN_INTERNAL = {"parent", "name"}


def hyperparameter_names(linen: type[modules.Pooler]) -> tuple[str, ...]:
    """The constructor keyword arguments of a layer: its Linen class's fields."""
    return tuple(f.name for f in dataclasses.fields(linen) if f.name not in _LINEN_INTERNAL)


class Pooler(nnx.Module):
    """Base of the NNX pooling layers; a subclass names its Linen twin in ``linen``."""

    linen: ClassVar[type[modules.Pooler]]

    def __init__(
        self,
        *args: Any,
        in_features: int | None = None,
        input_size: tuple[int, int] | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        **hyperparameters: Any,
    ):
        allowed = hyperparameter_names(self.linen)
        hyperparameters = self._merge_positional(args, hyperparameters, allowed)
        if rngs is not None and not isinstance(rngs, nnx.Rngs | nnx.RngStream):
            raise TypeError(
                f"{type(self).__name__}: rngs must be an nnx.Rngs, an nnx.RngStream or None; got "
                f"{type(rngs).__name__}"
            )
        # Hyperparameters stay static: an array (tau=jnp.float32(0.5)) would otherwise become
        # model state, traced under nnx.jit and saved with the parameters.
        hyperparameters = {k: _python_value(v) for k, v in hyperparameters.items()}
        config = self.linen(**hyperparameters)
        if self.linen.stochastic and config.deterministic is not None:
            _windows.check_flag(config.deterministic, "deterministic")
        for name in allowed:
            setattr(self, name, getattr(config, name))
        if in_features is not None:
            if (
                not isinstance(in_features, (int, np.integer))
                or isinstance(in_features, bool)
                or in_features < 1
            ):
                raise ValueError(f"in_features must be a positive int; got {in_features!r}")
            in_features = int(in_features)
        size = None if input_size is None else _windows.normalize_pair(input_size, "input_size")
        specs = config.parameters(size, in_features)
        if specs and rngs is None:
            raise ValueError(
                f"{type(self).__name__} has parameters ({', '.join(specs)}): give "
                "rngs=nnx.Rngs(seed) to initialise them"
            )
        for name, spec in specs.items():
            if None in spec.shape:
                raise ValueError(
                    f"{type(self).__name__}.{name} has a shape that depends on the channel "
                    "count: give in_features=C"
                )
            key = rngs() if isinstance(rngs, nnx.RngStream) else rngs.params()
            setattr(self, name, nnx.Param(spec.init(key, spec.shape, jnp.float32)))
        self.param_names = tuple(specs)
        stream = None
        if self.linen.stochastic and isinstance(rngs, nnx.RngStream):
            stream = rngs  # as nnx.Dropout: noise from the given stream
        elif self.linen.stochastic and rngs is not None:
            try:
                stream = rngs[config.rng_collection]
            except KeyError:  # e.g. nnx.Rngs(params=0): noise then comes with the call
                stream = None
        self.rngs = nnx.data(None) if stream is None else stream.fork()

    @classmethod
    def _merge_positional(
        cls, args: tuple[Any, ...], hyperparameters: dict[str, Any], allowed: tuple[str, ...]
    ) -> dict[str, Any]:
        """The keyword hyperparameters with the positional ones named in Linen field order;
        ``ValueError`` for too many positional arguments, a name given twice or an unknown one."""
        name = cls.__name__
        if len(args) > len(allowed):
            raise ValueError(
                f"{name} takes at most {len(allowed)} positional arguments, its hyperparameters in "
                f"order ({', '.join(allowed)}); got {len(args)} (in_features, input_size and rngs "
                "are keyword-only)"
            )
        positional = dict(zip(allowed, args, strict=False))
        twice = sorted(set(positional) & set(hyperparameters))
        if twice:
            raise ValueError(f"{name} got {', '.join(twice)} both by position and by keyword")
        unknown = sorted(set(hyperparameters) - set(allowed))
        if unknown:
            raise ValueError(
                f"{name} has no argument(s) {', '.join(unknown)}; allowed: "
                f"in_features, input_size, rngs, {', '.join(allowed)}"
            )
        return {**positional, **hyperparameters}

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``, as ``nnx.Dropout.set_view``: True for
        inference, False for training (only the stochastic layers' output depends on it)."""
        if deterministic is not None and self.linen.stochastic:
            deterministic = _windows.check_flag(deterministic, "deterministic")
        if deterministic is not None:
            self.deterministic = deterministic

    def _config(self) -> modules.Pooler:
        """The unbound Linen layer with this layer's hyperparameters."""
        return self.linen(
            **{name: getattr(self, name) for name in hyperparameter_names(self.linen)}
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> jax.Array:
        config = self._config()
        batched, _ = _windows.check_input(x)
        params = {name: getattr(self, name)[...] for name in self.param_names}
        needed = config.parameters(batched.shape[1:3], batched.shape[-1])
        for name, spec in needed.items():
            modules.check_shape(self, name, params[name].shape, spec.shape)
        if deterministic is None:
            deterministic = self.deterministic
        if not self.linen.stochastic:
            deterministic = True  # ignored, whatever its value (a traced one included)
        elif deterministic is None:
            raise ValueError(
                f"{type(self).__name__} is stochastic and needs to know the mode: call it with "
                "deterministic=True (inference) or deterministic=False (training), call "
                "model.eval() or model.train(), or set deterministic= when constructing it"
            )
        else:
            deterministic = _windows.check_flag(deterministic, "deterministic")
        key = None
        if not deterministic:
            key = self._key(rngs, config.rng_collection)
        return config.pool(x, params, key, deterministic)

    def _key(self, rngs, collection: str) -> jax.Array:
        if rngs is None:
            rngs = self.rngs
        if rngs is None:
            raise ValueError(
                f"{type(self).__name__} is stochastic and deterministic=False needs noise: give "
                f"rngs=nnx.Rngs({collection}=seed) to the constructor or rngs=key to the call"
            )
        if isinstance(rngs, nnx.Rngs):
            return rngs[collection]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        return rngs


def _signature(linen: type[modules.Pooler]) -> inspect.Signature:
    """The constructor's signature as ``help()`` and IDEs should show it: the Linen layer's
    hyperparameters with their defaults, then the keyword-only NNX arguments."""
    fields = {f.name: f for f in dataclasses.fields(linen)}
    P = inspect.Parameter
    params = [
        P(name, P.POSITIONAL_OR_KEYWORD, default=fields[name].default)
        for name in hyperparameter_names(linen)
    ]
    params += [
        P(name, P.KEYWORD_ONLY, default=None) for name in ("in_features", "input_size", "rngs")
    ]
    return inspect.Signature(params)


def _python_value(value: Any) -> Any:
    """A concrete NumPy/JAX scalar as the Python number it holds; else ``value`` (an array of
    several values, e.g. per-channel ``coefficient``, stays an array)."""
    if isinstance(value, np.ndarray | np.generic) or (
        isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
    ):
        if np.ndim(value) == 0:
            return np.asarray(value).item()
    return value


class _ConstructorSignature:
    """``Pooler.__signature__``: for a layer class, its constructor's (see :func:`_signature`;
    for a subclass with its own ``__init__``, that one's); None (inspect's default lookup) for an
    instance, whose signature is its ``__call__``'s."""

    def __get__(self, obj: Any, cls: type) -> inspect.Signature | None:
        if obj is not None or not hasattr(cls, "linen"):
            return None
        if cls.__init__ is not Pooler.__init__:
            own = inspect.signature(cls.__init__)
            return own.replace(parameters=list(own.parameters.values())[1:])  # without self
        return _signature(cls.linen)


Pooler.__signature__ = _ConstructorSignature()


class MaxPool(Pooler):
    """Max pooling; NNX twin of :class:`jaxpool.modules.MaxPool`."""

    linen = modules.MaxPool


class AvgPool(Pooler):
    """Average pooling; NNX twin of :class:`jaxpool.modules.AvgPool`."""

    linen = modules.AvgPool


class MixedPool(Pooler):
    """Mixed max-average pooling; NNX twin of :class:`jaxpool.modules.MixedPool`."""

    linen = modules.MixedPool


class GatedPool(Pooler):
    """Gated max-average pooling; NNX twin of :class:`jaxpool.modules.GatedPool`."""

    linen = modules.GatedPool


class TreePool(Pooler):
    """Tree pooling; NNX twin of :class:`jaxpool.modules.TreePool`."""

    linen = modules.TreePool


class StochasticPool(Pooler):
    """Stochastic pooling; NNX twin of :class:`jaxpool.modules.StochasticPool`."""

    linen = modules.StochasticPool


class S3Pool(Pooler):
    """S3Pool; NNX twin of :class:`jaxpool.modules.S3Pool`."""

    linen = modules.S3Pool


class TDGSPool(Pooler):
    """Temperature-driven Gumbel-softmax pooling; NNX twin of :class:`jaxpool.modules.TDGSPool`."""

    linen = modules.TDGSPool


class SoftPool(Pooler):
    """SoftPool; NNX twin of :class:`jaxpool.modules.SoftPool`."""

    linen = modules.SoftPool


class LPPool(Pooler):
    """LP / GeM pooling; NNX twin of :class:`jaxpool.modules.LPPool`."""

    linen = modules.LPPool


class LIPPool(Pooler):
    """Local Importance-based Pooling; NNX twin of :class:`jaxpool.modules.LIPPool`."""

    linen = modules.LIPPool


class MaxBlurPool(Pooler):
    """Anti-aliased max pooling; NNX twin of :class:`jaxpool.modules.MaxBlurPool`."""

    linen = modules.MaxBlurPool


class FractionalMaxPool(Pooler):
    """Fractional max pooling; NNX twin of :class:`jaxpool.modules.FractionalMaxPool`."""

    linen = modules.FractionalMaxPool


def twin(linen: type[modules.Pooler]) -> type[Pooler]:
    """The NNX layer class of a Linen layer class."""
    for cls in Pooler.__subclasses__():
        if cls.linen is linen:
            return cls
    raise ValueError(f"no NNX layer for {linen.__name__}")
