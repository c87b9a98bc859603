"""The string registry of poolers: ``create(name, **kwargs)`` and ``available()``."""

from __future__ import annotations

import dataclasses

from flax import linen as nn

from jaxpool import modules

_REGISTRY: dict[str, type[nn.Module]] = {
    "max": modules.MaxPool,
    "avg": modules.AvgPool,
    "mixed": modules.MixedPool,
    "gated": modules.GatedPool,
    "tree": modules.TreePool,
    "stochastic": modules.StochasticPool,
    "s3": modules.S3Pool,
    "tdgs": modules.TDGSPool,
}

# Fields every flax Module has that are not hyperparameters of a pooler.
_INTERNAL_FIELDS = {"parent", "name"}


def available() -> tuple[str, ...]:
    """Names of the registered poolers, in the study's order."""
    return tuple(_REGISTRY)


def pooler_class(name: str) -> type[nn.Module]:
    """The Module class registered under ``name``; ``ValueError`` listing the names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown pooler {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def hyperparameters(name: str) -> tuple[str, ...]:
    """The keyword arguments ``create(name, ...)`` accepts."""
    fields = dataclasses.fields(pooler_class(name))
    return tuple(f.name for f in fields if f.name not in _INTERNAL_FIELDS)


def create(name: str, **kwargs) -> nn.Module:
    """A new pooling Module by registry name.

    Args:
      name: one of :func:`available`.
      **kwargs: the Module's fields (e.g. ``window_shape``, ``per``, ``init_temperature``).

    Returns:
      An unbound ``flax.linen.Module``.

    Raises:
      ValueError: for an unknown name or keyword argument (the message lists what is allowed).

    Example::

      >>> pool = jaxpool.create("tdgs", init_temperature=0.5)
    """
    cls = pooler_class(name)
    allowed = hyperparameters(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"pooler {name!r} has no argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return cls(**kwargs)
