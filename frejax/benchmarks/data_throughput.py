"""Input throughput: decoded clips/s per CPU core (video folder vs ArrayRecord
shards) and the share of train-step time the main job spends waiting for data.

Part 1 writes a folder of H.264 clips (``--clips`` of ``--clip-frames`` frames
at ``--width`` x ``--height``), converts it to ArrayRecord shards, and reads
every example once through each source in this one process: single-threaded
PyAV, so clips/s is per core. Both decode the same bytes; the difference is
the file access (one file per clip vs records in a few shards).

Part 2 runs the main job's train loop (``configs/long_video.py``: batch
iterator, jitted step, metrics read one step late) for ``--steps`` steps after
compilation and reports the time spent in ``next(batch)`` over the wall time
(target: under 5%).

    python -m frejax.benchmarks.data_throughput [--clips 48] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import av
import jax
import numpy as np

from configs import long_video
from data_pipelines import array_record_shards, video_decode, video_folder
from data_pipelines import datasets as data_lib
from frejax.training import train
from frejax.training.run import Run


def write_clips(root: str, n: int, frames: int, width: int, height: int) -> str:
    """``n`` H.264 clips of moving noise plus a JSONL file; returns the annotation path."""
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    base = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    with open(os.path.join(root, "train.jsonl"), "w") as ann:
        for i in range(n):
            name = f"clip{i:04d}.mp4"
            with av.open(os.path.join(root, name), "w", format="mp4") as c:
                s = c.add_stream("libx264", rate=24, options={"preset": "veryfast"})
                s.width, s.height, s.pix_fmt = width, height, "yuv420p"
                for t in range(frames):  # a panning crop: real motion for the codec
                    y, x = (3 * t + i) % height, (5 * t + 2 * i) % width
                    image = np.ascontiguousarray(base[y:y + height, x:x + width])
                    for p in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)
            ann.write(json.dumps(dict(video=name, question=f"what is clip {i}",
                                      answer="noise")) + "\n")
    return os.path.join(root, "train.jsonl")


def clips_per_second(source) -> float:
    source[0]  # open files / shards once
    start = time.perf_counter()
    for i in range(len(source)):
        example = source[i]
        assert example["input_error"] == 0
    return len(source) / (time.perf_counter() - start)


def decode_throughput(args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "videos")
        ann = write_clips(root, args.clips, args.clip_frames, args.width, args.height)
        shards = os.path.join(tmp, "shards")
        array_record_shards.convert(root, {"train": ann}, shards, num_shards=4, progress=False)
        sampling = video_decode.FrameSampling(args.num_frames, args.image_size)
        kw = dict(sampling=sampling, families=("all",))
        folder = video_folder.VideoFolderSource(root, ann, split="train", **kw)
        records = array_record_shards.ArrayRecordVideoSource(shards, "train", **kw)
        return {"video folder": clips_per_second(folder),
                "ArrayRecord": clips_per_second(records)}


def data_wait_fraction(args) -> tuple[float, float]:
    """(seconds waiting for batches, wall seconds) over ``args.steps`` steady-state steps."""
    config = long_video.get_config()
    with Run(config) as run:
        tok, setup, mesh = run.tokenizer, run.setup, run.mesh
        state = run.init()
        batch_sharding = run.batch_sharding
        step = train.make_train_step(setup, config, batch_sharding)
        it = data_lib.make_train_iterator(config, tok, mesh)
        pending = None
        for _ in range(3):  # compile and settle
            state, pending = step(state, data_lib.next_global_batch(it, batch_sharding))
        jax.block_until_ready(pending)
        waited, start = 0.0, time.perf_counter()
        for _ in range(args.steps):
            t = time.perf_counter()
            batch = data_lib.next_global_batch(it, batch_sharding)
            waited += time.perf_counter() - t
            state, metrics = step(state, batch)
            jax.device_get(pending)  # the trainer reads metrics one step late
            pending = metrics
        jax.block_until_ready(pending)
        return waited, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--clip-frames", type=int, default=96, help="frames per clip (4 s at 24 fps)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--num-frames", type=int, default=32, help="frames sampled per clip")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()

    rates = decode_throughput(args)
    print(f"Decode: {args.clips} H.264 clips of {args.clip_frames} frames at"
          f" {args.width}x{args.height} -> {args.num_frames} frames at"
          f" {args.image_size}x{args.image_size}, one process (one core)")
    for name, rate in rates.items():
        print(f"  {name:<13} {rate:7.1f} clips/s per core")
    if args.skip_train:
        return
    waited, wall = data_wait_fraction(args)
    print(f"Main job (configs/long_video.py), {args.steps} steps after compilation:")
    print(f"  {wall / args.steps * 1e3:.0f} ms per step, {waited / args.steps * 1e3:.1f} ms of it"
          f" waiting for data: {100 * waited / wall:.1f}% (target < 5%)")


if __name__ == "__main__":
    main()
