r"""S3Pool: the implementation behind :func:`jaxpool.functional.s3_pool` (import it from there; the
conventions are in that module's docstring).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxpool import _window_ops, _windows
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
        m_elems, masks, spec = _windows.windows(max_map, strides, strides, "VALID", pads=pads)
        y = _window_ops.window_mean(m_elems, spec, masks)[:, :out_h, :out_w]
        return _windows.finish(y, x.dtype, unbatched)

    def sample(k, m):
        k_rows, k_cols = jax.random.split(k)
        rows = sample_indices(k_rows, h, strides[0], grid[0])
        cols = sample_indices(k_cols, w, strides[1], grid[1])
        return jnp.take(jnp.take(m, rows, axis=-3), cols, axis=-2)

    if per_example:
        keys = jax.random.split(key, n)
        batch_axis = (_windows.explicit_spec(max_map) or (None,))[0]
        if batch_axis is not None:  # explicit sharding: vmap needs the keys split like the batch
            keys = jax.sharding.reshard(keys, jax.sharding.PartitionSpec(batch_axis))
        y = jax.vmap(sample)(keys, max_map)
    else:
        y = sample(key, max_map)
    return _windows.finish(y, x.dtype, unbatched)
