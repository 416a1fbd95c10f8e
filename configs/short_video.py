"""Short clips (16 frames) of the embedded benchmark, 8x fewer visual tokens.

    python -m frejax.main --config=configs/short_video.py
    python -m frejax.main --config=configs/short_video.py:smoke
    python -m frejax.main --config=configs/short_video.py:ratio=16,compressor=uniform_frames

Arg keys: scale=cpu|pod, smoke, ratio, compressor, frames.
"""

from configs import common


def get_config(arg=None):
    return common.video_config(arg, name="short_video", frames=16, ratio=8.0)
