"""The string registry of poolers: ``create(name, **kwargs)`` and ``available()``."""

from __future__ import annotations

import dataclasses

from jaxpool import modules

_REGISTRY: dict[str, type[modules.Pooler]] = {
    "max": modules.MaxPool,
    "avg": modules.AvgPool,
    "mixed": modules.MixedPool,
    "gated": modules.GatedPool,
    "tree": modules.TreePool,
    "stochastic": modules.StochasticPool,
    "s3": modules.S3Pool,
    "tdgs": modules.TDGSPool,
    "softpool": modules.SoftPool,
    "lp": modules.LPPool,
    "lip": modules.LIPPool,
    "blur": modules.MaxBlurPool,
    "fractional": modules.FractionalMaxPool,
}

# Fields every flax Module has that are not hyperparameters of a pooler.
_INTERNAL_FIELDS = {"parent", "name"}


def available() -> tuple[str, ...]:
    """Names of the registered poolers, in the study's order."""
    return tuple(_REGISTRY)


def pooler_class(name: str) -> type[modules.Pooler]:
    """The Linen class registered under ``name``; ``ValueError`` listing the names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown pooler {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def hyperparameters(name: str) -> tuple[str, ...]:
    """The keyword arguments ``create(name, ...)`` accepts (besides NNX's own)."""
    fields = dataclasses.fields(pooler_class(name))
    return tuple(f.name for f in fields if f.name not in _INTERNAL_FIELDS)


def is_stochastic(name: str) -> bool:
    """Whether the pooler draws noise in training (needs an rng unless deterministic)."""
    return pooler_class(name).stochastic


APIS = ("linen", "nnx")


def create(name: str, *, api: str = "linen", **kwargs):
    """A new pooling layer by registry name.

    Args:
      name: one of :func:`available`.
      api: ``'linen'`` (default): an unbound ``flax.linen.Module``; ``'nnx'``: an ``nnx.Module``
        of :mod:`jaxpool.nnx`, which also takes ``in_features``, ``input_size`` and ``rngs``
        (see there).
      **kwargs: the layer's hyperparameters (e.g. ``window_shape``, ``per``,
        ``init_temperature``).

    Returns:
      The layer.

    Raises:
      ValueError: for an unknown name, api or keyword argument (the message lists what is allowed).

    Example::

      >>> pool = jaxpool.create("tdgs", init_temperature=0.5)
      >>> layer = jaxpool.create("lp", api="nnx", rngs=nnx.Rngs(0))
    """
    cls = pooler_class(name)
    if api not in APIS:
        raise ValueError(f"api must be one of {APIS}; got {api!r}")
    allowed = hyperparameters(name)
    extra = ("in_features", "input_size", "rngs") if api == "nnx" else ()
    unknown = sorted(set(kwargs) - set(allowed) - set(extra))
    if unknown:
        raise ValueError(
            f"pooler {name!r} has no argument(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(extra + allowed)}"
        )
    if api == "nnx":
        from jaxpool import nnx  # flax.nnx is imported only by those who use it

        return nnx.twin(cls)(**kwargs)
    return cls(**kwargs)
