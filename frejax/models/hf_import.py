"""Pretrained weights from Hugging Face-layout safetensors folders.

A folder holds ``config.json`` and either ``model.safetensors`` or shards named
by ``model.safetensors.index.json``. Supported: SigLIP / SigLIP2 vision towers
(``SiglipVisionModel``, the vision half of ``SiglipModel``) and DINOv2 backbones
(``Dinov2Model``, ``Dinov2WithRegistersModel``) into ``ViT``, and Qwen2 / Qwen2.5 /
Llama-3 decoders into ``LLM``. A DINOv2 position table is resized at import to the
configured patch grid with the bicubic resampling ``transformers`` applies at run time,
so any image size that the patch size divides works.

Every parameter is built with ``jax.make_array_from_callback`` in the sharding of
the current mesh: each device's callback reads only its slice of the tensor from
a memory-mapped file, so no host ever holds a full copy of a large model. The
safetensors format (an 8-byte header length, a JSON header, raw little-endian
data) is read directly so that bfloat16, the dtype of nearly every released
checkpoint, maps to ``ml_dtypes.bfloat16`` (``safe_open(framework="numpy")``
cannot represent it). Nothing is unpickled and nothing touches the network.

A mapping is a dict ``{frejax param path: Source}``; a ``Source`` reads a slice
of the frejax-layout tensor from the Hugging Face tensor it is derived from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np

Index = tuple[slice, ...]
Path = tuple[Any, ...]

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


# ----------------------------------------------------------------------------
# Reading safetensors folders.
# ----------------------------------------------------------------------------


class SafetensorsFile:
    """Lazily sliceable tensors of one ``.safetensors`` file (memory-mapped)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: unreadable safetensors header: {e}") from None
        header.pop("__metadata__", None)
        self._header = header
        self._data_start = 8 + header_len
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def array(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of tensor ``name`` (no data read yet)."""
        entry = self._header[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = entry["data_offsets"]
        buf = self._mmap[self._data_start + begin:self._data_start + end]
        return buf.view(dtype).reshape(entry["shape"])


class SafetensorsFolder:
    """``config.json`` plus the tensors of a single or sharded safetensors checkpoint."""

    def __init__(self, path: str):
        self.path = path
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model folder)")
        with open(config_path) as f:
            self.config: dict = json.load(f)
        index_path = os.path.join(path, "model.safetensors.index.json")
        single_path = os.path.join(path, "model.safetensors")
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index_path}: missing 'weight_map'")
            files = {name: SafetensorsFile(os.path.join(path, name))
                     for name in sorted(set(weight_map.values()))}
            self._where = {key: files[name] for key, name in weight_map.items()}
        elif os.path.isfile(single_path):
            file = SafetensorsFile(single_path)
            self._where = {key: file for key in file.keys()}
        else:
            raise FileNotFoundError(
                f"{path}: neither model.safetensors nor model.safetensors.index.json"
                " (pickled .bin checkpoints are not read; convert them to safetensors)")

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def array(self, name: str) -> np.ndarray:
        return self._file(name).array(name)

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self._where:
            raise KeyError(f"{self.path}: no tensor {name!r} in the checkpoint")
        return self._where[name]

    def prefix_of(self, suffix: str) -> str:
        """The key prefix in front of ``suffix`` (e.g. ``vision_model.`` or ``model.``)."""
        hits = sorted(k[: -len(suffix)] for k in self._where if k.endswith(suffix))
        if not hits:
            raise KeyError(f"{self.path}: no tensor named '*{suffix}'")
        return hits[0]


# ----------------------------------------------------------------------------
# Sources: one frejax tensor read from one Hugging Face tensor.
# ----------------------------------------------------------------------------


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


Source = Linear | Tensor | SplitBias | PatchConv | Reshaped | PositionTable | Stacked | Extended
ParamMap = dict[Path, Source]


# ----------------------------------------------------------------------------
# Config translation and parameter maps.
# ----------------------------------------------------------------------------


def _vision_hf_config(config: dict) -> dict:
    """The vision part of a SigLIP / SigLIP2 ``config.json`` (full model or tower)."""
    return config.get("vision_config", config)


DINOV2_TYPES = ("dinov2", "dinov2_with_registers")


def is_dinov2(config: dict) -> bool:
    return _vision_hf_config(config).get("model_type") in DINOV2_TYPES


def vision_config_from_hf(config: dict) -> dict:
    """``config.json`` of a SigLIP(2) tower or a DINOv2 backbone -> ``model.vision`` keys.

    DINOv2 sets no ``image_size``: its position table is resized to any grid.
    """
    c = _vision_hf_config(config)
    if c.get("model_type") in DINOV2_TYPES:
        return _dinov2_config(c)
    keys = _siglip_config(c)
    if is_llava(config):
        keys.update(_llava_vision_layers(config, keys["depth"]))
    return keys


def is_llava(config: dict) -> bool:
    """A LLaVA-OneVision / LLaVA-Video ``config.json`` (vision tower + projector + LLM)."""
    return config.get("model_type") == "llava_onevision"


def _llava_vision_layers(config: dict, depth: int) -> dict:
    """LLaVA reads ``hidden_states[vision_feature_layer]``: the output of a block, before the
    tower's final norm. The ViT runs the blocks up to that one only."""
    layer = config.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ValueError(f"llava config: vision_feature_layer {layer!r}; one layer is supported")
    strategy = config.get("vision_feature_select_strategy", "full")
    if strategy != "full":
        raise ValueError(f"llava config: vision_feature_select_strategy {strategy!r}; SigLIP has no"
                         " class token to drop, 'full' is supported")
    used = depth + 1 + layer if layer < 0 else layer
    if not 1 <= used <= depth:
        raise ValueError(f"llava config: vision_feature_layer {layer} outside 1..{depth} blocks")
    return dict(depth=used, final_norm=False)


def _siglip_config(c: dict) -> dict:
    act = c.get("hidden_act", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise ValueError(f"vision config: hidden_act {act!r}; the ViT implements gelu_pytorch_tanh")
    patch = int(c.get("patch_size", 16))
    if "num_patches" in c:  # SigLIP2 (NaFlex): a square grid of position embeddings
        side = math.isqrt(int(c["num_patches"]))
        image_size = side * patch
    else:
        image_size = int(c.get("image_size", 224))
    return dict(image_size=image_size, patch_size=patch, width=int(c.get("hidden_size", 768)),
                depth=int(c.get("num_hidden_layers", 12)),
                heads=int(c.get("num_attention_heads", 12)),
                mlp_dim=int(c.get("intermediate_size", 3072)),
                norm_eps=float(c.get("layer_norm_eps", 1e-6)), cls_token=False, registers=0,
                layer_scale=False, gelu_approximate=True, pixel_norm="symmetric",
                final_norm=True)


def _dinov2_config(c: dict) -> dict:
    act = c.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"vision config: hidden_act {act!r}; the DINOv2 ViT implements 'gelu'")
    if c.get("use_swiglu_ffn"):
        raise ValueError("vision config: use_swiglu_ffn (DINOv2-g) is not supported")
    if not c.get("qkv_bias", True):
        raise ValueError("vision config: qkv_bias false is not supported")
    width = int(c.get("hidden_size", 768))
    return dict(patch_size=int(c.get("patch_size", 14)), width=width,
                depth=int(c.get("num_hidden_layers", 12)),
                heads=int(c.get("num_attention_heads", 12)),
                mlp_dim=int(width * float(c.get("mlp_ratio", 4))),
                norm_eps=float(c.get("layer_norm_eps", 1e-6)), cls_token=True,
                registers=int(c.get("num_register_tokens", 0)), layer_scale=True,
                gelu_approximate=False, pixel_norm="imagenet", final_norm=True)


def llm_config_from_hf(config: dict) -> dict:
    """``config.json`` of a Qwen2 / Qwen2.5 / Llama(-3) decoder (or a LLaVA model's
    ``text_config``) -> ``model.llm`` keys."""
    if is_llava(config):
        config = config["text_config"]
    kind = config.get("model_type")
    if kind not in ("qwen2", "llama"):
        raise ValueError(f"llm config: model_type {kind!r}; supported: 'qwen2', 'llama'")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"llm config: hidden_act {config['hidden_act']!r}; SwiGLU needs 'silu'")
    if kind == "llama" and (config.get("attention_bias") or config.get("mlp_bias")):
        raise ValueError("llm config: Llama with attention_bias / mlp_bias is not supported")
    if kind == "qwen2" and config.get("use_sliding_window"):
        raise ValueError("llm config: Qwen2 sliding-window attention is not supported")
    # transformers >= 5 nests rope settings in rope_parameters; earlier: rope_theta + rope_scaling.
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(config.get("rope_theta") or rope.get("rope_theta", 10_000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = dict(type="none", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position=8192)
    if rope_type == "llama3":
        scaling.update(type="llama3", factor=float(rope["factor"]),
                       low_freq_factor=float(rope["low_freq_factor"]),
                       high_freq_factor=float(rope["high_freq_factor"]),
                       original_max_position=int(rope["original_max_position_embeddings"]))
    elif rope_type != "default":
        raise ValueError(f"llm config: rope type {rope_type!r}; supported: default, llama3")
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or 0)
    if head_dim == int(config["hidden_size"]) // heads:
        head_dim = 0
    return dict(vocab_size=int(config["vocab_size"]), width=int(config["hidden_size"]),
                depth=int(config["num_hidden_layers"]), heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads), head_dim=head_dim,
                mlp_dim=int(config["intermediate_size"]), rope_theta=theta,
                qkv_bias=kind == "qwen2", tie_embeddings=bool(config.get("tie_word_embeddings")),
                norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_scaling=scaling)


def vision_param_map(folder: SafetensorsFolder, grid: tuple[int, int] | None = None) -> ParamMap:
    """frejax ``ViT`` param paths -> sources in a SigLIP(2) or DINOv2 checkpoint.

    ``grid``: the ViT's patch grid (DINOv2 only; default: the checkpoint's own table).
    """
    if is_dinov2(folder.config):
        return _dinov2_param_map(folder, grid)
    c = vision_config_from_hf(folder.config)
    p, d, heads = c["patch_size"], c["width"], c["heads"]
    prefix = folder.prefix_of("embeddings.patch_embedding.weight")
    emb = prefix + "embeddings."
    if len(folder.shape(emb + "patch_embedding.weight")) == 4:  # SigLIP: a conv
        patch: Source = PatchConv(emb + "patch_embedding.weight", p, 3, d)
    else:  # SigLIP2: a Linear over patches flattened in (p, p, c) order already
        patch = Linear(emb + "patch_embedding.weight", (p * p * 3,), (d,))
    m: ParamMap = {
        ("patch_embed", "kernel"): patch,
        ("patch_embed", "bias"): Tensor(emb + "patch_embedding.bias", (d,)),
        ("pos_embed",): Tensor(emb + "position_embedding.weight",
                               ((c["image_size"] // p) ** 2, d)),
    }
    if c["final_norm"]:
        m[("final_norm", "scale")] = Tensor(prefix + "post_layernorm.weight", (d,))
        m[("final_norm", "bias")] = Tensor(prefix + "post_layernorm.bias", (d,))
    hd = (heads, d // heads)
    for i in range(c["depth"]):
        hf, fj = f"{prefix}encoder.layers.{i}.", ("blocks", i)
        for norm, name in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
            m[fj + (norm, "scale")] = Tensor(hf + name + ".weight", (d,))
            m[fj + (norm, "bias")] = Tensor(hf + name + ".bias", (d,))
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            m[fj + ("attn", ours, "kernel")] = Linear(hf + f"self_attn.{theirs}.weight", (d,), hd)
            m[fj + ("attn", ours, "bias")] = SplitBias(hf + f"self_attn.{theirs}.bias", hd)
        m[fj + ("attn", "out", "kernel")] = Linear(hf + "self_attn.out_proj.weight", hd, (d,))
        m[fj + ("attn", "out", "bias")] = Tensor(hf + "self_attn.out_proj.bias", (d,))
        for fc in ("fc1", "fc2"):
            shape = ((d,), (c["mlp_dim"],)) if fc == "fc1" else ((c["mlp_dim"],), (d,))
            m[fj + ("mlp", fc, "kernel")] = Linear(hf + f"mlp.{fc}.weight", *shape)
            m[fj + ("mlp", fc, "bias")] = Tensor(hf + f"mlp.{fc}.bias", shape[1])
    return m


def _dinov2_param_map(folder: SafetensorsFolder, grid: tuple[int, int] | None) -> ParamMap:
    c = vision_config_from_hf(folder.config)
    p, d, heads = c["patch_size"], c["width"], c["heads"]
    prefix = folder.prefix_of("embeddings.patch_embeddings.projection.weight")
    emb = prefix + "embeddings."
    positions = folder.shape(emb + "position_embeddings")
    side = math.isqrt(positions[1] - 1)
    if positions[0] != 1 or side * side != positions[1] - 1:
        raise ValueError(f"{folder.path}: {emb}position_embeddings has shape {positions}, expected"
                         f" (1, 1 + S*S, {d})")
    grid = tuple(grid or (side, side))
    antialias = _vision_hf_config(folder.config).get("model_type") == "dinov2_with_registers"
    table = functools.partial(PositionTable, emb + "position_embeddings", side, d, grid,
                              antialias=antialias)
    m: ParamMap = {
        ("patch_embed", "kernel"): PatchConv(emb + "patch_embeddings.projection.weight", p, 3, d),
        ("patch_embed", "bias"): Tensor(emb + "patch_embeddings.projection.bias", (d,)),
        ("pos_embed",): table(part="patches"),
        ("cls_pos",): table(part="cls"),
        ("cls_token",): Reshaped(emb + "cls_token", (1, 1, d), (1, d)),
        ("final_norm", "scale"): Tensor(prefix + "layernorm.weight", (d,)),
        ("final_norm", "bias"): Tensor(prefix + "layernorm.bias", (d,)),
    }
    if c["registers"]:
        r = c["registers"]
        m[("registers",)] = Reshaped(emb + "register_tokens", (1, r, d), (r, d))
    hd = (heads, d // heads)
    for i in range(c["depth"]):
        hf, fj = f"{prefix}encoder.layer.{i}.", ("blocks", i)
        for norm in ("norm1", "norm2"):
            m[fj + (norm, "scale")] = Tensor(hf + norm + ".weight", (d,))
            m[fj + (norm, "bias")] = Tensor(hf + norm + ".bias", (d,))
        for name in ("query", "key", "value"):
            m[fj + ("attn", name, "kernel")] = Linear(hf + f"attention.attention.{name}.weight",
                                                      (d,), hd)
            m[fj + ("attn", name, "bias")] = SplitBias(hf + f"attention.attention.{name}.bias", hd)
        m[fj + ("attn", "out", "kernel")] = Linear(hf + "attention.output.dense.weight", hd, (d,))
        m[fj + ("attn", "out", "bias")] = Tensor(hf + "attention.output.dense.bias", (d,))
        for k in (1, 2):
            m[fj + (f"scale{k}", "scale")] = Tensor(hf + f"layer_scale{k}.lambda1", (d,))
        for fc in ("fc1", "fc2"):
            shape = ((d,), (c["mlp_dim"],)) if fc == "fc1" else ((c["mlp_dim"],), (d,))
            m[fj + ("mlp", fc, "kernel")] = Linear(hf + f"mlp.{fc}.weight", *shape)
            m[fj + ("mlp", fc, "bias")] = Tensor(hf + f"mlp.{fc}.bias", shape[1])
    return m


def llm_param_map(folder: SafetensorsFolder, vocab_size: int = 0) -> ParamMap:
    """frejax ``LLM`` param paths -> sources in a Qwen2 / Llama checkpoint.

    ``vocab_size`` above the checkpoint's: the rows of tokens the tokenizer added are zero.
    """
    c = llm_config_from_hf(folder.config)
    d, heads, kv = c["width"], c["heads"], c["kv_heads"]
    hd = c["head_dim"] or d // heads
    prefix = folder.prefix_of("embed_tokens.weight")
    m: ParamMap = {
        ("embedding",): Tensor(prefix + "embed_tokens.weight", (c["vocab_size"], d)),
        ("final_norm", "scale"): Tensor(prefix + "norm.weight", (d,)),
    }
    if not c["tie_embeddings"]:
        m[("lm_head", "kernel")] = Linear(folder.prefix_of("lm_head.weight") + "lm_head.weight",
                                          (d,), (c["vocab_size"],))
    if vocab_size > c["vocab_size"]:
        m[("embedding",)] = Extended(m[("embedding",)], 0, vocab_size)
        if ("lm_head", "kernel") in m:
            m[("lm_head", "kernel")] = Extended(m[("lm_head", "kernel")], 1, vocab_size)
    elif vocab_size and vocab_size < c["vocab_size"]:
        raise ValueError(f"{folder.path}: vocab_size {vocab_size} below the checkpoint's"
                         f" {c['vocab_size']}")
    for i in range(c["depth"]):
        hf, fj = f"{prefix}layers.{i}.", ("layers", i)
        m[fj + ("attn_norm", "scale")] = Tensor(hf + "input_layernorm.weight", (d,))
        m[fj + ("mlp_norm", "scale")] = Tensor(hf + "post_attention_layernorm.weight", (d,))
        for ours, theirs, n in (("query", "q_proj", heads), ("key", "k_proj", kv),
                                ("value", "v_proj", kv)):
            m[fj + ("attn", ours, "kernel")] = Linear(hf + f"self_attn.{theirs}.weight",
                                                      (d,), (n, hd))
            if c["qkv_bias"]:
                m[fj + ("attn", ours, "bias")] = SplitBias(hf + f"self_attn.{theirs}.bias",
                                                           (n, hd))
        m[fj + ("attn", "out", "kernel")] = Linear(hf + "self_attn.o_proj.weight", (heads, hd), (d,))
        for ours in ("gate", "up"):
            m[fj + ("mlp", ours, "kernel")] = Linear(hf + f"mlp.{ours}_proj.weight",
                                                     (d,), (c["mlp_dim"],))
        m[fj + ("mlp", "down", "kernel")] = Linear(hf + "mlp.down_proj.weight",
                                                   (c["mlp_dim"],), (d,))
    return m


def projector_param_map(folder: SafetensorsFolder) -> ParamMap:
    """frejax ``Projector`` param paths -> a LLaVA-OneVision ``multi_modal_projector`` and its
    ``image_newline`` (the video newline)."""
    config = folder.config
    if not is_llava(config):
        raise ValueError(f"{folder.path}: model_type {config.get('model_type')!r} has no projector;"
                         " a LLaVA-OneVision folder ('llava_onevision') has")
    act = config.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"llava config: projector_hidden_act {act!r}; the projector implements"
                         " 'gelu'")
    if not config.get("multimodal_projector_bias", True):
        raise ValueError("llava config: multimodal_projector_bias false is not supported")
    vision, llm = vision_config_from_hf(config)["width"], llm_config_from_hf(config)["width"]
    prefix = folder.prefix_of("multi_modal_projector.linear_1.weight") + "multi_modal_projector."
    return {
        ("fc1", "kernel"): Linear(prefix + "linear_1.weight", (vision,), (llm,)),
        ("fc1", "bias"): Tensor(prefix + "linear_1.bias", (llm,)),
        ("fc2", "kernel"): Linear(prefix + "linear_2.weight", (llm,), (llm,)),
        ("fc2", "bias"): Tensor(prefix + "linear_2.bias", (llm,)),
        ("newline",): Tensor(folder.prefix_of("image_newline") + "image_newline", (llm,)),
    }


def llava_model_config(config: dict) -> dict:
    """A LLaVA-OneVision ``config.json`` -> ``model`` keys: tower, projector (projector first,
    2x2 bilinear pooling, the newline) and LLM, as ``transformers`` runs videos."""
    if not is_llava(config):
        raise ValueError(f"model_type {config.get('model_type')!r}; expected 'llava_onevision'")
    return dict(vision=vision_config_from_hf(config), llm=llm_config_from_hf(config),
                projector=dict(hidden=0, order="project_then_compress", pool=2), newline=True)


# ----------------------------------------------------------------------------
# Placing weights into sharded params.
# ----------------------------------------------------------------------------


def _get(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Any, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _paths(tree: Any, prefix: Path = ()) -> list[Path]:
    if isinstance(tree, Mapping):
        return [p for k, v in tree.items() for p in _paths(v, prefix + (k,))]
    return [prefix]


def _is_stacked(params: Any, container: Any) -> bool:
    """Whether ``params[container]`` holds stacked layers (named children, not 0, 1, ...)."""
    layers = params.get(container) if isinstance(params, Mapping) else None
    return isinstance(layers, Mapping) and not any(isinstance(k, int) for k in layers)


def stack_param_map(param_map: ParamMap, params: Any) -> ParamMap:
    """Per-layer sources ``(container, i, ...)`` -> one ``Stacked`` source per param
    wherever ``params`` stacks that container's layers; other entries unchanged."""
    out: ParamMap = {}
    groups: dict[Path, dict[int, Source]] = {}
    for path, source in param_map.items():
        if len(path) > 2 and isinstance(path[1], int) and _is_stacked(params, path[0]):
            groups.setdefault((path[0],) + tuple(path[2:]), {})[path[1]] = source
        else:
            out[path] = source
    for path, by_layer in groups.items():
        out[path] = Stacked(tuple(by_layer[i] for i in range(len(by_layer))))
    return out


def load_params(folder: SafetensorsFolder, param_map: ParamMap, params: Any,
                where: str) -> Any:
    """Replaces the leaves of ``params`` (a pure dict, the module's subtree) with checkpoint tensors.

    Every leaf keeps its shape, dtype and sharding; each addressable shard is
    read from disk by its own callback. ``where`` names the subtree in errors.
    Returns a new dict; a leaf the checkpoint does not provide is an error.
    Stacked (scanned) layers are read layer by layer into their slice.
    """
    param_map = stack_param_map(param_map, params)
    # LoRA adapters (``lora_a`` / ``lora_b``) are new: they keep their init.
    missing = sorted(p for p in set(map(tuple, _paths(params))) - set(param_map)
                     if not str(p[-1]).startswith("lora_"))
    if missing:
        raise ValueError(f"{folder.path}: no checkpoint source for {where} params {missing[:5]}")
    out = jax.tree.map(lambda x: x, params)
    for path, source in param_map.items():
        target = _get(params, path)
        parts = source.layers if isinstance(source, Stacked) else (source,)
        bad = next((p for p in parts if folder.shape(p.name) != tuple(p.hf_shape())), None)
        name = (bad or parts[0]).name
        got = folder.shape(name)
        if bad is not None or tuple(target.shape) != tuple(source.shape()):
            raise ValueError(
                f"{folder.path}: tensor {name} has shape {got}, expected {source.hf_shape()}"
                f" for {where}.{'.'.join(map(str, path))} of shape {tuple(target.shape)};"
                f" does config.json match the model config?")
        sharding = getattr(target, "sharding", None)
        if sharding is None:  # an unplaced abstract leaf: the default device
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        dtype = target.dtype
        read: Callable[[Index], np.ndarray] = (
            lambda index, s=source, t=dtype: np.asarray(s.read(folder, index), dtype=t))
        _set(out, path, jax.make_array_from_callback(tuple(target.shape), sharding, read))
    return out


def check_config(expected: dict, config: Any, key: str, folder: str) -> None:
    """Fails naming ``config.<key>.<field>`` where the config disagrees with ``config.json``."""
    for field, want in expected.items():
        if field == "rope_scaling":
            have = {k: config.rope_scaling[k] for k in want} if "rope_scaling" in config else None
            ok = have == want or (want["type"] == "none" and (have or {}).get("type") == "none")
        else:
            have = config.get(field)
            ok = (math.isclose(have, want, rel_tol=1e-9) if isinstance(want, float)
                  else have == want)
        if not ok:
            raise ValueError(
                f"config.{key}.{field} ({have!r}) does not match {folder}/config.json ({want!r})")


def load_pretrained(config: Any, params: dict) -> dict:
    """Loads ``model.{vision,llm,projector}.pretrained`` folders into ``params``.

    ``params`` is the pure-dict ``VideoMLLM`` params (``encoder``, ``llm``, ...),
    sharded or not; an empty path leaves that part as it is.
    """
    params = dict(params)
    vision_path = config.model.vision.get("pretrained", "")
    if vision_path:
        folder = SafetensorsFolder(vision_path)
        check_config(vision_config_from_hf(folder.config), config.model.vision, "model.vision",
                     vision_path)
        side = config.model.vision.image_size // config.model.vision.patch_size
        params["encoder"] = load_params(folder, vision_param_map(folder, (side, side)),
                                        params["encoder"], "encoder")
    llm_path = config.model.llm.get("pretrained", "")
    if llm_path:
        folder = SafetensorsFolder(llm_path)
        check_config(llm_config_from_hf(folder.config), config.model.llm, "model.llm", llm_path)
        vocab = int(params["llm"]["embedding"].shape[0])  # grown when the tokenizer adds tokens
        params["llm"] = load_params(folder, llm_param_map(folder, vocab), params["llm"], "llm")
    projector_path = config.model.projector.get("pretrained", "")
    if projector_path:
        folder = SafetensorsFolder(projector_path)
        params["projector"] = load_params(folder, projector_param_map(folder),
                                          params["projector"], "projector")
    return params


def load_vision(folder: str, image_size: int) -> Any:
    """A float32 ``ViT`` holding the weights of a SigLIP / DINOv2 folder, at ``image_size`` px.

    For tools that need the encoder alone (``frejax.analyze``, the ONNX check); runs
    take theirs through ``load_pretrained``.
    """
    import ml_collections  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from frejax.models.vit import ViT  # noqa: PLC0415

    hf = SafetensorsFolder(folder)
    cfg = ml_collections.ConfigDict(dict(vision_config_from_hf(hf.config),
                                         image_size=image_size, remat="none", scan_layers=True,
                                         attention="auto", encode_chunk=0))
    model = ViT(cfg, rngs=nnx.Rngs(0))
    side = image_size // cfg.patch_size
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, load_params(hf, vision_param_map(hf, (side, side)),
                                                nnx.to_pure_dict(state), "encoder"))
    nnx.update(model, state)
    return model
