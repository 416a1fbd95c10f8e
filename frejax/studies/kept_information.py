"""How much of a latent video a representation keeps, model-free: spectra and errors.

The measurements behind ``frejax.studies.analyze``. Shapes: one window of latents ``z`` is
``(T, N, D)`` (frames, tokens, channels); batched functions take ``(B, T, N, D)``.
All sums run over tokens and channels, so every figure is an energy share of the whole
window.

* **Residual spectra.** ``inter_frame`` residuals ``z[t+1] - z[t]`` and
  ``anchor_relative`` residuals ``z[t] - z[a]`` (``a`` the middle frame) are both
  ``T-1`` long per position; their orthonormal DCT-II energy per coefficient shows
  whether they concentrate at low temporal frequency (the Fre-Res premise).
* **References** with known answers: the expected spectrum of a process with a known
  covariance is ``diag(C Sigma C^T)`` (``C`` the DCT matrix). White residuals give
  the flat share ``K / (T-1)``; a random walk's anchor-relative residuals share a lot
  of low-frequency energy only because subtracting one frame puts the same offset
  into every step.
* **Temporal share**: the energy of ``z - mean_t(z)`` over that of ``z`` minus its
  per-channel mean; what is left (one minus it) is static.
* **Relative error** of a reconstruction: ``||z_hat - z|| / ||z - mean_t(z)||``, the
  error against the temporal variation. Keeping only the temporal mean scores 1;
  losing static detail as well scores above 1.
* **Shots**: hard cuts split a clip so that no window straddles two shots.
"""

from __future__ import annotations

import functools

import numpy as np

RESIDUAL_KINDS = ("inter_frame", "anchor_relative")
PROCESSES = ("white", "random_walk")


@functools.lru_cache(maxsize=64)
def dct_basis(length: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``(length, length)``, float64 (row k: frequency k)."""
    t = np.arange(length)
    basis = np.cos(np.pi * (t[None, :] + 0.5) * t[:, None] / length) * np.sqrt(2.0 / length)
    basis[0] /= np.sqrt(2.0)
    return basis


@functools.lru_cache(maxsize=64)
def residual_operator(frames: int, kind: str) -> np.ndarray:
    """``(T-1, T)`` linear map from a trajectory to its residuals (anchor: the middle frame)."""
    if kind not in RESIDUAL_KINDS:
        raise ValueError(f"residual kind must be one of {RESIDUAL_KINDS}, got {kind!r}")
    if frames < 2:
        raise ValueError(f"residuals need at least 2 frames, got {frames}")
    op = np.zeros((frames - 1, frames))
    if kind == "inter_frame":
        op[np.arange(frames - 1), np.arange(1, frames)] = 1.0
        op[np.arange(frames - 1), np.arange(frames - 1)] = -1.0
    else:
        anchor = (frames - 1) // 2
        others = [t for t in range(frames) if t != anchor]
        op[np.arange(frames - 1), others] = 1.0
        op[:, anchor] = -1.0
    return op


def residual_spectrum(latents: np.ndarray, kind: str) -> np.ndarray:
    """Residual energy per DCT coefficient ``(T-1,)`` of one window ``(T, N, D)``."""
    z = np.asarray(latents, np.float64)
    t = z.shape[0]
    residuals = np.einsum("st,tnd->snd", residual_operator(t, kind), z)
    coeffs = np.einsum("ks,snd->knd", dct_basis(t - 1), residuals)
    return np.sum(np.square(coeffs), axis=(1, 2))


def low_share(spectrum: np.ndarray, k: int) -> float:
    """Share of the energy in the lowest ``k`` coefficients (1.0 for a zero spectrum)."""
    total = float(np.sum(spectrum))
    return float(np.sum(spectrum[:k]) / total) if total > 0 else 1.0


def process_covariance(frames: int, process: str) -> np.ndarray:
    """``(T, T)`` covariance of a unit-variance white sequence or a unit-step random walk."""
    if process == "white":
        return np.eye(frames)
    if process == "random_walk":
        t = np.arange(frames)
        return np.minimum(t[:, None], t[None, :]) + 1.0
    raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")


def expected_spectrum(frames: int, kind: str, process: str) -> np.ndarray:
    """Expected residual energy per DCT coefficient ``(T-1,)`` of one channel of ``process``."""
    op = residual_operator(frames, kind)
    cov = op @ process_covariance(frames, process) @ op.T
    basis = dct_basis(frames - 1)
    return np.einsum("ks,st,kt->k", basis, cov, basis)


def reference_shares(frames: int, k: int) -> dict[str, float]:
    """Low-``k`` shares of the known processes: ``flat`` (white residuals) and each
    ``<process>/<kind>``."""
    out = {"flat": k / (frames - 1)}
    for process in PROCESSES:
        for kind in RESIDUAL_KINDS:
            out[f"{process}/{kind}"] = low_share(expected_spectrum(frames, kind, process), k)
    return out


def temporal_share(latents: np.ndarray) -> float:
    """Energy of ``z - mean_t(z)`` over that of ``z - mean_{t,n}(z)`` for ``(T, N, D)``."""
    z = np.asarray(latents, np.float64)
    temporal = np.sum(np.square(z - z.mean(axis=0, keepdims=True)))
    total = np.sum(np.square(z - z.mean(axis=(0, 1), keepdims=True)))
    return float(temporal / total) if total > 0 else 0.0


def relative_errors(latents: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """``||z_hat - z|| / ||z - mean_t(z)||`` per window of ``(B, T, N, D)``: ``(B,)``.

    A static window (no temporal variation) scores 0 when reconstructed exactly, else inf.
    """
    z = np.asarray(latents, np.float64)
    err = np.sqrt(np.sum(np.square(np.asarray(reconstruction, np.float64) - z), axis=(1, 2, 3)))
    var = np.sqrt(np.sum(np.square(z - z.mean(axis=1, keepdims=True)), axis=(1, 2, 3)))
    tiny = 1e-9 * np.sqrt(np.sum(np.square(z), axis=(1, 2, 3))) + 1e-30
    return np.where(var > tiny, err / np.maximum(var, tiny), np.where(err > tiny, np.inf, 0.0))


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean absolute grey-level change between consecutive frames ``(F-1,)``, in [0, 1].

    ``frames``: ``(F, H, W, 3)`` uint8; compared at 1/4 resolution so noise averages out.
    """
    grey = np.asarray(frames, np.float32).mean(axis=-1)[:, ::4, ::4] / 255.0
    return np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))


def detect_shots(differences: np.ndarray, min_jump: float = 0.08,
                 ratio: float = 5.0) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` frame ranges between hard cuts.

    A cut after frame ``t`` is a change ``differences[t]`` above ``min_jump`` and above
    ``ratio`` times the median change of the 8 steps on either side: a jump that
    stands out from the clip's own motion, not fast motion itself.
    """
    d = np.asarray(differences, np.float64)
    cuts = []
    for t in range(len(d)):
        around = np.concatenate([d[max(0, t - 8):t], d[t + 1:t + 9]])
        local = float(np.median(around)) if around.size else 0.0
        if d[t] > min_jump and d[t] > ratio * local:
            cuts.append(t + 1)
    bounds = [0] + cuts + [len(d) + 1]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def windows(shots: list[tuple[int, int]], frames: int, stride: int) -> list[np.ndarray]:
    """Frame indices of windows of ``frames`` frames taking every ``stride``-th frame, each
    inside one shot: ``start + stride * arange(frames)``.

    Windows of one phase follow each other without overlap, and every phase
    ``0..stride-1`` is used, so no two windows share a frame and sparse sampling still
    yields as many windows as the footage allows.
    """
    span = (frames - 1) * stride + 1
    out = []
    for a, b in shots:
        for phase in range(stride):
            start = a + phase
            while start + span <= b:
                out.append(start + stride * np.arange(frames))
                start += frames * stride
    return out
