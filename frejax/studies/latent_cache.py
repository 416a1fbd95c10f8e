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

from data_pipelines import dense_video_qa as dense
from data_pipelines import natural_video_qa as qa
from frejax.nn.grid import adaptive_pool_matrix, bilinear_matrix

_VERSION = 3  # bump when the way latents are computed or stored changes
_ENCODE_FRAMES = 256  # touched frames gathered over examples per encoder call


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


def pool_latents(latents: np.ndarray, grid: tuple[int, int], pool: int,
                 mode: str = "bilinear") -> np.ndarray:
    """``(F, h*w, D)`` -> ``(F, ceil(h/pool) * ceil(w/pool), D)``: ``bilinear`` resizing
    (LLaVA-OneVision's video pooling) or ``area`` averaging (every latent counts; bilinear
    resizing by 4 or more skips rows and columns)."""
    if pool == 1:
        return latents
    if mode not in ("bilinear", "area"):
        raise ValueError(f"pool_latents: mode must be bilinear or area, got {mode!r}")
    matrix = bilinear_matrix if mode == "bilinear" else adaptive_pool_matrix
    h, w = grid
    h2, w2 = -(-h // pool), -(-w // pool)
    x = latents.reshape(latents.shape[0], h, w, -1).astype(np.float32)
    x = np.einsum("ph,fhwd->fpwd", matrix(h, h2), x)
    x = np.einsum("qw,fpwd->fpqd", matrix(w, w2), x)
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


# ----------------------------------------------------------------------------- dense video


@dataclasses.dataclass(frozen=True)
class DenseSpec:
    """What a dense-video cache holds (``data_pipelines.dense_video_qa``); every field
    enters its key."""

    frames: int = 128
    size: int = 112
    pool: int = 4
    pooling: str = "area"
    probe_side: int = 0        # pixels; 0: size // 4
    min_fps: float = 15.0
    camera_clips: int = 2
    camera_frames: int = 256
    select_fraction: float = 0.2
    train_per_family: int = 200
    select_per_family: int = 50
    test_per_family: int = 100
    seed: int = 0
    families: tuple[str, ...] = dense.FAMILIES


def build_dense(sources: "dense.Sources", root: str, encoder: Any, spec: DenseSpec = DenseSpec(),
                log=print, progress=None) -> str:
    """Encodes the dense-video benchmark into ``<root>/<key>`` (once); returns the folder.

    Every frame of every clip is encoded once; an example's window is a slice of its
    clip's latents, and only the frames its squares touch are rendered and encoded
    again. Splits are ``train``, ``select`` and ``test`` (``<split>_latents.npy`` of
    ``(examples, frames, tokens, width)`` float16), each written whole or not at all,
    so an interrupted build goes on from the first unfinished split.
    """
    stamps = [_file_stamp(p) for group in dataclasses.astuple(sources) for p in group]
    key = hashlib.sha1(json.dumps(dict(version=_VERSION, kind="dense",
                                       spec=dataclasses.asdict(spec), encoder=encoder.id,
                                       sources=stamps), sort_keys=True).encode()).hexdigest()[:16]
    folder = os.path.join(root, key)
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        return folder
    os.makedirs(folder, exist_ok=True)
    grid, side = tuple(encoder.grid), spec.probe_side or spec.size // 4
    clips, skipped = dense.load_clips(
        sources, size=spec.size, frames=spec.frames, min_fps=spec.min_fps,
        camera_clips=spec.camera_clips, camera_frames=spec.camera_frames,
        select_fraction=spec.select_fraction, seed=spec.seed, log=log)
    counts = dict(train=spec.train_per_family, select=spec.select_per_family,
                  test=spec.test_per_family)
    planned = dense.plan_splits(clips, counts, frames=spec.frames, size=spec.size, side=side,
                                seed=spec.seed, families=spec.families)

    def encode(frames: np.ndarray) -> np.ndarray:
        return pool_latents(encoder(frames), grid, spec.pool, spec.pooling).astype(np.float16)

    width = 0
    for split in dense.SPLITS:
        path = os.path.join(folder, f"{split}_latents.npy")
        examples = planned[split]
        if not os.path.isfile(path):
            clip_latents = [encode(c.frames) for c in clips[split]]
            width = clip_latents[0].shape[-1]
            tmp = os.path.join(folder, f"{split}_latents.tmp.npy")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(
                len(examples), spec.frames) + clip_latents[0].shape[1:])
            touched, pending = 0, []          # (example, its touched frames, their pixels)

            def flush():
                # Many examples' touched frames in one call: the encoder runs fixed
                # batches, and one example's few frames would leave most of one empty.
                if pending:
                    latents = encode(np.concatenate([px for _, _, px in pending]))
                    k = 0
                    for i, frames, px in pending:
                        out[i, frames] = latents[k:k + len(px)]
                        k += len(px)
                    pending.clear()

            for i, ex in enumerate(examples):
                out[i] = clip_latents[ex.clip][ex.start:ex.start + spec.frames]
                frames = list(ex.frames_touched())
                if frames:
                    window = dense.render(ex, clips[split][ex.clip].frames, spec.frames)
                    pending.append((i, frames, window[frames]))
                    touched += len(frames)
                    if sum(len(px) for _, _, px in pending) >= _ENCODE_FRAMES:
                        flush()
                if progress is not None:
                    progress(split, i + 1, len(examples))
            flush()
            out.flush()
            del out
            with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
                for ex in examples:
                    text, options = dense.question(ex)
                    f.write(json.dumps(dict(ex.to_json(), question=text, options=options,
                                            source=clips[split][ex.clip].source,
                                            clip=clips[split][ex.clip].name)) + "\n")
            os.replace(tmp, path)
            log(f"latent_cache: {split}: {len(examples)} examples from {len(clips[split])} clips,"
                f" {sum(len(c.frames) for c in clips[split])} clip frames and {touched} probe"
                " frames encoded")
        width = width or int(np.load(path, mmap_mode="r").shape[-1])
    sources_table = dense.source_table(clips)
    manifest = dict(
        kind="dense", spec=dict(dataclasses.asdict(spec), probe_side=side), encoder=encoder.id,
        grid=list(pooled_grid(grid, spec.pool)), width=int(width), sources=sources_table,
        skipped=skipped, clips=[],
        splits={s: dict(examples=len(planned[s]),
                        videos=sorted({c.source for c in clips[s]})) for s in dense.SPLITS})
    with open(os.path.join(folder, "manifest.tmp.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(os.path.join(folder, "manifest.tmp.json"), os.path.join(folder, "manifest.json"))
    return folder
