"""A pretrained LLaVA-OneVision / LLaVA-Video model with a training-free video-token compressor.

    python -m frejax.inference.benchmark_eval \\
        --config=configs/llava_onevision.py:llava=/models/llava-onevision-qwen2-7b-ov-hf,compressor=fre_res_frames,ratio=10 \\
        --benchmark=videomme --data=/data/Video-MME

Arg keys: llava (the Hugging Face ``llava_onevision`` folder, required), compressor, ratio,
frames (32, lmms-eval's default for LLaVA-OneVision). The architecture, weights,
tokenizer and chat template come from the folder; frames are sampled as lmms-eval does
(``np.linspace`` over the clip) and resized to the tower's square input.
"""

from configs import common
from frejax import config_lib


def get_config(arg=None):
    args = common.parse_arg(arg, llava="", compressor="full", ratio=1.0, frames=32)
    if not args.llava:
        raise ValueError("config arg: llava=<folder> is required (a llava_onevision folder)")
    c = config_lib.base_config()
    c.name = "llava_onevision"
    c.seed = 0
    c.data.num_frames = args.frames
    c.compressor = config_lib.compressor_config(args.compressor, ratio=args.ratio)
    common.apply_llava(c, args.llava)
    # Nothing trains: every group is pretrained or parameter-free.
    c.optim.freeze = "encoder,projector,llm,compressor"
    c.eval.update(batch_size=8, max_new_tokens=16)
    return c
