r"""Fast path of S3Pool's expected output (:func:`jaxpool.functional.s3_pool` with
``deterministic=True, test_mode='expectation'``) on XLA:CPU.

The expectation is :math:`y = A\,m\,B^\top` per example and channel, with ``m`` the stride-1 max map
and ``A``, ``B`` the row and column weights of :func:`jaxpool._s3.expectation_weights`.  Output row
``i`` takes weight only from the rows of its own grid block, so along each axis

.. math::
  y_{b, i} = \sum_{o < g} W_{b, i, o}\, m_{b g + o}, \qquad W_{b, i, o} = A_{b p + i,\, b g + o}

with ``g`` the grid size and ``p = g / stride`` outputs per block: ``g`` multiply-adds per output
over ``m`` cut into blocks (zero-padded to whole blocks), where the reference multiplies by the dense ``A`` and
``B`` (an einsum).  Values and derivatives equal the reference's up to float rounding
(``tests/test_implementations.py``).

``implementation='auto'`` takes this path on the CPU backend (:data:`EXPECTATION_WINS`).  The
deterministic forward pass (the CNN's evaluation), jitted, the max map included, median of 7
rounds, reference and fast alternating in one process on a 2-core AMD EPYC (AVX-512), jaxlib
0.10.2, nothing else running:

  ================  ==============  =======  ==================
  x shape (NHWC)    reference ms    fast ms  reference / fast
  ================  ==============  =======  ==================
  64, 16, 16, 32    0.807           0.159    5.1
  64, 8, 8, 64      0.439           0.096    4.6
  256, 32, 32, 16   6.15            2.37     2.6
  ================  ==============  =======  ==================

The derivative is the reference's (:func:`expectation`): ``jax.grad`` of the sum took the same
time both ways (0.195 / 0.197, 0.104 / 0.102 and 3.73 / 3.54 ms in the same sitting).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
# Where 'auto' takes the fast expectation on CPU: at every shape measured (table above).
EXPECTATION_WINS = True


def _block_weights(weights: np.ndarray, size: int, stride: int, grid: int) -> np.ndarray:
    """float32 ``(n_blocks, grid // stride, grid)``: ``W[b, i, o]``, the weight of map row
    ``b * grid + o`` in output ``i`` of block ``b`` (0 for outputs and rows a block lacks), from
    the dense ``A = weights`` of an axis of length ``size``."""
    n_blocks, per_block = -(-size // grid), grid // stride
    blocks = np.zeros((n_blocks, per_block, grid), np.float32)
    for i, row in enumerate(weights):
        b = i // per_block
        block = row[b * grid : (b + 1) * grid]
        blocks[b, i % per_block, : len(block)] = block
    return blocks


def _expect_along(
    m: jax.Array, dense: np.ndarray, size: int, stride: int, grid: int, axis: int
) -> jax.Array:
    """``dense @ m`` along ``axis`` (1 or 2) of the float32 map ``m``; ``size`` is the input's
    length there (the map's plus ``stride - 1``): per block, ``grid`` weighted rows, each
    broadcast over the block's outputs."""
    weights = _block_weights(dense, size, stride, grid)
    n_blocks, per_block, _ = weights.shape
    pad = [(0, 0)] * m.ndim
    pad[axis] = (0, n_blocks * grid - m.shape[axis])
    rest = m.shape[axis + 1 :]
    blocks = jnp.pad(m, pad).reshape((*m.shape[:axis], n_blocks, grid, *rest))
    out = 0
    for o in range(grid):  # row o of every block, (..., n_blocks, 1, ...), times its weights
        w = weights[:, :, o].reshape((n_blocks, per_block) + (1,) * len(rest))
        out = out + w * jax.lax.index_in_dim(blocks, o, axis + 1, keepdims=True)
    out = out.reshape((*m.shape[:axis], n_blocks * per_block, *rest))
    return jax.lax.slice_in_dim(out, 0, size // stride, axis=axis)


def expectation(
    max_map: jax.Array,
    weights: tuple[np.ndarray, np.ndarray],
    size: tuple[int, int],
    strides: tuple[int, int],
    grid: tuple[int, int],
) -> jax.Array:
    """S3Pool's expected output ``(N, H // sh, W // sw, C)`` from the float32 stride-1 max map
    ``(N, H - sh + 1, W - sw + 1, C)`` of an input of spatial ``size = (H, W)``; ``weights`` are
    the dense row and column weights ``(A, B)`` of :func:`jaxpool._s3.expectation_weights`.

    A ``custom_jvp``: the value is computed per block; the derivative, linear in the map's
    tangent, is the reference's dense ``A t B^T``, whose transpose is two matrix products.
    Autodiff of the per-block form would add zero-padded copies, one per weight, which XLA:CPU
    ran 3-12x slower than the reference's derivative.
    """

    @jax.custom_jvp
    def expect(m: jax.Array) -> jax.Array:
        by_rows = _expect_along(m, weights[0], size[0], strides[0], grid[0], axis=1)
        return _expect_along(by_rows, weights[1], size[1], strides[1], grid[1], axis=2)

    @expect.defjvp
    def expect_jvp(primals, tangents):
        (m,), (t,) = primals, tangents
        # Made here, not closed over from outside: under an enclosing jit they would be tracers
        # of that trace, which the rule must not capture.
        rows_w, cols_w = (jnp.asarray(a, jnp.float32) for a in weights)
        dense = jnp.einsum("ir,nrcd,jc->nijd", rows_w, t, cols_w, precision=_HIGHEST)
        return expect(m), dense

    return expect(max_map)
