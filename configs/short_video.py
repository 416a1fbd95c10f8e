"""Short clips (16 frames) of the embedded benchmark, Fre-Res at 8x fewer visual tokens.

The main job's experiment (configs/long_video.py) at 16 frames per clip: 32
visual tokens, which buy one anchor frame and two residual time windows.

    python -m frejax.main --config=configs/short_video.py
    python -m frejax.main --config=configs/short_video.py:smoke
    python -m frejax.main --config=configs/short_video.py:ratio=16,compressor=uniform_frames

Arg keys: as configs/long_video.py.
"""

from configs.long_video import experiment


def get_config(arg=None):
    return experiment(arg, name="short_video", frames=16)
