"""Natural-video QA on frozen DINOv2-S latents: the model of ``python -m frejax.studies.natural_qa``.

    python -m frejax.studies.natural_qa --part=cache       # builds the latent cache, prints it
    python -m frejax.main --config=configs/natural_qa.py:cache=<that folder> --workdir=w/ceiling

The protocol (frejax/studies/natural_qa.py) trains this model at full tokens (the ceiling)
through ``frejax.main``'s loop, then evaluates and adapts every compressor on it; it sets
``compressor.*``, ``init.*``, ``optim.freeze``, ``seed`` and ``train.num_steps`` per run
from the keys below. Examples come from the ``latent_cache`` data source
(data_pipelines/latent_source.py) in ``data.root``.

Arg keys: scale=cpu|accelerator, smoke (a seconds-long variant for tests), cache=<folder>
(the latent cache; ``--config.data.root`` sets the same).
"""

from configs import common
from frejax import config_lib


def get_config(arg=None):
    args = common.parse_arg(arg, scale="cpu", smoke=False, cache="")
    if args.scale not in ("cpu", "accelerator"):
        raise ValueError(f"config arg scale={args.scale!r}: choose cpu or accelerator")
    c = config_lib.base_config()
    c.name = "natural_qa"
    c.seed = 0

    # 16 frames of 112 px per clip; DINOv2-S/14 gives 8 x 8 latents of width 384 per
    # frame, pooled to 4 x 4 as LLaVA-OneVision pools video frames: 256 tokens in full.
    c.data.update(name="latent_cache", root=args.cache, num_frames=16, image_size=112)
    c.model.vision.update(input="latents", latent_grid=(4, 4), image_size=112, patch_size=14,
                          width=384, heads=6)
    # A Llama-layout LLM trained from scratch on the benchmark's words (the main job's).
    c.model.llm.update(width=128, depth=2, heads=4, kv_heads=2, mlp_dim=256, vocab_size=0)
    c.compressor = config_lib.compressor_config("full", ratio=0.0)

    # The ceiling's training (adaptation runs take the protocol's fewer steps).
    c.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.05, clip_norm=1.0)
    c.train.update(batch_size=32, num_steps=1500, progress_bar=False)
    c.eval.update(batch_size=100, max_new_tokens=2)

    if args.scale == "accelerator":
        # Longer clips at DINOv2's own resolution and a larger LLM: the same protocol.
        c.data.update(num_frames=32, image_size=224)
        c.model.vision.update(latent_grid=(8, 8), image_size=224)
        c.model.llm.update(width=512, depth=4, heads=8, kv_heads=4, mlp_dim=1024)
        c.train.update(num_steps=4000, batch_size=64)
    if args.smoke:
        c.train.update(num_steps=3, batch_size=8, log_every=1)
        c.optim.warmup_steps = 1
        c.eval.batch_size = 8
    return c
