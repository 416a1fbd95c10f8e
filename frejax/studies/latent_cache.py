"""Frozen-encoder latents of the natural-video QA benchmark, computed once and cached.

The benchmark (``data_pipelines.natural_video_qa``) is planned, not rendered to files:
every example is a list of source frames plus an optional composited probe. A
per-frame encoder (DINOv2 has no temporal mixing) makes the plan cheap to encode:

* every frame of every footage clip is encoded once; the temporal families
  (direction, speed, freeze, order) are gathers of those latents;
* a probe example's frames that show the probe are rendered and encoded; the rest
  are gathers as well.

Latents are pooled per frame to ``ceil(h / pool) x ceil(w / pool)`` with
LLaVA-OneVision's bilinear video pooling (``pool=2`` halves each side) and stored as
float16. ``build`` writes one folder per cache key (the encoder, the footage files
and every plan setting); a finished folder is reused as it is.

The folder's layout, and its reading as the ``latent_cache`` data source, are in
``data_pipelines.latent_source``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from data_pipelines import natural_video_qa as qa
from frejax.nn.grid import bilinear_matrix

_VERSION = 2  # bump when the way latents are computed or stored changes


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """What a cache holds; every field enters its key."""

    frames: int = 16
    size: int = 112
    pool: int = 2
    probe_side: int = 0        # pixels; 0: natural_video_qa's default (size // 12)
    train_per_family: int = 150
    eval_per_family: int = 50
    eval_videos: int = 1
    max_source_frames: int = 4000
    seed: int = 0
    families: tuple[str, ...] = qa.FAMILIES




def _file_stamp(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.basename(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_key(spec: CacheSpec, footage: list[str], encoder_id: str) -> str:
    text = json.dumps(dict(version=_VERSION, spec=dataclasses.asdict(spec), encoder=encoder_id,
                           footage=[_file_stamp(p) for p in footage]), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def pool_latents(latents: np.ndarray, grid: tuple[int, int], pool: int) -> np.ndarray:
    """``(F, h*w, D)`` -> ``(F, ceil(h/pool) * ceil(w/pool), D)`` by bilinear resizing."""
    if pool == 1:
        return latents

    h, w = grid
    h2, w2 = -(-h // pool), -(-w // pool)
    x = latents.reshape(latents.shape[0], h, w, -1).astype(np.float32)
    x = np.einsum("ph,fhwd->fpwd", bilinear_matrix(h, h2), x)
    x = np.einsum("qw,fpwd->fpqd", bilinear_matrix(w, w2), x)
    return x.reshape(latents.shape[0], h2 * w2, -1)


def pooled_grid(grid: tuple[int, int], pool: int) -> tuple[int, int]:
    return (-(-grid[0] // pool), -(-grid[1] // pool))


def _probe_frames(example: qa.Example) -> tuple[int, ...]:
    """Output frames a probe changes (empty for the temporal families)."""
    if not example.probe:
        return ()
    return tuple(example.probe[5])


def build(footage: list[str], root: str, encoder: Any, spec: CacheSpec = CacheSpec(),
          log=print) -> str:
    """Encodes the planned benchmark into ``<root>/<key>`` (once); returns that folder.

    ``encoder(frames (n, S, S, 3) uint8) -> (n, h*w, D)`` with ``.id`` and ``.grid``
    (``frejax.studies.frozen_encoder.Encoder``).
    """
    footage = sorted(footage, key=os.path.basename)
    if len(footage) <= spec.eval_videos or spec.eval_videos < 1:
        raise ValueError(f"latent_cache: {len(footage)} videos cannot hold out"
                         f" eval_videos={spec.eval_videos} and keep one for training")
    folder = os.path.join(root, cache_key(spec, footage, encoder.id))
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        return folder
    os.makedirs(folder, exist_ok=True)
    grid = tuple(encoder.grid)
    decoded = [qa.decode_footage(p, spec.size, spec.max_source_frames) for p in footage]
    source_latents = []
    for i, (path, frames) in enumerate(zip(footage, decoded)):
        source_latents.append(pool_latents(encoder(frames), grid, spec.pool).astype(np.float16))
        np.save(os.path.join(folder, f"footage_{i}.npy"), source_latents[-1])
        log(f"latent_cache: encoded {len(frames)} frames of {os.path.basename(path)}")
    lengths = [len(d) for d in decoded]
    first_eval = len(footage) - spec.eval_videos
    split_videos = {"train": list(range(first_eval)),
                    "eval": list(range(first_eval, len(footage)))}
    rng = np.random.default_rng(spec.seed)
    counts = {}
    for split, per_family in (("train", spec.train_per_family), ("eval", spec.eval_per_family)):
        videos = split_videos[split]
        planned = []
        for family in spec.families:
            local = qa.plan([lengths[v] for v in videos], family, per_family, spec.frames,
                            spec.size, rng, probe_side=spec.probe_side)
            planned += [dataclasses.replace(ex, video=videos[ex.video]) for ex in local]
        latents = np.stack([source_latents[ex.video][np.asarray(ex.frames)] for ex in planned])
        # Probe frames: render and encode them (batched across examples).
        jobs = [(i, k) for i, ex in enumerate(planned) for k in _probe_frames(ex)]
        rendered = {}
        for i, ex in enumerate(planned):
            if ex.probe:
                rendered[i] = qa.render(ex, decoded[ex.video])
        chunk = 512
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            frames = np.stack([rendered[i][k] for i, k in part])
            encoded = pool_latents(encoder(frames), grid, spec.pool).astype(np.float16)
            for (i, k), z in zip(part, encoded):
                latents[i, k] = z
        log(f"latent_cache: {split}: {len(planned)} examples, {len(jobs)} probe frames encoded")
        np.save(os.path.join(folder, f"{split}_latents.tmp.npy"), latents)
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            for ex in planned:
                text, options = qa.question(ex)
                f.write(json.dumps(dict(
                    family=ex.family, question=text, options=options, answer="ABCD"[ex.answer],
                    source=os.path.basename(footage[ex.video]), frames=list(ex.frames),
                    probe=list(ex.probe[:4]) + [ex.probe[4], list(ex.probe[5])]
                    if ex.probe else [])) + "\n")
        os.replace(os.path.join(folder, f"{split}_latents.tmp.npy"),
                   os.path.join(folder, f"{split}_latents.npy"))
        counts[split] = dict(examples=len(planned),
                             videos=[os.path.basename(footage[v]) for v in videos])
    manifest = dict(spec=dataclasses.asdict(spec), encoder=encoder.id,
                    clips=[os.path.basename(p) for p in footage],
                    footage={os.path.basename(p): n for p, n in zip(footage, lengths)},
                    grid=list(pooled_grid(grid, spec.pool)), width=int(source_latents[0].shape[-1]),
                    splits=counts)
    with open(os.path.join(folder, "manifest.tmp.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(os.path.join(folder, "manifest.tmp.json"), os.path.join(folder, "manifest.json"))
    return folder
