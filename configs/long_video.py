"""Long clips (32 frames on CPU) of the embedded benchmark, 8x fewer visual tokens: the main job.

    python -m frejax.main --config=configs/long_video.py
    python -m frejax.main --config=configs/long_video.py:smoke
    python -m frejax.main --config=configs/long_video.py:frames=128,ratio=16
    python -m frejax.main --config=configs/long_video.py:scale=pod   # a pretraining-scale run

Arg keys: scale=cpu|pod, smoke, ratio, compressor, frames.
"""

from configs import common


def get_config(arg=None):
    return common.video_config(arg, name="long_video", frames=32, ratio=8.0)
