"""frejax.compression.energy: low-frequency capture of smooth latents, masked frames."""

import jax
import jax.numpy as jnp
import numpy as np

from frejax.compression import anchors as anchors_lib
from frejax.compression import energy

from compressor_helpers import QUICK_COMPILE


# ----------------------------------------------------------------- energy analysis


def test_energy_concentrates_in_low_frequencies_for_smooth_latents():
    t = np.arange(32.0)[None, :, None, None]
    rng = np.random.default_rng(0)
    phase = rng.uniform(0, 6, (4, 1, 6, 8))
    smooth = jnp.asarray(np.sin(2 * np.pi * t / 64.0 + phase) + 0.05 * t * np.cos(phase),
                         jnp.float32)
    noise = jnp.asarray(rng.normal(size=smooth.shape), jnp.float32)
    capture = jax.jit(energy.energy_capture, compiler_options=QUICK_COMPILE,
                      static_argnames=("num_coeffs", "segment_len", "residual"))
    for residual in anchors_lib.RESIDUAL_KINDS:
        rep = capture(smooth, num_coeffs=2, segment_len=16, residual=residual)
        assert float(jnp.min(rep.fraction)) > 0.9, (residual, rep.fraction)
        assert rep.spectrum.shape == (4, 15)
        # 2 of 15 coefficients of white noise: about 2/15 of its energy for differences
        # (high-pass), more for anchor-relative residuals (the anchor's noise is a DC term).
        white = capture(noise, num_coeffs=2, segment_len=16, residual=residual)
        limit = 0.3 if residual == "inter_frame" else 0.7
        assert float(jnp.max(white.fraction)) < limit, (residual, white.fraction)
    # Masked frames contribute nothing, whatever they hold.
    spectrum = jax.jit(energy.residual_energy_spectrum, static_argnames=("segment_len",),
                       compiler_options=QUICK_COMPILE)
    mask = jnp.ones((4, 32), bool).at[:, 20:].set(False)
    a = spectrum(smooth, mask, segment_len=16)
    b = spectrum(smooth.at[:, 20:].set(1e3), mask, segment_len=16)
    np.testing.assert_allclose(a, b, rtol=1e-6)
