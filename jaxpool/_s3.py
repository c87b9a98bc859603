r"""S3Pool: the implementation behind :func:`jaxpool.functional.s3_pool` (import it from there; the
conventions are in that module's docstring).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _fast_s3, _window_ops, _windows
from jaxpool._windows import Window


def sample_indices(key: jax.Array, size: int, stride: int, grid: int) -> jax.Array:
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


TEST_MODES = ("expectation", "official")


@functools.lru_cache(maxsize=64)
def expectation_weights(size: int, stride: int, grid: int) -> np.ndarray:
    r"""Row weights ``A`` of s3's expected output: ``E[m[rows[i]]] = (A @ m)[i]``.

    Output row ``i`` is the ``k``-th smallest (0-based) of the ``m = len(block) // stride`` rows
    that :func:`sample_indices` draws without replacement from the ``n`` rows of its block ``b``
    that exist in the max map (``n = grid``, fewer in a truncated last block), so with ``r`` the
    row's offset inside the block

    .. math::
      A_{i, bg + r} = \binom{r}{k} \binom{n - 1 - r}{m - 1 - k} / \binom{n}{m}.

    Args:
      size: the input's length ``H`` along the axis.
      stride: the downsampling factor along it.
      grid: the block length along it (a multiple of ``stride``).

    Returns:
      float64 ``(size // stride, size - stride + 1)``, each row summing to 1 (read-only: cached).
    """
    map_size = size - stride + 1
    weights = np.zeros((size // stride, map_size))
    i = 0
    for start in range(0, size, grid):
        block_len = min(grid, size - start)
        m = block_len // stride
        n = min(block_len, map_size - start)
        for k in range(m):
            for r in range(n):
                weights[i, start + r] = math.comb(r, k) * math.comb(n - 1 - r, m - 1 - k)
            weights[i] /= math.comb(n, m)
            i += 1
    weights.flags.writeable = False
    return weights


def s3_pool(
    x: jax.Array,
    stride: Window = 2,
    grid_size: Window = 4,
    *,
    key: jax.Array | None = None,
    deterministic: bool = False,
    per_example: bool = False,
    test_mode: str = "expectation",
    implementation: str = "auto",
) -> jax.Array:
    r"""S3Pool: pooling with stochastic spatial sampling (Zhai et al., CVPR 2017).

    1. ``m`` = max pool of ``x`` with window ``stride``, stride 1, VALID: ``(N, H-s+1, W-s+1, C)``.
    2. Each spatial axis of the *original* input is cut into blocks of ``grid_size`` rows; from each
       block, ``len(block) // stride`` distinct rows are drawn without replacement among the block's
       rows that exist in ``m`` and kept sorted.  Columns likewise, independently.
    3. The output is ``m`` at the intersections: ``(N, H // stride, W // stride, C)``.

    One row/column set per call is shared by the batch and channels (``per_example=True``: one set
    per example).  ``deterministic=True`` computes, by ``test_mode``:

    - ``'expectation'`` (default): the exact expectation of the training output over the random
      rows and columns, :math:`y = A\,m\,B^\top` per example and channel, where
      :math:`A_{i,r} = P(\text{row}_i = r)` and :math:`B_{j,c} = P(\text{col}_j = c)`
      (:func:`expectation_weights`; rows and columns are drawn independently).  Equal with and
      without ``per_example``.
    - ``'official'``: the official code's test mode, the average pool of ``m`` (window = stride =
      ``stride``, ``stride // 2`` padding on each side, padding not counted), keeping the first
      ``H // stride`` x ``W // stride`` outputs.  Its windows sit about one input row and column
      before the rows training samples on average, which a flatten + dense head notices.

    Both have the training output's shape for every input size.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``, with ``H, W >= stride``.
      stride: int or pair, the downsampling factor ``s``.
      grid_size: int or pair ``g``, a multiple of ``stride``.
      key: PRNG key; required unless ``deterministic``.
      deterministic: the deterministic output (see ``test_mode``) instead of a sample.
      per_example: draw a separate row/column set for each example (on a batch sharded
        explicitly, only inside ``jax.set_mesh``: a ``ValueError`` otherwise).
      test_mode: ``'expectation'`` or ``'official'``: what ``deterministic=True`` computes.
      implementation: ``'auto'``, ``'reference'`` or ``'fast'``.  Training draws the same
        rows and columns with ``jax.random`` whatever it says; ``'fast'`` computes the
        ``'expectation'`` per grid block instead of with the dense ``A`` and ``B``
        (:mod:`jaxpool._fast_s3`), which ``'auto'`` takes on CPU.

    Returns:
      ``(N, H // s, W // s, C)``, the dtype of ``x``.

    References:
      Zhai, Wu, Kumar, Cheng, Lu, Zhang. S3Pool: Pooling with Stochastic Spatial Sampling.
      CVPR 2017 (arXiv:1611.05138).
    """
    _windows.check_implementation(implementation)
    strides = _windows.normalize_pair(stride, "stride")
    grid = _windows.normalize_pair(grid_size, "grid_size")
    if grid[0] % strides[0] or grid[1] % strides[1]:
        raise ValueError(
            f"grid_size must be a multiple of stride; got grid_size={grid_size!r}, stride={stride!r}"
        )
    if test_mode not in TEST_MODES:
        raise ValueError(
            f"test_mode must be one of {', '.join(map(repr, TEST_MODES))}; got {test_mode!r}"
        )
    deterministic = _windows.check_flag(deterministic, "deterministic")
    per_example = _windows.check_flag(per_example, "per_example")
    if not deterministic:
        key = _windows.require_key(key, "s3_pool")
    batched, unbatched = _windows.check_input(x)
    _, h, w, _ = batched.shape
    if h < strides[0] or w < strides[1]:
        raise ValueError(
            f"s3_pool needs H >= stride and W >= stride; got input {x.shape}, stride={stride!r}"
        )
    elements, _, _ = _windows.windows(batched, strides, 1, "VALID")
    max_map = _window_ops.window_max(elements, None)  # (N, H-s+1, W-s+1, C)
    out_h, out_w = h // strides[0], w // strides[1]
    if deterministic and test_mode == "expectation":
        weights = (
            expectation_weights(h, strides[0], grid[0]),
            expectation_weights(w, strides[1], grid[1]),
        )
        if _windows.use_fast(implementation, _fast_s3.EXPECTATION_WINS):
            m32 = max_map.astype(jnp.float32)
            y = _fast_s3.expectation(m32, weights, (h, w), strides, grid)
            return _windows.to_output(y, x.dtype, unbatched)
        rows, cols = (jnp.asarray(a, jnp.float32) for a in weights)
        y = jnp.einsum(
            "ir,nrcd,jc->nijd", rows, max_map.astype(jnp.float32), cols,
            precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip
        return _windows.to_output(y, x.dtype, unbatched)
    if deterministic:
        pads = ((strides[0] // 2,) * 2, (strides[1] // 2,) * 2)
        map_elements, masks, spec = _windows.windows(max_map, strides, strides, "VALID", pads=pads)
        y = _window_ops.window_mean(map_elements, spec, masks)[:, :out_h, :out_w]
        return _windows.to_output(y, x.dtype, unbatched)

    def sample(k, m):
        k_rows, k_cols = jax.random.split(k)
        rows = sample_indices(k_rows, h, strides[0], grid[0])
        cols = sample_indices(k_cols, w, strides[1], grid[1])
        # One gather of the row x column grid: on XLA:CPU 1.1-1.4x faster forward+backward than
        # a gather of the rows and then one of the columns, which XLA lays out transposed.  The
        # (row, col) pairs are distinct and sorted by construction: told to XLA, the derivative's
        # scatter-add is one XLA:GPU keeps under deterministic ops instead of rewriting it.
        grid_points = (..., rows[:, None], cols[None, :], slice(None))
        return m.at[grid_points].get(unique_indices=True, indices_are_sorted=True)

    if per_example:
        y = jax.vmap(sample)(_windows.keys_per_example(key, max_map, "s3_pool"), max_map)
    else:
        y = sample(key, max_map)
    return _windows.to_output(y, x.dtype, unbatched)
