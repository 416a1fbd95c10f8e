"""The config schema of frejax: defaults for every key, and validation.

Config files (``configs/*.py``) start from ``base_config()`` and override what
differs; ``validate`` runs after flag parsing, so a typo or an impossible
combination fails before any compile, with a message naming the key.
"""

from __future__ import annotations

import importlib.util
import math
import os

import ml_collections

from data_pipelines import sources, video_decode
from frejax import compression, sharding
from frejax.nn import attention
from frejax.nn.layers import REMAT_POLICIES
from frejax.compression import options as options_lib

# Logical axis -> mesh axes. Parameters are sharded over fsdp on their embed
# (or vocab) axis and over tensor on heads/mlp; activations over data+fsdp on batch.
# The residual stream between layers (what a scan with remat keeps per layer for the
# backward pass) is split over tensor on its width too, as in Megatron's sequence
# parallelism and MaxText's activation_embed: the layer gathers it back for its
# matmuls, and its row-parallel outputs reduce-scatter instead of all-reduce.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("frames", None),
    ("tokens", None),
    ("length", None),
    ("embed", "fsdp"),
    ("activation_embed", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("coeffs", None),
    ("layers", None),
)


def compressor_config(name: str = "fre_res", ratio: float = 8.0) -> ml_collections.ConfigDict:
    """``name``, the budget, and one section of options per method, at their defaults.

    The sections (``compressor.fre_res``, ``compressor.spatial_pool``,
    ``compressor.temporal_merge``) come from the options each compressor
    declares (``Compressor.OPTIONS``); only the chosen method's section may
    differ from its defaults (``validate``).
    """
    c = dict(name=name,
             budget=0,      # visual tokens per video; 0: use ratio
             ratio=ratio)   # T*N / budget; 0 with budget 0: full tokens
    for section, schema in compression.sections().items():
        c[section] = options_lib.defaults(schema)
    return ml_collections.ConfigDict(c)


def base_config() -> ml_collections.ConfigDict:
    """The embedded-benchmark run on one CPU host; files override what differs."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(
        name="synthetic_video_qa",  # data_pipelines.sources: synthetic_video_qa | video_folder
                                    # | array_record | tfds | latent_cache
        num_frames=16,
        image_size=32,
        # Tokens of question + answer (+ follow-up turns), and of the longest answer;
        # 0: sized from the data (data_pipelines.datasets.text_lengths).
        max_text_len=0,
        max_answer_len=0,
        worker_count=0,           # Grain worker processes (spawned)
        worker_buffer_size=2,
        read_threads=1,
        prefetch_buffer_size=2,
        tokenizer="auto",         # auto (benchmark / dataset words) | sentencepiece | huggingface
        tokenizer_path="",
        prompt_template="<video> question : {question} answer :",
        max_bad_fraction=0.01,    # more bad inputs than this fraction stop the run
        # The embedded benchmark (data.name synthetic_video_qa) only.
        synthetic=dict(
            train_examples=200_000,  # procedural: distinct videos available to train on
            followups=True,          # train one follow-up question per clip too
            # Training share of each family (static_detail, brief_event, motion_direction,
            # temporal_order, counting); () = equal. Eval stays equal.
            train_family_weights=(1, 1, 2, 2, 1),
            background_noise="frame",  # noise drawn every frame | once per clip ("clip")
        ),
        # Real videos (data.name video_folder | array_record | tfds) only; see docs/data.md.
        root="",                  # video folder (video_folder), shard folder (array_record)
        train_annotations="",     # JSON/JSONL; video paths inside root
        eval_annotations="",
        tfds_name="",             # a prepared TFDS dataset, e.g. video_folder_qa
        tfds_dir="",              # its data_dir ("" = the TFDS default)
        sampling="uniform",       # uniform | fps | dense
        sample_fps=2.0,           # sampling=fps: frames per second
        resize="crop",            # short side + centre crop | long side + pad
        # A frozen encoder's latent cache (data.name latent_cache, data.root its folder).
        latents=dict(
            redraw=True,             # temporal training examples drawn afresh per read
            eval_split="eval",       # the split evaluated (a dense-video cache: select | test)
        ),
    ))

    c.model = ml_collections.ConfigDict(dict(
        vision=dict(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=128,
                    # Layers stacked and scanned (one compiled) or unrolled; remat policy
                    # none | full | save_dots | save_dots_no_batch (frejax/nn/layers.py).
                    # full by default: a scan without a policy stores every residual of
                    # its body as a stacked loop output, which XLA cannot fuse away
                    # (docs/accelerator_scale.md, "CPU main job"); MaxText's default too.
                    # attention auto | xla | dot_product | splash | blockwise
                    # (frejax/nn/attention.py).
                    scan_layers=True, remat="full", attention="auto", encode_chunk=0,
                    norm_eps=1e-6,
                    # SigLIP layout by default; DINOv2 sets the next five from its config.json.
                    cls_token=False, registers=0, layer_scale=False, gelu_approximate=True,
                    pixel_norm="symmetric",  # symmetric ([-1, 1]) | imagenet
                    # False: latents are the last block's output without the final norm
                    # (LLaVA's vision_feature_layer=-1 reads hidden_states[-1]).
                    final_norm=True,
                    # a SigLIP(2) or DINOv2 safetensors folder; "" = random init
                    pretrained="",
                    # pixels: frames in, the ViT above encodes them | latents: a frozen
                    # encoder's cached latents in (frejax.studies.latent_cache), no ViT built; the
                    # latents are latent_grid (h, w) tokens of `width` per frame.
                    input="pixels", latent_grid=(0, 0),
                    # vit (the ViT above) | qwen2_5_vl | qwen3_vl: Qwen-VL's tower
                    # (frejax/models/qwen_vl.py), temporal patches of `temporal_patch`
                    # frames, `merge` x `merge` patches per LLM-width token, attention in
                    # windows of `window` px but in `full_blocks`; Qwen3-VL's position
                    # table side and DeepStack blocks; under multimodal RoPE the position
                    # steps between temporal patches (mrope_time_step).
                    family="vit", temporal_patch=2, merge=2, window=112, full_blocks=(),
                    position_table=0, deepstack=(), mrope_time_step=1.0),
        # The vision -> LLM projector (2-layer GELU MLP; hidden 0 = the LLM width).
        # order: compress_then_project (compressor on encoder latents, frejax's default)
        # | project_then_compress (LLaVA-OneVision / LLaVA-Video: the projector per frame,
        # then `pool`, then the compressor on LLM-width tokens; training-free methods
        # then hand the pretrained LLM tokens it was trained to read).
        # pool: 1, or 2 = LLaVA-OneVision's per-frame bilinear resize to ceil(h/2) x ceil(w/2).
        # pretrained: a LLaVA-OneVision folder (its multi_modal_projector and newline).
        projector=dict(hidden=0, order="compress_then_project", pool=1, pretrained=""),
        # A learned embedding appended after the visual tokens (LLaVA-OneVision's video newline).
        newline=False,
        # Dtype the weights are held in: float32 to train; bfloat16 halves an inference
        # model's memory (a 7B LLaVA-OneVision in about 16 GB instead of 32), weights read
        # from checkpoints and pretrained folders are cast as they are placed.
        param_dtype="float32",
        llm=dict(vocab_size=0,  # 0: from the tokenizer
                 width=128, depth=2, heads=4, kv_heads=2, head_dim=0, mlp_dim=256,
                 rope_theta=10_000.0, qkv_bias=True, tie_embeddings=True,
                 scan_layers=True, remat="full", attention="auto",  # as in model.vision
                 norm_eps=1e-6,
                 # type none | llama3 (Llama-3.1 frequency scaling; the rest its parameters)
                 rope_scaling=dict(type="none", factor=8.0, low_freq_factor=1.0,
                                   high_freq_factor=4.0, original_max_position=8192),
                 # Multimodal RoPE: how many rotary frequencies follow time, height and
                 # width ((16, 24, 24) in Qwen2.5-VL; () = plain RoPE); interleaved as in
                 # Qwen3-VL (frejax/models/llm.py: mrope_axes).
                 mrope_sections=(), mrope_interleaved=False,
                 qk_norm=False,  # RMSNorm of each head's query and key (Qwen3)
                 lora=dict(rank=0, alpha=16.0),  # rank > 0: LoRA on attention and MLP
                 pretrained=""),  # a Qwen2 / Llama safetensors folder; "" = random init
    ))
    c.compressor = compressor_config()

    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=2e-3, warmup_steps=100, end_lr_fraction=0.05, weight_decay=0.05,
        b1=0.9, b2=0.98, clip_norm=1.0, accum_steps=1,
        # Per-module training: frozen groups (comma-separated) and learning-rate multipliers.
        # Groups: encoder, compressor, projector, llm, lora (the LLM's LoRA adapters).
        freeze="",
        lr_multipliers=dict(encoder=1.0, compressor=1.0, projector=1.0, llm=1.0, lora=1.0)))

    c.train = ml_collections.ConfigDict(dict(
        batch_size=32,            # global
        num_steps=1400,
        dtype="auto",             # compute dtype: auto (bf16 on TPU/GPU, fp32 on CPU) | float32 | bfloat16
        log_every=25,
        eval_every=0,             # 0: evaluate once at the end
        checkpoint_every=250,     # steps
        checkpoint_minutes=10.0,  # also save when this much wall-clock time has passed (0: off;
                                  # checked every log_every steps)
        keep_checkpoints=2,
        async_checkpoints=True,
        profile_steps=0,          # >0: trace this many steps after step 10 into the workdir
        progress_bar=True,
    ))

    c.eval = ml_collections.ConfigDict(dict(batch_size=50, num_examples=500, max_new_tokens=2))

    # A new run may start from another run's params (LLaVA-style stages): ``checkpoint``
    # names a workdir, its checkpoints/ folder or one step folder; ``groups`` the
    # top-level param groups to take from it (comma-separated). The rest keep their init.
    c.init = ml_collections.ConfigDict(dict(checkpoint="", groups=""))

    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))  # (data, fsdp, tensor)
    c.sharding = ml_collections.ConfigDict(dict(
        rules=DEFAULT_RULES,
        # With mesh fsdp > 1, a parameter of more elements must be split over fsdp.
        max_unsharded_param_size=2**20))
    return c




# How a checkpoint's config may differ from the run that restores it
# (``frejax.training.drift``). Keys a resumed run must share with its checkpoint: they
# fix the shapes of the saved arrays (model, compressor, video geometry), the vocabulary
# (the tokenizer, or the dataset that picks it), or the layout of the saved Grain
# iterator position.
MUST_MATCH_KEYS = ("model.", "compressor.", "data.num_frames", "data.image_size",
                   "data.name", "data.tokenizer", "data.tokenizer_path", "data.worker_count")
# Of those, the keys that shape the params: inference checks these against the checkpoint.
MODEL_SHAPE_KEYS = ("model.", "compressor.", "data.num_frames", "data.image_size")
# Keys under ``model.`` that change how the same params are computed, not their shapes.
COMPUTE_ONLY_KEYS = ("model.vision.remat", "model.llm.remat", "model.vision.attention",
                     "model.llm.attention", "model.vision.encode_chunk", "model.param_dtype")
# Keys a resumed run may change without changing what it computes.
SAFE_KEYS = ("name", "eval.", "train.log_every", "train.progress_bar",
             "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_checkpoints",
             "train.async_checkpoints", "train.num_steps", "train.profile_steps", "mesh.", "init.",
             "sharding.", "data.worker_buffer_size", "data.read_threads",
             "data.prefetch_buffer_size")


def matches_key(key: str, patterns) -> bool:
    """Whether a flat key (``"data.root"``) is one of ``patterns``: an exact key, or every
    key under a prefix ending in a dot (``"model."``)."""
    return any(key.startswith(p) if p.endswith(".") else key == p for p in patterns)


_CHOICES = {
    "data.name": sources.names(),
    "data.sampling": video_decode.SAMPLING_MODES,
    "data.resize": video_decode.RESIZE_MODES,
    "data.tokenizer": ("auto", "sentencepiece", "huggingface"),
    "model.vision.pixel_norm": ("symmetric", "imagenet"),
    "model.vision.input": ("pixels", "latents"),
    "model.projector.order": ("compress_then_project", "project_then_compress"),
    "model.projector.pool": (1, 2),
    "model.vision.remat": tuple(REMAT_POLICIES),
    "model.vision.attention": attention.IMPLEMENTATIONS,
    "model.llm.remat": tuple(REMAT_POLICIES),
    "model.llm.attention": attention.IMPLEMENTATIONS,
    "model.llm.rope_scaling.type": ("none", "llama3"),
    "model.vision.family": ("vit", "qwen2_5_vl", "qwen3_vl"),
    "train.dtype": ("auto", "float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
}

_POSITIVE = (
    "data.num_frames", "data.image_size", "data.synthetic.train_examples",
    "data.read_threads",
    "model.vision.patch_size", "model.vision.width", "model.vision.depth",
    "model.vision.heads", "model.vision.mlp_dim",
    "model.llm.width", "model.llm.depth", "model.llm.heads", "model.llm.kv_heads",
    "model.llm.mlp_dim", "optim.accum_steps", "train.batch_size", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "eval.batch_size", "eval.num_examples", "eval.max_new_tokens",
)


_MAY_BE_NEGATIVE = ("seed",)

# (divisor, dividend): shapes that must split evenly.
_DIVIDES = (
    ("model.vision.patch_size", "data.image_size"),
    ("model.vision.heads", "model.vision.width"),
    ("model.llm.kv_heads", "model.llm.heads"),
    ("optim.accum_steps", "train.batch_size"),
)


def _flatten(c, prefix=""):
    out = {}
    for k, v in c.items():
        key = f"{prefix}{k}"
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_types(config: ml_collections.ConfigDict) -> dict:
    schema = _flatten(base_config())
    values = _flatten(config)
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ValueError(f"config: unknown keys {unknown} (typo?); see frejax/config_lib.py")
    missing = sorted(set(schema) - set(values))
    if missing:
        raise ValueError(f"config: missing keys {missing}")
    for key, default in schema.items():
        if not options_lib.same_kind(default, values[key]):
            raise ValueError(
                f"config.{key}: expected {type(default).__name__}, got {values[key]!r}")
        value = values[key]
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**31:
            # Sizes, steps and counts all live in int32 (shapes, step counters, ids).
            raise ValueError(f"config.{key}: {value} is out of the int32 range")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config.{key}: must be a finite number, got {value}")
    return values


def load(spec: str) -> ml_collections.ConfigDict:
    """``configs/x.py:arg`` -> ``get_config(arg)``, as ``--config`` of ``frejax.main`` reads
    it (for callers without absl flags: benchmarks, the lmms-eval model)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"config: {path} is not a file (expected configs/<name>.py[:args])")
    module_spec = importlib.util.spec_from_file_location("frejax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the key for unknown keys and impossible settings.

    Compressor settings that depend on the video geometry (segment length,
    coefficients, pooling against the budget) are checked when the model is
    built abstractly at start-up, by the compressor itself.
    """
    v = _check_types(config)
    for key, allowed in _CHOICES.items():
        if v[key] not in allowed:
            raise ValueError(f"config.{key} must be one of {allowed}, got {v[key]!r}")
    for key in _POSITIVE:
        if v[key] < 1:
            raise ValueError(f"config.{key} must be >= 1, got {v[key]}")
    for key, value in v.items():  # every other count and size: 0 means "auto" or "off"
        if (isinstance(value, int) and not isinstance(value, bool) and value < 0
                and key not in _MAY_BE_NEGATIVE):
            raise ValueError(f"config.{key} must be >= 0, got {value}")
    _validate_compressor(config, v)
    if v["model.vision.input"] == "latents" and min(config.model.vision.latent_grid) < 1:
        raise ValueError("config.model.vision.latent_grid must be two sizes >= 1 with"
                         f" model.vision.input='latents', got {config.model.vision.latent_grid}")
    if v["model.vision.image_size"] != v["data.image_size"]:
        raise ValueError(
            f"config.model.vision.image_size ({v['model.vision.image_size']}) must equal"
            f" config.data.image_size ({v['data.image_size']})")
    family = v["model.vision.family"]
    if family != "vit":
        m = config.model.vision
        if v["model.vision.input"] != "pixels":
            raise ValueError(f"config.model.vision.family {family!r} reads pixels; set"
                             " model.vision.input='pixels'")
        if v["data.num_frames"] % m.temporal_patch:
            raise ValueError(f"config.data.num_frames ({v['data.num_frames']}) must be a multiple"
                             f" of config.model.vision.temporal_patch ({m.temporal_patch})")
        if m.image_size % (m.patch_size * m.merge):
            raise ValueError(f"config.model.vision.image_size ({m.image_size}) must be a multiple"
                             f" of patch_size x merge ({m.patch_size * m.merge})")
    sections = tuple(config.model.llm.mrope_sections)
    if sections:
        half = (v["model.llm.head_dim"] or v["model.llm.width"] // v["model.llm.heads"]) // 2
        if len(sections) != 3 or sum(sections) != half:
            raise ValueError(f"config.model.llm.mrope_sections {sections} must be three sizes"
                             f" (time, height, width) that sum to head_dim / 2 = {half}")
    divides = list(_DIVIDES)
    if not v["model.llm.head_dim"]:  # head_dim 0 means width / heads
        divides.append(("model.llm.heads", "model.llm.width"))
    for divisor, dividend in divides:
        if v[dividend] % v[divisor]:
            raise ValueError(
                f"config.{divisor} ({v[divisor]}) must divide config.{dividend} ({v[dividend]})")
    for key in ("data.max_text_len", "data.max_answer_len"):
        if v[key] < 0:
            raise ValueError(f"config.{key} must be >= 0 (0: sized from the data), got {v[key]}")
    if v["eval.max_new_tokens"] < v["data.max_answer_len"]:
        raise ValueError(
            f"config.eval.max_new_tokens ({v['eval.max_new_tokens']}) must be >="
            f" config.data.max_answer_len ({v['data.max_answer_len']})")
    for key in ("optim.learning_rate", "optim.clip_norm"):
        if v[key] <= 0:
            raise ValueError(f"config.{key} must be > 0, got {v[key]}")
    if v["train.checkpoint_minutes"] < 0:
        raise ValueError(f"config.train.checkpoint_minutes must be >= 0 (0: off),"
                         f" got {v['train.checkpoint_minutes']}")
    if not 0 <= v["optim.end_lr_fraction"] <= 1:
        raise ValueError(f"config.optim.end_lr_fraction must be in [0, 1], got {v['optim.end_lr_fraction']}")
    # The cosine decay needs at least one step after the warmup (num_steps 0: evaluate
    # the initial params, e.g. those of init.checkpoint, without training).
    if v["train.num_steps"] and not 0 <= v["optim.warmup_steps"] < v["train.num_steps"]:
        raise ValueError(
            f"config.optim.warmup_steps must be in [0, train.num_steps={v['train.num_steps']}),"
            f" got {v['optim.warmup_steps']}")
    _validate_data(v)
    sharding.check_mesh_shape(v["mesh.shape"])  # device count is checked when the mesh is built
    sharding.validate_rules(v["sharding.rules"])
    if v["sharding.max_unsharded_param_size"] < 0:
        raise ValueError(f"config.sharding.max_unsharded_param_size must be >= 0,"
                         f" got {v['sharding.max_unsharded_param_size']}")
    _validate_training_groups(v)


def _validate_compressor(config: ml_collections.ConfigDict, v: dict) -> None:
    """The chosen method's options are checked; every other method's must be untouched."""
    name = v["compressor.name"]
    if name not in compression.names():
        raise ValueError(f"config.compressor.name: unknown compressor {name!r};"
                         f" choose one of {compression.names()}")
    chosen = compression.get(name).section
    for section, schema in compression.sections().items():
        given = config.compressor.get(section)
        if section == chosen:
            opts = options_lib.resolve(f"config.compressor.{section}", schema, given)
            continue
        stale = options_lib.changed(schema, given, f"config.compressor.{section}")
        if stale:
            users = sorted(n for n in compression.names()
                           if compression.get(n).section == section)
            raise ValueError(
                f"{stale[0]}: an option of {', '.join(users)}, but config.compressor.name is"
                f" {name!r}, which does not read it; remove the setting or choose one of"
                f" those compressors")
    # The compressor reads LLM-width tokens when the projector runs first.
    width_key = ("model.llm.width" if v["model.projector.order"] == "project_then_compress"
                 else "model.vision.width")
    if chosen == "fre_res" and v[width_key] % opts["absorber"]["heads"]:
        raise ValueError(
            f"config.compressor.fre_res.absorber.heads ({opts['absorber']['heads']}) must divide"
            f" config.{width_key} ({v[width_key]})")


def _validate_data(v: dict) -> None:
    """Keys the data source needs (``data_pipelines.sources``), and the real-video options."""
    source = sources.get(v["data.name"])  # an unknown name fails here, listing the sources
    for key in source.required:
        if not v[key]:
            raise ValueError(f"config.{key} must be set for config.data.name={v['data.name']!r}")
    if source.input != v["model.vision.input"]:
        raise ValueError(
            f"config.model.vision.input is {v['model.vision.input']!r} but config.data.name"
            f" {v['data.name']!r} gives {source.input}; choose a source of"
            f" {v['model.vision.input']} ("
            + ", ".join(n for n in sources.names()
                        if sources.get(n).input == v["model.vision.input"]) + ")")
    if v["data.tokenizer"] != "auto" and not v["data.tokenizer_path"]:
        raise ValueError(
            f"config.data.tokenizer_path must name the {v['data.tokenizer']} tokenizer file")
    if source.validate is not None:
        source.validate(v)
    # Keys that another source reads and this one does not would be silently ignored:
    # refuse them when set.
    defaults = _flatten(base_config().data, "data.")

    others = tuple(sources.all_keys())
    ignored = [k for k in defaults if v[k] != defaults[k] and matches_key(k, others)
               and not matches_key(k, source.keys)]
    if ignored:
        owners = [n for n in sources.names() if matches_key(ignored[0], sources.get(n).keys)]
        raise ValueError(f"config.{ignored[0]}: a key of data.name {' / '.join(owners)}, but"
                         f" config.data.name is {v['data.name']!r}, which does not read it")
    if not 0 <= v["data.max_bad_fraction"] <= 1:
        raise ValueError(
            f"config.data.max_bad_fraction must be in [0, 1], got {v['data.max_bad_fraction']}")
    if v["data.sample_fps"] <= 0:
        raise ValueError(f"config.data.sample_fps must be > 0, got {v['data.sample_fps']}")
    template = v["data.prompt_template"]
    if template.count("<video>") != 1 or template.count("{question}") != 1:
        raise ValueError("config.data.prompt_template must contain <video> once and {question}"
                         f" once, got {template!r}")


TRAINING_GROUPS = ("encoder", "compressor", "projector", "llm", "lora")


def _validate_training_groups(v: dict) -> None:
    """``optim.freeze``, ``optim.lr_multipliers`` and ``model.llm.lora``."""
    frozen = [g.strip() for g in v["optim.freeze"].split(",") if g.strip()]
    unknown = sorted(set(frozen) - set(TRAINING_GROUPS))
    if unknown:
        raise ValueError(f"config.optim.freeze: unknown groups {unknown}; choose from {TRAINING_GROUPS}")
    if v["model.llm.lora.rank"] < 0:
        raise ValueError(f"config.model.llm.lora.rank must be >= 0, got {v['model.llm.lora.rank']}")
    if "lora" in frozen and not v["model.llm.lora.rank"]:
        raise ValueError("config.optim.freeze names 'lora' but config.model.llm.lora.rank is 0")
    for group in TRAINING_GROUPS:
        if v[f"optim.lr_multipliers.{group}"] < 0:
            raise ValueError(f"config.optim.lr_multipliers.{group} must be >= 0,"
                             f" got {v[f'optim.lr_multipliers.{group}']}")
    taken = [g.strip() for g in v["init.groups"].split(",") if g.strip()]
    if sorted(set(taken) - set(TRAINING_GROUPS)):
        raise ValueError(f"config.init.groups: unknown groups"
                         f" {sorted(set(taken) - set(TRAINING_GROUPS))}; choose from"
                         f" {TRAINING_GROUPS}")
    if bool(taken) != bool(v["init.checkpoint"]):
        raise ValueError("config.init.checkpoint and config.init.groups go together: name the"
                         " checkpoint and the param groups to take from it")
    for key in ("model.vision.norm_eps", "model.llm.norm_eps"):
        if v[key] <= 0:
            raise ValueError(f"config.{key} must be > 0, got {v[key]}")


class UnknownKeyError(ValueError):
    """A ``--config.<key>=...`` override of a key the schema lacks."""


def check_override_flags(argv: list[str], flag: str = "config") -> None:
    """Fails naming the key for ``--config.<key>=...`` overrides of keys the schema lacks.

    ``ml_collections.config_flags`` reports such a flag with a bare ``KeyError``
    traceback; ``cli.run`` calls this before flag parsing, so the error says which
    key and what exists.
    """
    keys = set(_flatten(base_config()))
    sections = {k.rpartition(".")[0] for k in keys}
    for arg in argv[1:]:
        if not arg.startswith(f"--{flag}."):
            continue
        key = arg[len(flag) + 3:].partition("=")[0]
        if key in keys:
            continue
        parent = key.rpartition(".")[0]
        while parent and parent not in sections:
            parent = parent.rpartition(".")[0]
        near = sorted(k[len(parent) + 1:] if parent else k for k in keys
                      if not parent or k.startswith(parent + "."))
        raise UnknownKeyError(f"--{flag}.{key}: config.{key} does not exist; config.{parent or '*'}"
                         f" has {near}")
