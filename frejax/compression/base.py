"""The compressor interface shared by Fre-Res and every baseline.

A compressor maps vision latents ``(batch, frames T, tokens N, embed D)`` with a
known spatial grid ``(h, w)`` (``N = h * w``) to a fixed-length visual token
sequence ``(batch, M, embed D)`` plus a validity mask ``(batch, M)``.

``places`` says where each output token sits in the latent video: ``(batch, M, 3)``
float (frame, row, column), what multimodal RoPE (Qwen2.5-VL, Qwen3-VL) turns into
positions. The rule, for every method: a kept token sits at its source; a token that
averages sources (pooling, merging, a segment mean) sits at their centroid; a
frequency token sits at the centre of the span it transforms (Fre-Res's residual
tokens can also be placed at their anchor or spread over their window:
``compressor.fre_res.residual_place``). Places are fractional where a centroid is;
positions are not rounded.

Static shapes: ``M`` depends only on the geometry and the budget, never on the
video, so one compiled program serves every video. ``M`` equals the resolved
budget exactly (``num_tokens``); a method whose granularity leaves part of the
budget unused fills it with masked padding at the end and reports the tokens it
really uses as ``num_valid_tokens``. Matched budgets therefore mean matched LLM
sequence lengths, and comparisons of accuracy and prefill cost are fair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frejax.compression import options as options_lib


@dataclasses.dataclass(frozen=True)
class VideoGeometry:
    """Static shape of the vision latents of one video."""

    frames: int          # T
    grid: tuple[int, int]  # (h, w) of the patch grid
    embed: int           # D

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"geometry.frames must be >= 1, got {self.frames}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"geometry.grid must be two positive ints, got {self.grid}")
        if self.embed < 1:
            raise ValueError(f"geometry.embed must be >= 1, got {self.embed}")

    @property
    def tokens(self) -> int:  # N
        return self.grid[0] * self.grid[1]

    @property
    def full_tokens(self) -> int:  # T * N
        return self.frames * self.tokens


class CompressedTokens(NamedTuple):
    tokens: jax.Array  # (batch, M, embed)
    mask: jax.Array    # (batch, M) bool: False for padding
    # (batch, M, 3) float32 (frame, row, column), for multimodal RoPE (``places``);
    # None where the model's positions do not need them.
    places: jax.Array | None = None


def resolve_budget(geometry: VideoGeometry, budget: int = 0, ratio: float = 0.0) -> int:
    """Visual-token budget from an absolute count or a compression ratio.

    Exactly one of ``budget`` (tokens per video) and ``ratio`` (``T*N / budget``,
    e.g. 8 for 8x fewer tokens) must be positive. ``budget = ratio = 0`` means
    the full ``T*N`` tokens.
    """
    full = geometry.full_tokens
    if budget and ratio:
        raise ValueError("compressor: set either compressor.budget or compressor.ratio, not both")
    if budget < 0 or ratio < 0:
        raise ValueError(f"compressor.budget / compressor.ratio must be >= 0, got {budget} / {ratio}")
    if ratio:
        if ratio < 1:
            raise ValueError(f"compressor.ratio must be >= 1 (fewer tokens than full), got {ratio}")
        budget = int(full // ratio)
    elif not budget:
        budget = full
    if not 1 <= budget <= full:
        raise ValueError(f"compressor.budget must be in [1, {full}] (T*N), got {budget}")
    return int(budget)


class Compressor(nnx.Module):
    """Base class. Subclasses set ``name`` and implement ``compress``.

    Constructor: ``Cls(geometry, budget, options, *, rngs)`` where ``options``
    is the method's own config section (``compressor.<section>``, a mapping;
    missing keys take their defaults). ``OPTIONS`` declares every option with
    its default and allowed values; ``resolve_options`` checks them and raises
    ``ValueError`` naming ``compressor.<section>.<field>``. Methods that share
    options (Fre-Res and its ablations) share a section.
    """

    name: ClassVar[str] = ""
    section: ClassVar[str] = ""                       # "" = no options
    OPTIONS: ClassVar[options_lib.Schema] = {}

    @classmethod
    def resolve_options(cls, options: Any = None) -> dict[str, Any]:
        if not cls.section:
            if options:
                raise ValueError(f"compressor {cls.name!r} takes no options, got {dict(options)}")
            return {}
        return options_lib.resolve(f"compressor.{cls.section}", cls.OPTIONS, options)

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype: Any = jnp.float32):
        self.geometry = geometry
        self.dtype = dtype  # the model's compute dtype, for learned parts (the absorber)
        self.budget = int(budget)
        if not 1 <= self.budget <= geometry.full_tokens:
            raise ValueError(
                f"compressor.budget must be in [1, {geometry.full_tokens}], got {budget}")

    @property
    def num_tokens(self) -> int:
        """Static output length M (the budget)."""
        return self.budget

    @property
    def num_valid_tokens(self) -> int:
        """Tokens the method really uses for a video whose frames are all valid."""
        raise NotImplementedError

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        """``(B, T, N, D)``, ``(B, T)`` bool -> tokens ``(B, M', D)``, mask ``(B, M')``, M' <= M."""
        raise NotImplementedError

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        """``(B, M', 3)`` float32 (frame, row, column) of each token ``compress`` returns."""
        raise NotImplementedError(f"compressor {self.name!r} has no token_places()")

    def places(self, latents: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
        """Where each of the ``M`` output tokens sits: ``(B, M, 3)`` float32 (frame, row,
        column) in the latents' units; padding at ``(0, 0, 0)``."""
        self._check(latents)
        if frame_mask is None:
            frame_mask = jnp.ones(latents.shape[:2], bool)
        out = self.token_places(latents, frame_mask.astype(bool)).astype(jnp.float32)
        return jnp.pad(out, ((0, 0), (0, self.num_tokens - out.shape[1]), (0, 0)))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """The latent video ``(B, T, N, D)`` that what the method keeps implies.

        Model-free: each method's own inverse of its parameter-free part (interpolation,
        inverse transforms, least-squares unpooling), with learned parts left out. It
        measures how much of the latent video a budget keeps (``frejax.studies.analyze``), for
        videos whose frames are all valid.
        """
        raise NotImplementedError(f"compressor {self.name!r} has no reconstruct()")

    def _check(self, latents: jax.Array) -> None:
        g = self.geometry
        expected = (g.frames, g.tokens, g.embed)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
            raise ValueError(
                f"{self.name}: latents must be (batch, {g.frames}, {g.tokens}, {g.embed}),"
                f" got {tuple(latents.shape)}")

    def __call__(self, latents: jax.Array, frame_mask: jax.Array | None = None, *,
                 places: bool = False) -> CompressedTokens:
        """``compress`` padded to ``M`` tokens; with ``places``, each token's place too
        (what a model under multimodal RoPE needs)."""
        self._check(latents)
        if frame_mask is None:
            frame_mask = jnp.ones(latents.shape[:2], bool)
        out = pad_to(self.compress(latents, frame_mask.astype(bool)), self.num_tokens)
        return out._replace(places=self.places(latents, frame_mask)) if places else out


def pad_to(out: CompressedTokens, length: int) -> CompressedTokens:
    """Pads (or checks) a compressed sequence to exactly ``length`` tokens."""
    m = out.tokens.shape[1]
    if m > length:
        raise AssertionError(f"compressor produced {m} tokens for a budget of {length}")
    if m == length:
        return out
    tokens = jnp.pad(out.tokens, ((0, 0), (0, length - m), (0, 0)))
    mask = jnp.pad(out.mask, ((0, 0), (0, length - m)))
    places = None if out.places is None else jnp.pad(out.places, ((0, 0), (0, length - m), (0, 0)))
    return CompressedTokens(tokens, mask, places)


def concat_chunks(parts: list[CompressedTokens], chunk_frames: int) -> CompressedTokens:
    """Consecutive chunks' tokens ``(..., M_k, D)`` -> one sequence along the token axis
    (the second to last of ``tokens``), each chunk's places moved on by the frames before it
    (``chunk_frames`` per chunk), so a streamed video's tokens sit where the whole video's would."""
    if not parts:
        raise ValueError("concat_chunks: no chunks")
    xp = np if isinstance(parts[0].tokens, np.ndarray) else jnp
    tokens = xp.concatenate([p.tokens for p in parts], axis=-2)
    mask = xp.concatenate([p.mask for p in parts], axis=-1)
    if any(p.places is None for p in parts):
        return CompressedTokens(tokens, mask)
    shift = lambda k: xp.asarray([k * chunk_frames, 0, 0], xp.float32)  # noqa: E731
    places = xp.concatenate([p.places + shift(k) for k, p in enumerate(parts)], axis=-2)
    return CompressedTokens(tokens, mask, places)


def grid_places(grid: tuple[int, int]) -> np.ndarray:
    """``(N, 2)`` float32 (row, column) of every token of an ``(h, w)`` grid, row-major."""
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    return np.stack([rows, cols], axis=-1).astype(np.float32)


def frame_places(frames: Any, grid: tuple[int, int], cells: np.ndarray | None = None) -> jax.Array:
    """Tokens of whole frames: ``frames (..., F)`` -> ``(..., F * C, 3)`` (frame, row, column)
    over the frames' ``cells (C, 2)`` (default every token of ``grid``), frame-major."""
    cells = grid_places(grid) if cells is None else cells
    t = jnp.asarray(frames, jnp.float32)[..., None, None]                      # (..., F, 1, 1)
    t = jnp.broadcast_to(t, t.shape[:-2] + (len(cells), 1))
    rc = jnp.broadcast_to(jnp.asarray(cells), t.shape[:-1] + (2,))
    out = jnp.concatenate([t, rc], axis=-1)
    return out.reshape(out.shape[:-3] + (-1, 3))


def slot_places(index: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Flat ``frame * N + position`` slots -> ``(..., 3)`` (frame, row, column)."""
    n = grid[0] * grid[1]
    frame, pos = jnp.divmod(index, n)
    row, col = jnp.divmod(pos, grid[1])
    return jnp.stack([frame, row, col], axis=-1).astype(jnp.float32)


_REGISTRY: dict[str, type[Compressor]] = {}


def register(cls: type[Compressor]) -> type[Compressor]:
    """Class decorator adding a compressor to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"compressor {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Removes ``name`` (for test-local compressors); unknown names raise."""
    get(name)
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> type[Compressor]:
    if name not in _REGISTRY:
        raise ValueError(f"compressor.name: unknown compressor {name!r}; choose one of {names()}")
    return _REGISTRY[name]


def build(name: str, geometry: VideoGeometry, budget: int, options: Any = None, *,
          rngs: nnx.Rngs, dtype: Any = jnp.float32) -> Compressor:
    """``options``: the method's own section (``compressor.<section>``); ``dtype``: the
    model's compute dtype."""
    return get(name)(geometry, budget, options, rngs=rngs, dtype=dtype)


def sections() -> dict[str, options_lib.Schema]:
    """Config section -> option schema, over every registered compressor."""
    out: dict[str, options_lib.Schema] = {}
    for cls in _REGISTRY.values():
        if cls.section:
            if out.setdefault(cls.section, cls.OPTIONS) is not cls.OPTIONS:
                raise ValueError(f"compressor {cls.name!r} declares other options for the"
                                 f" shared section {cls.section!r}")
    return dict(sorted(out.items()))


def section_options(compressor_config: Mapping[str, Any]) -> Any:
    """The chosen method's own section of a ``compressor`` config (``None`` without one)."""
    cls = get(compressor_config["name"])
    return compressor_config.get(cls.section) if cls.section else None
