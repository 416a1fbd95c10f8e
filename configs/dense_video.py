"""Dense-video QA on frozen DINOv2-S latents: the model of ``python -m frejax.studies.dense_video``.

    python -m frejax.studies.dense_video --part=cache      # builds the latent cache, prints it
    python -m frejax.main --config=configs/dense_video.py:cache=<that folder> --workdir=w/ceiling

Every frame of a 128-frame window at the footage's own rate (``data_pipelines.dense_video_qa``)
as frozen DINOv2-S/14 latents. The study (frejax/studies/dense_video.py) trains this model
at full tokens (the ceiling), then every method at a sparse model's budget, and sets
``compressor.*``, ``init.*``, ``optim.freeze``, ``seed``, ``train.num_steps`` and
``data.latents.eval_split`` per run.

Arg keys: smoke (a seconds-long variant for tests), cache=<folder> (the latent cache;
``--config.data.root`` sets the same).
"""

from configs import common
from frejax import config_lib


def get_config(arg=None):
    args = common.parse_arg(arg, smoke=False, cache="")
    c = config_lib.base_config()
    c.name = "dense_video"
    c.seed = 0

    # 128 frames of 112 px: DINOv2-S/14's 8 x 8 latents of width 384 per frame, averaged
    # to 2 x 2 (the densest geometry whose full-token model trains on 2 CPU cores:
    # 512 visual tokens). A sparse model's budget of 16 frames is 8x fewer tokens.
    c.data.update(name="latent_cache", root=args.cache, num_frames=128, image_size=112)
    c.data.latents.update(redraw=False, eval_split="test")
    c.model.vision.update(input="latents", latent_grid=(2, 2), image_size=112, patch_size=14,
                          width=384, heads=6)
    # A Llama-layout LLM trained from scratch on the benchmark's words, placing every
    # visual token by (frame, row, column) with Qwen3-VL's interleaved multimodal RoPE, as
    # the models the field runs do: a compressor's tokens then sit where it says
    # (Compressor.places), and where Fre-Res's residual-frequency tokens sit is a setting
    # the selection chooses. Interleaved, so rows and columns (two positions each) get
    # high frequencies, not the lowest. (Under 1D RoPE the ceiling ends where it does
    # here: docs/dense_video_rope1d.)
    c.model.llm.update(width=128, depth=2, heads=4, kv_heads=2, mlp_dim=256, vocab_size=0,
                       mrope_sections=(8, 4, 4), mrope_interleaved=True)
    c.compressor = config_lib.compressor_config("full", ratio=0.0)

    c.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.05, clip_norm=1.0)
    c.train.update(batch_size=32, num_steps=1500, progress_bar=False)
    # Every held-out example is scored (the study raises this to its splits' sizes).
    c.eval.update(batch_size=100, max_new_tokens=2, num_examples=1000)

    if args.smoke:
        c.train.update(num_steps=3, batch_size=8, log_every=1)
        c.optim.warmup_steps = 1
        c.eval.batch_size = 8
    return c
