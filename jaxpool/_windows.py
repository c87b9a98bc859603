"""Private helpers: argument normalisation, input checks and window extraction (NHWC).

Every windowed pooler in :mod:`jaxpool.functional` sees its input as the list of its window
elements: ``K = kh * kw`` arrays of shape ``(N, Ho, Wo, C)`` in row-major ``(kh, kw)`` order, element
``k`` holding the ``k``-th element of every window, plus optional per-element ``(Ho, Wo, 1)`` masks
that are ``False`` where the element lies in the padding (SAME padding only; padding holds 0).

Two ways to build the list, equal in value and gradient (the tests check both):

* fast path: non-overlapping VALID windows (stride == window) are slices of a reshaped view;
* general path: one strided slice of the padded input per window element (overlap, SAME).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Pair = tuple[int, int]
Window = int | Sequence[int]  # a window or stride argument: one int for both axes, or a pair


def int_pair(value: object) -> Pair | None:
    """``value`` as ``(a, a)`` for an int or ``(a, b)`` for a pair of ints (NumPy integers count,
    bools do not); None for anything else."""

    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def normalize_pair(value: int | Sequence[int], name: str) -> Pair:
    """Returns ``value`` as a pair of positive ints; ``name`` is used in the error message."""
    pair = int_pair(value)
    if pair is None:
        raise ValueError(
            f"{name} must be a positive int or a pair of positive ints (height, width); got {value!r}"
        )
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive; got {value!r}")
    return pair


def normalize_padding(padding: str) -> str:
    """Returns ``'VALID'`` or ``'SAME'``; anything else is a ``ValueError``."""
    if not isinstance(padding, str) or padding.upper() not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME'; got {padding!r}")
    return padding.upper()


def check_input(x: jax.Array, name: str = "x") -> tuple[jax.Array, bool]:
    """Checks that ``x`` is a float (N, H, W, C) or (H, W, C) array.

    Returns:
      ``(batched, unbatched)``: ``x`` with a batch axis, and whether one was added.
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        raise ValueError(f"{name} must be an array of shape (N, H, W, C) or (H, W, C); got {x!r}")
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{name} must have rank 4 (N, H, W, C) or rank 3 (H, W, C); got rank {len(shape)} "
            f"with shape {tuple(shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must have a floating dtype (float32, bfloat16, float16, ...); got {x.dtype}"
        )
    if len(shape) == 3:
        return x[None], True
    return x, False


def to_output(y: jax.Array, dtype, unbatched: bool) -> jax.Array:
    """The inverse of :func:`check_input` for a result: cast to ``dtype``, drop an added batch axis."""
    y = y.astype(dtype)
    return y[0] if unbatched else y


class WindowSpec(NamedTuple):
    """Static geometry of a windowed pooling: window, strides, padding and output size."""

    window: Pair
    strides: Pair
    pads: tuple[Pair, Pair]  # ((top, bottom), (left, right))
    in_size: Pair  # (H, W)
    out_size: Pair  # (Ho, Wo)

    @property
    def num_elements(self) -> int:
        return self.window[0] * self.window[1]

    @property
    def is_fast(self) -> bool:
        """Non-overlapping, unpadded windows: the reshape path applies."""
        return self.window == self.strides and self.pads == ((0, 0), (0, 0))


def _axis_geometry(size: int, k: int, s: int, padding: str, axis: str) -> tuple[int, Pair]:
    if padding == "VALID":
        if k > size:
            raise ValueError(
                f"window_shape {axis} {k} is larger than the input {axis} {size} with "
                "padding='VALID'; use a smaller window or padding='SAME'"
            )
        return (size - k) // s + 1, (0, 0)
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return out, (total // 2, total - total // 2)  # the split lax.padtype_to_pads uses


def window_spec(
    in_size: Pair,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: str,
    *,
    pads: tuple[Pair, Pair] | None = None,
) -> WindowSpec:
    """Normalises window/strides/padding for an input of spatial size ``in_size``.

    ``strides=None`` means strides equal to the window.  ``padding`` is ``'VALID'`` or ``'SAME'``
    (any other value, explicit pads included, is a ``ValueError``: the public poolers take these
    two).  ``pads``, for jaxpool's own use (s3's test mode), gives explicit
    ``((top, bottom), (left, right))`` pads instead, with ``padding`` ignored.
    """
    window = normalize_pair(window_shape, "window_shape")
    stride = window if strides is None else normalize_pair(strides, "strides")
    if pads is None:
        pad_mode = normalize_padding(padding)
        (ho, ph), (wo, pw) = (
            _axis_geometry(in_size[0], window[0], stride[0], pad_mode, "height"),
            _axis_geometry(in_size[1], window[1], stride[1], pad_mode, "width"),
        )
        return WindowSpec(window, stride, (ph, pw), tuple(in_size), (ho, wo))
    (pt, pb), (pl, pr) = pads
    ho = (in_size[0] + pt + pb - window[0]) // stride[0] + 1
    wo = (in_size[1] + pl + pr - window[1]) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"window {window} does not fit the padded input {in_size} + {pads}")
    return WindowSpec(window, stride, ((pt, pb), (pl, pr)), tuple(in_size), (ho, wo))


def _axis_valid(spec_in: int, k: int, s: int, pad_lo: int, out: int) -> np.ndarray:
    """(out, k) bool: whether window element k of output position i lies inside the input."""
    pos = np.arange(out)[:, None] * s + np.arange(k)[None, :] - pad_lo
    return (pos >= 0) & (pos < spec_in)


def valid_masks(spec: WindowSpec) -> list[np.ndarray | None] | None:
    """Per window element ``k``, a ``(Ho, Wo, 1)`` bool mask of where it is real (not padding).

    ``None`` for an element that is real everywhere; ``None`` instead of the list when all are.
    """
    (kh, kw), (sh, sw) = spec.window, spec.strides
    (ho, wo), (h, w) = spec.out_size, spec.in_size
    vh = _axis_valid(h, kh, sh, spec.pads[0][0], ho)  # (Ho, kh)
    vw = _axis_valid(w, kw, sw, spec.pads[1][0], wo)  # (Wo, kw)
    if vh.all() and vw.all():
        return None
    masks = []
    for i in range(kh):
        for j in range(kw):
            m = vh[:, i, None, None] & vw[None, :, j, None]  # (Ho, Wo, 1)
            masks.append(None if m.all() else m)
    return masks


def count_valid(spec: WindowSpec, masks: list[np.ndarray | None] | None) -> np.ndarray | int:
    """Number of real elements per window: ``(Ho, Wo, 1)`` float array, or the int K."""
    if masks is None:
        return spec.num_elements
    ones = np.ones((*spec.out_size, 1), bool)
    return sum(ones if m is None else m for m in masks).astype(np.float32)


def explicit_spec(x: jax.Array) -> tuple | None:
    """The per-dimension mesh axes of ``x`` under explicit sharding (``jax.make_mesh`` meshes),
    or None where ``x`` carries no explicit sharding (the usual, automatic case)."""
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    if spec is None or all(axis is None for axis in spec):
        return None
    return (*spec, *([None] * (x.ndim - len(spec))))


def keys_per_example(key: jax.Array, x: jax.Array, fn: str) -> jax.Array:
    """One key per example of the batched ``x``, split from ``key``; under explicit sharding
    sharded like ``x``'s batch (a ``vmap`` over both needs it), which JAX does only with the mesh
    as context: without one, a ``ValueError`` that says so."""
    keys = jax.random.split(key, x.shape[0])
    batch_axis = (explicit_spec(x) or (None,))[0]
    if batch_axis is None:
        return keys
    if jax.sharding.get_abstract_mesh().empty:
        raise ValueError(
            f"{fn}: per_example=True on a batch sharded explicitly over mesh axis "
            f"{batch_axis!r} needs that mesh as context: call it inside `with jax.set_mesh(mesh):`"
        )
    return jax.sharding.reshard(keys, jax.sharding.PartitionSpec(batch_axis))


def window_view(x: jax.Array, spec: WindowSpec) -> jax.Array | None:
    """``x`` as ``(N, Ho, kh, Wo, kw, C)`` windows (a free reshape) where the fast path applies.

    Element ``(n, i, a, j, b, c)`` is element ``(a, b)`` of window ``(i, j)``.  None for
    overlapping or padded windows, and where the spatial dims are sharded (explicit sharding): the
    strided path serves those.
    """
    n, _, _, c = x.shape
    (kh, kw), (ho, wo) = spec.window, spec.out_size
    sharded = explicit_spec(x)
    spatially_sharded = sharded is not None and (sharded[1] is not None or sharded[2] is not None)
    if not spec.is_fast or spatially_sharded:
        return None
    x = x[:, : ho * kh, : wo * kw, :]
    shape = (n, ho, kh, wo, kw, c)
    if sharded is None:
        return x.reshape(shape)
    # explicit sharding (jax.make_mesh) needs the split's output sharding spelled out, on the
    # input's own mesh: a bare PartitionSpec would need a `jax.set_mesh` context around the call
    out = jax.sharding.PartitionSpec(sharded[0], None, None, None, None, sharded[3])
    mesh = jax.typeof(x).sharding.mesh
    return jax.lax.reshape(x, shape, out_sharding=jax.sharding.NamedSharding(mesh, out))


def view_elements(view: jax.Array) -> list[jax.Array]:
    """The K ``(N, Ho, Wo, C)`` elements of ``view``, the ``(N, Ho, kh, Wo, kw, C)`` windows of
    :func:`window_view`, row-major.

    Cut with ``jnp.split``, whose gradient is one concatenation of the K cotangents back into the
    view (a slice's gradient would be K zero-padded copies summed).
    """
    _, _, kh, _, kw, _ = view.shape
    rows = jnp.split(view, kh, axis=2) if kh > 1 else [view]
    return [
        element[:, :, 0, :, 0, :]
        for row in rows
        for element in (jnp.split(row, kw, axis=4) if kw > 1 else [row])
    ]


def window_elements(
    x: jax.Array, spec: WindowSpec, *, force_general: bool = False
) -> list[jax.Array]:
    """The K elements of every window: a list of ``(N, Ho, Wo, C)`` arrays, row-major ``(kh, kw)``.

    Padding holds 0.  Poolers combine the list elementwise (max, sums, softmax, sampling), which XLA
    fuses into a few loops; a stacked ``(N, Ho, Wo, K, C)`` copy is several times slower on CPU.

    Args:
      x: batched NHWC input.
      spec: the geometry from :func:`window_spec`.
      force_general: use the strided slices even where the reshape view applies (tests).
    """
    n, _, _, c = x.shape
    (kh, kw), (sh, sw) = spec.window, spec.strides
    ho, wo = spec.out_size
    view = None if force_general else window_view(x, spec)
    if view is not None:
        return view_elements(view)
    (pt, pb), (pl, pr) = spec.pads
    if pt or pb or pl or pr:
        x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    return [
        jax.lax.slice(
            x,
            (0, i, j, 0),
            (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def windows(
    x: jax.Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: str,
    *,
    pads: tuple[Pair, Pair] | None = None,
) -> tuple[list[jax.Array], list[np.ndarray | None] | None, WindowSpec]:
    """Window elements, their validity masks (see :func:`valid_masks`) and the spec of ``x``
    (``padding`` and ``pads`` as in :func:`window_spec`)."""
    spec = window_spec(x.shape[1:3], window_shape, strides, padding, pads=pads)
    return window_elements(x, spec), valid_masks(spec), spec


def check_flag(value, name: str) -> bool:
    """``value`` as a Python bool if it is one (or a NumPy bool), else a ``ValueError``: a string
    such as ``'false'`` is truthy and would silently mean True; a traced array cannot choose
    a program at trace time."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{name} must be True or False (a Python bool), known when tracing: it chooses the "
            f"program. Got a traced value ({value!r:.60}): make it static (static_argnums=, "
            "functools.partial, or a field of the layer)"
        )
    if not (
        isinstance(value, bool | np.bool_)
        or (isinstance(value, np.ndarray | jax.Array) and value.shape == () and value.dtype == bool)
    ):
        raise ValueError(f"{name} must be True or False (a Python bool); got {value!r:.80}")
    return bool(value)


def require_key(key: jax.Array | None, fn: str) -> jax.Array:
    """A stochastic op without a key raises instead of inventing one; so does one given something
    that is not a key."""
    if key is None:
        raise ValueError(
            f"{fn} is stochastic when deterministic=False and needs an explicit PRNG key: pass "
            "key=jax.random.key(seed), or deterministic=True for the deterministic output"
        )
    return check_key(key, fn)


@functools.cache
def _legacy_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of a raw (uint32) key under the PRNG implementation ``impl``: that of
    ``jax.random.PRNGKey(seed)``, whatever ``jax_enable_custom_prng`` says."""
    del impl  # the cache key: the key data follow jax_default_prng_impl
    return tuple(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape)


def check_key(key, fn: str) -> jax.Array:
    """``key`` if it is a PRNG key: a typed key (``jax.random.key``) or a legacy key
    (``jax.random.PRNGKey``: uint32 of its shape); else a ``ValueError``."""
    dtype = getattr(key, "dtype", None)
    legacy_shape = _legacy_key_shape(str(jax.config.jax_default_prng_impl))
    shape = tuple(np.shape(key))
    legacy = dtype == np.uint32 and shape == legacy_shape
    if dtype == np.uint32 and len(shape) > len(legacy_shape) and shape[-1:] == legacy_shape[-1:]:
        raise ValueError(
            f"{fn}: key must be one PRNG key; got a batch of raw keys of shape {shape}: "
            "jax.vmap over the keys for one call per key"
        )
    if dtype is None or not (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or legacy):
        raise ValueError(
            f"{fn}: key must be a PRNG key, jax.random.key(seed) (or a legacy "
            f"jax.random.PRNGKey(seed)); got {type(key).__name__} {key!r:.80}"
        )
    return key


# The smallest normal float32: a smaller positive number is flushed to 0 by most backends.
SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)
LARGEST_FLOAT32 = float(np.finfo(np.float32).max)


def check_positive(value, name: str, why: str = "", *, normal: bool = False) -> None:
    """``value`` a finite number ``> 0`` (with ``normal``: at least :data:`SMALLEST_NORMAL`, for an
    epsilon that keeps a divisor away from 0) for a concrete scalar (Python or NumPy number,
    concrete array), else a ``ValueError`` naming ``name``; a traced value cannot be checked and
    passes."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, str | bool | np.bool_) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a number > 0 (a scalar){why}; got {value!r}")
    try:
        number = float(np.asarray(value, np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a number > 0{why}; got {value!r}") from e
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be finite and > 0{why}; got {value!r}")
    if number > LARGEST_FLOAT32:  # the math runs in float32: it would be inf there
        raise ValueError(
            f"{name} must be at most {LARGEST_FLOAT32:.4g} (float32){why}; got {value!r}"
        )
    if normal and number < SMALLEST_NORMAL:
        raise ValueError(
            f"{name} must be at least {SMALLEST_NORMAL:.4g}{why}: a smaller number (below the "
            f"smallest normal float32) is flushed to 0; got {value!r}"
        )


def check_finite(value, name: str) -> None:
    """``value`` a finite real number that float32 holds, or a concrete array of them, else a
    ``ValueError`` naming ``name``; a traced value cannot be checked and passes."""
    if isinstance(value, jax.core.Tracer):
        return
    problem = isinstance(value, str | bool | np.bool_)
    if not problem:
        try:
            array = np.asarray(value)
            as_float = array.astype(np.float64)
            problem = array.dtype == bool or not np.isfinite(as_float).all()
            # The math runs in float32, where larger numbers are inf.
            problem = problem or bool((np.abs(as_float) > LARGEST_FLOAT32).any())
        except (TypeError, ValueError):
            problem = True
    if problem:
        raise ValueError(
            f"{name} must be a finite real number (or array) within float32's range; got "
            f"{value!r:.80}"
        )


IMPLEMENTATIONS = ("auto", "reference", "fast")


def check_implementation(implementation: str) -> str:
    """``implementation`` if it is one of :data:`IMPLEMENTATIONS`, else a ``ValueError``."""
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {', '.join(map(repr, IMPLEMENTATIONS))}; "
            f"got {implementation!r}"
        )
    return implementation


def use_fast(implementation: str, measured_faster_on_cpu: bool, shape: Sequence = ()) -> bool:
    """Whether a pooler takes its fast path: always for ``'fast'``, never for ``'reference'``;
    for ``'auto'`` only on the CPU backend, only where ``measured_faster_on_cpu`` (the fast
    paths were measured on XLA:CPU alone, so GPU and TPU run the reference), and only for an
    input ``shape`` of known sizes: a symbolic one (``jax.export`` with a polymorphic batch)
    takes the reference, which works for any size (the fast noise generator needs the size)."""
    if check_implementation(implementation) == "auto":
        return measured_faster_on_cpu and on_measured_backend() and is_concrete(shape)
    return implementation == "fast"


def is_concrete(shape: Sequence) -> bool:
    """Whether every size in ``shape`` is a number (not a ``jax.export`` symbolic dimension)."""
    return all(isinstance(d, int | np.integer) for d in shape)


def on_measured_backend() -> bool:
    """Whether JAX's default backend is the CPU, where the fast paths were measured."""
    return jax.default_backend() == "cpu"
