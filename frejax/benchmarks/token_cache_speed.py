"""Times video Q&A with and without the compressed-token cache (``frejax.inference.predict``).

The claim checked: Fre-Res is query-agnostic, so a second question about the
same video reuses its compressed tokens and the LLM keys/values of the video
part of the prompt, and is answered at least 3x faster than the first (target
>= 3x). The first question pays for decoding the file (PyAV), the encoder, the
compressor and the whole prefill; a cached one only for the question's prefill
and decoding. Every program is compiled on a warm-up video first; times are
end-to-end wall-clock medians of ``VideoQA.ask`` over videos (each stage ends
in ``block_until_ready``); the per-stage means are printed below them.

    python -m frejax.benchmarks.token_cache_speed [--config configs/long_video.py] [--videos 5]
    python -m frejax.benchmarks.token_cache_speed --checkpoint workdirs/long_video   # trained weights

Without ``--checkpoint`` the model keeps its initial weights (timings do not
depend on them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import av
import jax

from data_pipelines import video_qa_synthetic
from frejax import config_lib
from frejax.inference import predict
from frejax.inference.engine import Engine
from frejax.training.run import FIT, Run


def write_clip(path: str, frames) -> None:
    with av.open(path, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        for frame in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def build_video_qa(config, checkpoint: str | None, cache_prefix: bool) -> predict.VideoQA:
    if checkpoint:
        return predict.load_video_qa(config, checkpoint, cache_prefix=cache_prefix)[0]
    run = Run(config, devices=FIT, shape=(1, *config.mesh.shape[1:]))
    with run:
        params = run.init_params()
    return predict.VideoQA(Engine(run, params), cache_prefix=cache_prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/long_video.py")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--videos", type=int, default=5)
    parser.add_argument("--questions", type=int, default=4, help="questions per video")
    args = parser.parse_args()
    config = config_lib.load(args.config)
    source = video_qa_synthetic.VideoQASource(
        num_frames=config.data.num_frames, image_size=config.data.image_size,
        num_examples=args.videos + 1, split="eval", seed=123)
    questions = [source[i]["question"] for i in range(args.questions)]
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for i in range(args.videos + 1):
            clips.append(os.path.join(tmp, f"clip{i}.mp4"))
            write_clip(clips[-1], source[i]["frames"])
        print(f"{args.config}: {config.data.num_frames} frames of {config.data.image_size}px,"
              f" compressor {config.compressor.name}, {args.videos} videos x"
              f" {args.questions} questions, device {jax.devices()[0].platform}")
        for cache_prefix in (True, False):
            qa = build_video_qa(config, args.checkpoint, cache_prefix)
            for q in questions:  # compile every program on the warm-up clip
                qa.ask(clips[0], q)
            first, later, stages_first, stages_later = [], [], [], []
            for clip in clips[1:]:
                for k, q in enumerate(questions):
                    start = time.perf_counter()  # the whole call, not only its stages
                    ans = qa.ask(clip, q)
                    (later if k else first).append(time.perf_counter() - start)
                    (stages_later if k else stages_first).append(ans.timings)
            f, l = statistics.median(first), statistics.median(later)
            what = "tokens + video KV" if cache_prefix else "tokens only"
            print(f"cache of {what}: first question {f * 1e3:.1f} ms, later questions"
                  f" {l * 1e3:.1f} ms: {f / l:.1f}x faster (target >= 3x);"
                  f" {qa.num_visual} visual tokens of {qa.full_visual}")
            for name, rows in (("first", stages_first), ("later", stages_later)):
                means = {s: statistics.mean(r.get(s, 0.0) for r in rows) for s in predict.STAGES}
                print(f"  {name:<5} " + ", ".join(f"{s} {v * 1e3:.1f}" for s, v in means.items()))


if __name__ == "__main__":
    main()
