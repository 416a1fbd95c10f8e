"""A cache of per-video work that does not depend on the question.

Fre-Res is query-agnostic: the compressed visual tokens of a video (and the LLM's
keys and values for the part of the prompt up to and including the video) are
the same whatever is asked. ``VideoTokenCache`` keeps them per video, so the
second question about a video skips decoding, encoding, compression and the
video part of the prefill.

Entries are keyed by the file's real path, size and modification time plus a
fingerprint of everything that shapes the tokens (checkpoint, frame sampling,
compressor), so an edited file or another model never reads a stale entry.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from typing import Any

from frejax.compression import CompressedTokens


@dataclasses.dataclass(frozen=True)
class VideoKey:
    path: str
    size: int
    mtime_ns: int
    fingerprint: str


def video_key(path: str, fingerprint: str) -> VideoKey:
    """Identity of ``path`` as it is on disk now (``FileNotFoundError`` names it)."""
    stat = os.stat(path)
    return VideoKey(os.path.realpath(path), stat.st_size, stat.st_mtime_ns, fingerprint)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable ``parts`` (config sections, checkpoint step)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class CachedVideo:
    """What one video contributes to every question about it.

    visual: compressed tokens ``(1, M, vision_width)`` and mask ``(1, M)``.
    prefix: the LLM cache after the prompt's text before the placeholder and the
      M visual places (``llm.init_cache`` layout), or None when not kept.
    prefix_tokens: the text before the placeholder that ``prefix`` was built from.
    prefix_len: sequence places the prefix fills (its next free slot).
    next_position: ``(1,)`` RoPE position of the first token after the prefix.
    """

    visual: CompressedTokens
    prefix: dict | None = None
    prefix_tokens: tuple[int, ...] = ()
    prefix_len: int = 0
    next_position: Any = None


class VideoTokenCache:
    """In-memory LRU of ``CachedVideo`` entries with hit/miss counts."""

    def __init__(self, max_videos: int = 64):
        if max_videos < 1:
            raise ValueError(f"token cache: max_videos must be >= 1, got {max_videos}")
        self.max_videos = max_videos
        self._entries: collections.OrderedDict[VideoKey, CachedVideo] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: VideoKey) -> CachedVideo | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: VideoKey, entry: CachedVideo) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_videos:
            self._entries.popitem(last=False)  # least recently used; device memory is freed
