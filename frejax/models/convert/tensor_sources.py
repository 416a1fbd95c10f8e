"""Sources: how one frejax-layout tensor is read from the Hugging Face tensor it comes from.

A parameter map is a dict ``{frejax param path: Source}``; each ``Source`` reads
any slice of the frejax tensor (the slice one device holds) from the memory-mapped
checkpoint, transposing, splitting, stacking or resampling on the way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from frejax.models.convert.safetensors_io import Index, SafetensorsFolder

Path = tuple[Any, ...]




def _as_ranges(index: Index, shape: tuple[int, ...]) -> list[range]:
    return [range(*s.indices(n)) for s, n in zip(index, shape)]


def _read_grouped(array: np.ndarray, groups: list[tuple[int, ...]], ranges: list[range]) -> np.ndarray:
    """Reads ``ranges`` of an array whose axis ``i`` is the row-major merge of ``groups[i]``.

    Only the span of the outermost axis of each group is read from disk; inner
    axes are sliced after the read (they are small: heads' ``head_dim``).
    """
    spans, inner = [], []
    it = iter(ranges)
    for group in groups:
        rs = [next(it) for _ in group]
        block = math.prod(group[1:])
        spans.append(slice(rs[0].start * block, (rs[0].start + len(rs[0])) * block))
        inner.append(rs)
    out = np.asarray(array[tuple(spans)])
    out = out.reshape(sum(((len(rs[0]),) + g[1:] for rs, g in zip(inner, groups)), ()))
    picks = []
    for rs in inner:
        picks.append(slice(None))
        picks += [slice(r.start, r.stop, r.step) for r in rs[1:]]
    return out[tuple(picks)]


@dataclasses.dataclass(frozen=True)
class Linear:
    """A torch ``Linear`` weight ``(out, in)`` as a frejax kernel ``in_shape + out_shape``."""

    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def hf_shape(self) -> tuple[int, ...]:
        return (math.prod(self.out_shape), math.prod(self.in_shape))

    def shape(self) -> tuple[int, ...]:
        return self.in_shape + self.out_shape

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        ranges = _as_ranges(index, self.shape())
        n_in = len(self.in_shape)
        out = _read_grouped(folder.array(self.name), [self.out_shape, self.in_shape],
                            ranges[n_in:] + ranges[:n_in])
        n_out = len(self.out_shape)
        return out.transpose(tuple(range(n_out, n_out + n_in)) + tuple(range(n_out)))


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor taken as it is (norm scales, biases, embeddings)."""

    name: str
    shape_: tuple[int, ...]

    def hf_shape(self) -> tuple[int, ...]:
        return self.shape_

    def shape(self) -> tuple[int, ...]:
        return self.shape_

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        return np.asarray(folder.array(self.name)[tuple(index)])


@dataclasses.dataclass(frozen=True)
class SplitBias:
    """A bias ``(H*D,)`` of a head-split projection as ``(H, D)``."""

    name: str
    shape_: tuple[int, ...]

    def hf_shape(self) -> tuple[int, ...]:
        return (math.prod(self.shape_),)

    def shape(self) -> tuple[int, ...]:
        return self.shape_

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        return _read_grouped(folder.array(self.name), [self.shape_],
                             _as_ranges(index, self.shape_))


@dataclasses.dataclass(frozen=True)
class PatchConv:
    """A patch-embedding conv ``(out, c, p, p)`` as a Dense over flattened ``(p, p, c)`` patches.

    ``frejax[(i * p + j) * c + ch, o] == hf[o, ch, i, j]`` (``vit.patchify`` order).
    """

    name: str
    patch: int
    channels: int
    width: int

    def hf_shape(self) -> tuple[int, ...]:
        return (self.width, self.channels, self.patch, self.patch)

    def shape(self) -> tuple[int, ...]:
        return (self.patch * self.patch * self.channels, self.width)

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        rows, cols = index
        w = np.asarray(folder.array(self.name)[cols])  # (out slice, c, p, p)
        return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])[rows]


@dataclasses.dataclass(frozen=True)
class Reshaped:
    """A small tensor read whole and reshaped (``(1, 1, D)`` class token -> ``(1, D)``)."""

    name: str
    hf_shape_: tuple[int, ...]
    shape_: tuple[int, ...]

    def hf_shape(self) -> tuple[int, ...]:
        return self.hf_shape_

    def shape(self) -> tuple[int, ...]:
        return self.shape_

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        return np.asarray(folder.array(self.name)).reshape(self.shape_)[tuple(index)]


def cubic_weights(size: int, out: int, antialias: bool) -> np.ndarray:
    """``(out, size)`` matrix of PyTorch's ``interpolate(mode="bicubic", align_corners=False)``.

    Without antialiasing: Keys' kernel with ``a = -0.75`` at ``(i + 0.5) * size / out - 0.5``,
    border samples repeated. With it (PyTorch's ``antialias=True``, as in Pillow): ``a = -0.5``
    and, when shrinking, the kernel stretched by ``size / out``, weights renormalised.
    """
    scale = size / out
    mat = np.zeros((out, size), np.float64)

    def kernel(x, a):
        x = np.abs(x)
        return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))

    for i in range(out):
        if antialias:
            support = 2.0 * max(scale, 1.0)
            inv = 1.0 / max(scale, 1.0)
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), size)
            taps = np.arange(lo, hi)
            w = kernel((taps - center + 0.5) * inv, -0.5)
            mat[i, taps] += w / w.sum()
        else:
            src = (i + 0.5) * scale - 0.5
            base = math.floor(src)
            t = src - base
            for offset, w in zip(range(-1, 3), kernel(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
                mat[i, min(max(base + offset, 0), size - 1)] += w
    return mat


def resize_bicubic(grid: np.ndarray, out: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """``(h, w, C)`` -> ``(out_h, out_w, C)`` by ``cubic_weights`` along each axis (float32)."""
    rows = cubic_weights(grid.shape[0], out[0], antialias)
    cols = cubic_weights(grid.shape[1], out[1], antialias)
    x = np.einsum("ay,yxc->axc", rows, grid.astype(np.float64))
    return np.einsum("bx,axc->abc", cols, x).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PositionTable:
    """DINOv2 ``position_embeddings (1, 1 + S*S, D)``: the class position or the patch table.

    ``part="patches"`` resizes the ``S x S`` table to ``grid`` (``resize_bicubic``), as
    ``Dinov2Embeddings.interpolate_pos_encoding`` does; an equal grid is taken as it is.
    """

    name: str
    side: int
    width: int
    grid: tuple[int, int]
    part: str  # "cls" | "patches"
    antialias: bool = False

    def hf_shape(self) -> tuple[int, ...]:
        return (1, 1 + self.side * self.side, self.width)

    def shape(self) -> tuple[int, ...]:
        if self.part == "cls":
            return (1, self.width)
        return (self.grid[0] * self.grid[1], self.width)

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        table = np.asarray(folder.array(self.name), np.float32)[0]
        if self.part == "cls":
            return table[:1][tuple(index)]
        patches = table[1:].reshape(self.side, self.side, self.width)
        if tuple(self.grid) != (self.side, self.side):
            patches = resize_bicubic(patches, self.grid, self.antialias)
        return patches.reshape(-1, self.width)[tuple(index)]


@dataclasses.dataclass(frozen=True)
class Stacked:
    """The same param of every layer, stacked on a leading ``layers`` axis (scanned layers)."""

    layers: tuple[Any, ...]

    @property
    def name(self) -> str:
        return self.layers[0].name

    def hf_shape(self) -> tuple[int, ...]:
        return tuple(self.layers[0].hf_shape())

    def shape(self) -> tuple[int, ...]:
        return (len(self.layers),) + tuple(self.layers[0].shape())

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        which = range(len(self.layers))[index[0]]
        return np.stack([self.layers[i].read(folder, index[1:]) for i in which])


@dataclasses.dataclass(frozen=True)
class Extended:
    """A vocabulary axis grown past the checkpoint's: tokens the tokenizer adds (the ``<video>``
    placeholder, ``<pad>``) get zero rows (no logit of their own, an embedding the splice
    replaces); the checkpoint's rows keep their ids."""

    source: Any
    axis: int
    size: int

    @property
    def name(self) -> str:
        return self.source.name

    def hf_shape(self) -> tuple[int, ...]:
        return tuple(self.source.hf_shape())

    def shape(self) -> tuple[int, ...]:
        shape = list(self.source.shape())
        shape[self.axis] = self.size
        return tuple(shape)

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        shape = self.shape()
        ranges = _as_ranges(index, shape)
        have = self.source.shape()[self.axis]
        want = ranges[self.axis]
        out = np.zeros([len(r) for r in ranges], np.float32)
        inside = [i for i in want if i < have]
        if inside:
            sub = list(index)
            sub[self.axis] = slice(inside[0], inside[-1] + 1, want.step)
            part = self.source.read(folder, tuple(sub))
            where = [slice(None)] * len(shape)
            where[self.axis] = slice(0, len(inside))
            out[tuple(where)] = part
        return out


@dataclasses.dataclass(frozen=True)
class Conv3dPatch:
    """A patch-embedding ``Conv3d`` ``(out, c, t, p, p)`` with stride = kernel as a Dense
    over patches flattened in the kernel's own ``(c, t, p, p)`` order (Qwen-VL)."""

    name: str
    shape_: tuple[int, ...]    # (out, c, t, p, p)

    def hf_shape(self) -> tuple[int, ...]:
        return self.shape_

    def shape(self) -> tuple[int, ...]:
        return (math.prod(self.shape_[1:]), self.shape_[0])

    def read(self, folder: SafetensorsFolder, index: Index) -> np.ndarray:
        rows, cols = index
        w = np.asarray(folder.array(self.name)[cols])
        return w.reshape(w.shape[0], -1).T[rows]


Source = (Linear | Tensor | SplitBias | PatchConv | Conv3dPatch | Reshaped | PositionTable | Stacked
          | Extended)
ParamMap = dict[Path, Source]
