"""The main job: long clips of the embedded benchmark, Fre-Res at 8x fewer visual tokens.

    python -m frejax.main --config=configs/long_video.py
    python -m frejax.main --config=configs/long_video.py:smoke
    python -m frejax.main --config=configs/long_video.py:frames=128,ratio=16
    python -m frejax.main --config=configs/long_video.py:compressor=temporal_merge
    python -m frejax.main --config=configs/long_video.py:scale=pod   # a pretraining-scale run

Arg keys: scale=cpu|pod, smoke, ratio, compressor, frames, and for pretrained
starts vision, llm, stage, lora (configs/common.py). Every key and its meaning:
frejax/config_lib.py.
"""

from configs import common
from frejax import config_lib


def get_config(arg=None):
    return experiment(arg, name="long_video", frames=32)


def experiment(arg, *, name: str, frames: int):
    """The embedded-benchmark experiment at ``frames`` frames per clip (the arg may change it)."""
    args = common.parse_video_arg(arg, frames=frames, ratio=8.0)
    c = config_lib.base_config()
    c.name = name
    c.seed = 0

    # Data: the embedded benchmark (data_pipelines/video_qa_synthetic.py), clips of 32
    # frames (the main job; 16 in short_video.py) of 32x32 px, five question families;
    # motion direction and temporal order get twice the training clips of the others,
    # and each clip a follow-up question.
    c.data.update(name="synthetic_video_qa", num_frames=args.frames, image_size=32)
    c.data.synthetic.update(train_family_weights=(1, 1, 2, 2, 1), followups=True,
                            background_noise="frame")

    # Model, trained end to end from scratch: an 8x8-patch ViT (16 tokens per frame)
    # of width 64 x 2 layers, a linear projector, a Llama-layout LLM of width 128 x 2
    # layers (4 query heads over 2 key/value heads) with the tokenizer's vocabulary.
    c.model.vision.update(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=128)
    c.model.llm.update(width=128, depth=2, heads=4, kv_heads=2, mlp_dim=256, vocab_size=0)

    # Compressor: Fre-Res at T*N / 8 visual tokens (64 for 32 frames), its options at
    # the defaults measured on natural video (docs/natural_video.md): two segment-mean
    # anchors of 16 tokens and, per 16-frame segment and video, the 16 highest-energy
    # temporal DCT coefficients of the deviations from its anchor, each with its
    # coefficient and position embedded. The LLM reads the absorbed anchors and those
    # tokens (output=dual).
    c.compressor = config_lib.compressor_config(args.compressor, ratio=args.ratio)

    # Training: AdamW with warm-up and cosine decay, 1,400 steps of 32 clips.
    c.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.05, clip_norm=1.0)
    c.train.update(batch_size=32, num_steps=1400, checkpoint_every=250)
    # Evaluation: greedy answers to 500 held-out clips (100 per family), exact match.
    c.eval.update(batch_size=50, num_examples=500, max_new_tokens=2)

    common.apply_variants(c, args)
    return c
