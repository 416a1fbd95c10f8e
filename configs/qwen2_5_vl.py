"""A pretrained Qwen2.5-VL with a video-token compressor after its patch merger.

    python -m frejax.inference.benchmark_eval \\
        --config=configs/qwen2_5_vl.py:qwen=/models/Qwen2.5-VL-7B-Instruct,compressor=evs,ratio=10 \\
        --benchmark=videomme --data=/data/Video-MME
    python -m frejax.main --workdir=/runs/qwen_lora \\
        --config=configs/qwen2_5_vl.py:qwen=/models/Qwen2.5-VL-7B-Instruct,data=/data/my_videos,lora=16

    python -m frejax.training.aot --config=configs/qwen2_5_vl.py:shape=7b,compressor=fre_res_frames,ratio=10 \
        --topology=v5e:8x8

Arg keys: qwen (the Hugging Face ``qwen2_5_vl`` folder, required unless shape=7b: the
7B model's shape with random weights, for compile checks), compressor, ratio,
frames (32, lmms-eval's ``max_num_frames`` for Qwen2.5-VL), size (the square frame side
in pixels, a multiple of 28), data (a ``video_folder`` root to fine-tune on, with its
``train.jsonl`` and ``eval.jsonl``), lora (the
LoRA rank; 0 fine-tunes the whole LLM), steps. The tower, merger, LLM, tokenizer and chat
template come from the folder. Every compressor runs on the merged tokens, and each
token's multimodal-RoPE position comes from its place (``Compressor.places``).
"""

import os

from configs import common
from frejax import config_lib


def get_config(arg=None):
    args = common.parse_arg(arg, qwen="", compressor="full", ratio=1.0, frames=32, size=448,
                            data="", lora=0, steps=1000, shape="")
    if not args.qwen and args.shape != "7b":
        raise ValueError("config arg: qwen=<folder> is required (a qwen2_5_vl folder), or"
                         " shape=7b (Qwen2.5-VL-7B's shape with random weights, to compile)")
    c = config_lib.base_config()
    c.name = "qwen2_5_vl"
    c.seed = 0
    c.data.update(num_frames=args.frames, image_size=args.size)
    c.compressor = config_lib.compressor_config(args.compressor, ratio=args.ratio)
    common.apply_qwen_vl(c, args.qwen, None if args.qwen else common.QWEN2_5_VL_7B)
    if args.shape:
        # A 7B-shaped fine-tuning step (python -m frejax.training.aot): the tower frozen
        # (no backward through it), the LLM's layers rematerialised, on the embedded
        # benchmark's batches.
        c.model.llm.update(remat="full", vocab_size=152064)
        c.train.update(batch_size=64, num_steps=args.steps)
        c.optim.update(freeze="encoder", warmup_steps=min(20, args.steps // 10))
        c.mesh.shape = (-1, 16, 4)
        return c
    if args.data:
        # Fine-tuning: the tower (with its merger) stays frozen; the LLM trains whole, or
        # through LoRA adapters at a tenth of the learning rate's reach.
        c.data.update(name="video_folder", root=args.data,
                      train_annotations=os.path.join(args.data, "train.jsonl"),
                      eval_annotations=os.path.join(args.data, "eval.jsonl"))
        c.optim.update(learning_rate=1e-5 if not args.lora else 1e-4,
                       warmup_steps=min(20, args.steps // 10))
        c.optim.freeze = "encoder,llm" if args.lora else "encoder"
        c.model.llm.lora.rank = args.lora
        c.train.update(batch_size=8, num_steps=args.steps)
    else:
        # Evaluation: every group is pretrained or parameter-free.
        c.optim.freeze = "encoder,projector,llm,compressor"
    c.eval.update(batch_size=8, max_new_tokens=16)
    return c
