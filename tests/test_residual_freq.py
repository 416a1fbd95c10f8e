"""frejax.compression.residual_freq: energy allocation, pooling, time windows."""

import jax.numpy as jnp
import numpy as np

from frejax.compression import residual_freq


def test_energy_allocation_keeps_prefixes_and_total():
    energies = jnp.array([[4.0, 0.0, 1.0, 9.0]])
    coeffs = jnp.sqrt(energies)[:, :, None, None, None] * jnp.ones((1, 4, 5, 1, 1)) / jnp.sqrt(5.0)
    valid = jnp.array([[True, True, True, True]])
    kept = residual_freq.allocate_coefficients(coeffs, valid, 8)
    counts = kept.sum(-1)[0].tolist()
    assert sum(counts) == 8 and counts[3] >= counts[0] >= counts[2] >= counts[1]
    assert bool(jnp.all(kept[..., 1:] <= kept[..., :-1]))  # prefixes
    idx = residual_freq.compact_slots(kept, 8)
    assert np.all(np.diff(np.asarray(idx[0])) > 0)


def test_pool_tokens_ceil_grid():
    x = jnp.arange(15.0).reshape(1, 15, 1)  # 3 x 5 grid
    got = residual_freq.pool_tokens(x, (3, 5), 2)[0, :, 0]
    g = np.arange(15.0).reshape(3, 5)
    want = [g[0:2, 0:2].mean(), g[0:2, 2:4].mean(), g[0:2, 4:].mean(),
            g[2:, 0:2].mean(), g[2:, 2:4].mean(), g[2:, 4:].mean()]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_time_windows_localise_events():
    """Two windows: an early and a late event reach disjoint coefficient slots. One
    window: both give the same DC coefficient; their times live only in the phases."""
    early = jnp.zeros((1, 1, 15, 1, 2)).at[0, 0, 3].set(1.0)  # (B, S, L-1, cells, D)
    late = jnp.zeros((1, 1, 15, 1, 2)).at[0, 0, 11].set(1.0)
    two = [residual_freq.residual_freq_tokens(x, 2, "matmul", time_windows=2)[0, 0, :, 0, 0]
           for x in (early, late)]
    assert two[0].shape == (4,)
    assert bool(jnp.all(two[0][:2] != 0)) and not jnp.any(two[0][2:])
    assert bool(jnp.all(two[1][2:] != 0)) and not jnp.any(two[1][:2])
    one = [residual_freq.residual_freq_tokens(x, 4, "fft")[0, 0, :, 0, 0] for x in (early, late)]
    np.testing.assert_allclose(one[0][0], one[1][0], rtol=1e-6)
