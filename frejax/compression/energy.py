"""How much residual energy the lowest K temporal DCT coefficients capture.

The Fre-Res premise: residual trajectories of vision latents are smooth in
time, so their orthonormal DCT concentrates energy in the low frequencies.
These functions measure that on real latents (and feed the spectrum plots).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from frejax.compression import anchors as anchors_lib
from frejax.compression import residual_freq


class EnergyReport(NamedTuple):
    fraction: jax.Array       # (batch,) energy in the first K coefficients / all residual energy
    mean_fraction: jax.Array  # () mean of ``fraction`` over videos
    spectrum: jax.Array       # (batch, L-1) energy per coefficient index


def residual_energy_spectrum(latents: jax.Array, frame_mask: jax.Array | None = None, *,
                             segment_len: int = 0, residual: str = "inter_frame",
                             anchor: str = "middle", method: str = "auto") -> jax.Array:
    """Residual energy per DCT coefficient index, summed over segments, tokens and embed.

    Args:
      latents: ``(batch, frames T, tokens N, embed D)``.
      frame_mask: ``(batch, frames T)`` bool (default all valid); invalid frames
        contribute nothing.
      segment_len: L (0: the whole video is one segment, ``L = T``); must be >= 2.
    Returns:
      ``(batch, L-1)`` float32. By Parseval its sum is the residual energy.
    """
    b, t = latents.shape[:2]
    segment_len = segment_len or t
    if segment_len < 2:
        raise ValueError(f"energy: segment_len must be >= 2 (one residual step), got {segment_len}")
    if frame_mask is None:
        frame_mask = jnp.ones((b, t), bool)
    segments, mask = anchors_lib.segment_frames(latents.astype(jnp.float32), frame_mask,
                                                segment_len)
    anchor_index = anchors_lib.select_anchor(segments, mask, anchor)
    residuals = anchors_lib.residual_trajectories(segments, mask, anchor_index, residual)
    coeffs = residual_freq.residual_freq_tokens(residuals, segment_len - 1, method)
    return jnp.sum(jnp.square(coeffs), axis=(1, 3, 4))


def energy_capture(latents: jax.Array, frame_mask: jax.Array | None = None, *, num_coeffs: int,
                   segment_len: int = 0, residual: str = "inter_frame", anchor: str = "middle",
                   method: str = "auto") -> EnergyReport:
    """Fraction of residual energy in the first ``num_coeffs`` DCT coefficients.

    A video with no residual energy (static, or one valid frame) counts as fully
    captured (fraction 1).

    Args:
      latents: ``(batch, frames T, tokens N, embed D)``.
      frame_mask: ``(batch, frames T)`` bool.
      num_coeffs: K in ``[1, L-1]``.
    """
    spectrum = residual_energy_spectrum(latents, frame_mask, segment_len=segment_len,
                                        residual=residual, anchor=anchor, method=method)
    if not 1 <= num_coeffs <= spectrum.shape[1]:
        raise ValueError(
            f"energy: num_coeffs must be in [1, {spectrum.shape[1]}], got {num_coeffs}")
    total = jnp.sum(spectrum, axis=1)
    kept = jnp.sum(spectrum[:, :num_coeffs], axis=1)
    fraction = jnp.where(total > 0, kept / jnp.where(total > 0, total, 1.0), 1.0)
    return EnergyReport(fraction, jnp.mean(fraction), spectrum)
