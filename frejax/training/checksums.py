"""Checksums of saved arrays: one 32-bit sum per array, the same on any mesh and device count.

Saved beside each checkpoint step and verified when it is restored: a bit
flipped inside an array file, which Orbax would read back as another value,
makes the step damaged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class ChecksumMismatchError(ValueError):
    """An array read back differs from the one saved."""


_ODD = np.uint32(2654435761)  # Knuth's multiplicative hash constant (odd)


def _array_checksum(x: jax.Array) -> jax.Array:
    """``sum(bits[i] * w(i)) mod 2**32`` with ``w(i)`` odd for every flat index ``i``.

    Integer addition is associative, so sharding and reduction order do not change it;
    flipping bit ``k`` of one element moves the sum by ``2**k * w(i)``, never a multiple
    of ``2**32`` (``w`` odd, ``k < 32``): every single flipped bit is detected.
    """
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size not in (1, 2, 4, 8):
        raise ValueError(f"checksum: unsupported dtype {x.dtype}")
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    if size == 8:  # two 32-bit words per element
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * np.uint32(stride)
        stride = (stride * bits.shape[axis]) % (1 << 32)
    weight = index * _ODD + np.uint32(0x9E3779B9) | np.uint32(1)
    return jnp.sum(bits * weight, dtype=jnp.uint32)


def state_checksums(state: Any) -> dict[str, int]:
    """``{"params/llm/embedding": checksum, ...}`` over every array leaf of ``state``."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    arrays = [(jax.tree_util.keystr(p, simple=True, separator="/"), x) for p, x in leaves
              if hasattr(x, "dtype") and hasattr(x, "shape")]
    sums = _all_checksums([x for _, x in arrays])
    return {name: int(v) for (name, _), v in zip(arrays, jax.device_get(sums))}


# One jitted function: every save of the same state reuses its compiled program (a
# lambda jitted per call compiled it again at every checkpoint).
_all_checksums = jax.jit(lambda xs: [_array_checksum(x) for x in xs])
