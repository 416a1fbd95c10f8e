"""Model, optimiser and train state of a run, built from its config.

Used through the run context (``frejax.training.run.Run``), which every tool starts
from: the model's structure and its sharded state, without the training loop.

The train state is a plain dict ``{step, params, opt_state}`` of arrays; the
model is rebuilt from its ``nnx.GraphDef`` inside every jitted function
(``nnx.merge``), so everything the compiler sees is a pure function of arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from frejax import config_lib
from frejax import sharding
from frejax.models.convert import hf_import
from frejax.models import lora
from frejax.models.video_mllm import VideoMLLM

# ----------------------------------------------------------------------------
# Model and optimiser.
# ----------------------------------------------------------------------------


def compute_dtype(name: str) -> jnp.dtype:
    """``auto``: bfloat16 on TPU/GPU, float32 on CPU (where bf16 is emulated)."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(name)


def create_model(config: ml_collections.ConfigDict, tokenizer: Any, *, seed: int) -> VideoMLLM:
    model_cfg = ml_collections.ConfigDict(config.model.to_dict())
    if not model_cfg.llm.vocab_size:
        model_cfg.llm.vocab_size = tokenizer.vocab_size
    elif model_cfg.llm.vocab_size < tokenizer.vocab_size and model_cfg.llm.pretrained:
        # Tokens the tokenizer adds to a pretrained vocabulary (<video>, <pad>) get rows of
        # their own, zero at import (tensor_sources.Extended).
        model_cfg.llm.vocab_size = tokenizer.vocab_size
    elif model_cfg.llm.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"config.model.llm.vocab_size ({model_cfg.llm.vocab_size}) is smaller than the"
            f" tokenizer's vocabulary ({tokenizer.vocab_size})")
    model = VideoMLLM(
        model_cfg, config.compressor, num_frames=config.data.num_frames,
        vocab_size=model_cfg.llm.vocab_size, video_token_id=tokenizer.video_id,
        rngs=nnx.Rngs(seed), dtype=compute_dtype(config.train.dtype),
        param_dtype=jnp.dtype(config.model.param_dtype))
    lora_cfg = model_cfg.llm.lora
    if lora_cfg.rank:  # own rng stream: the base init is unchanged
        lora.apply_lora(model.llm, lora_cfg.rank, lora_cfg.alpha, rngs=nnx.Rngs(seed + 1))
    return model


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    o = config.optim
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
        # At least one: a run of 0 steps only evaluates, and optax refuses 0.
        decay_steps=max(config.train.num_steps, o.warmup_steps + 1),
        end_value=o.learning_rate * o.end_lr_fraction)


def training_group(path: tuple) -> str:
    """Optimiser group of a param: ``lora`` for LoRA adapters, else its top-level module."""
    names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    return "lora" if names[-1].startswith("lora_") else names[0]


def frozen_groups(config: ml_collections.ConfigDict) -> frozenset[str]:
    return frozenset(g.strip() for g in config.optim.freeze.split(",") if g.strip())


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; per-group freezing and lr multipliers from ``optim``.

    A frozen group gets no update and no optimiser state (``optax.set_to_zero``)
    and does not count towards the clipping norm.
    """
    o = config.optim
    schedule = learning_rate_schedule(config)
    # No weight decay on vectors (norm scales, biases, gates).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731

    def adamw(lr):
        return optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)

    frozen = frozen_groups(config)
    multipliers = dict(o.lr_multipliers)
    if not frozen and all(m == 1.0 for m in multipliers.values()):
        return optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw(schedule))

    def groups_of(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: training_group(path), params)

    def frozen_mask(params):
        return jax.tree.map(lambda g: g in frozen, groups_of(params))

    per_group = {g: optax.set_to_zero() if g in frozen else
                 adamw(lambda step, m=multipliers.get(g, 1.0): m * schedule(step))
                 for g in config_lib.TRAINING_GROUPS}
    return optax.chain(
        optax.masked(optax.set_to_zero(), frozen_mask),
        optax.clip_by_global_norm(o.clip_norm),
        optax.multi_transform(per_group, groups_of))


# ----------------------------------------------------------------------------
# The train state, sharded from birth.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Static pieces of a run: model structure, optimiser, state shardings."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    abstract_state: Any      # ShapeDtypeStructs carrying their NamedShardings
    state_shardings: Any
    num_visual_tokens: int   # M, the LLM's visual sequence length (the budget)
    visual_tokens_used: int  # tokens the compressor really fills
    full_visual_tokens: int  # T * N


def make_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               tokenizer: Any) -> TrainSetup:
    """Builds the model abstractly (no FLOPs, no memory) and derives shardings."""
    abstract_model = nnx.eval_shape(lambda: create_model(config, tokenizer, seed=config.seed))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_specs = sharding.param_specs(abstract_params)
    tx = create_optimizer(config)
    pure_params = nnx.to_pure_dict(abstract_params)
    pure_specs = nnx.to_pure_dict(param_specs)
    sharding.check_params_sufficiently_sharded(
        pure_params, pure_specs, dict(mesh.shape),
        max_unsharded_size=config.sharding.max_unsharded_param_size)
    abstract_opt = jax.eval_shape(tx.init, pure_params)
    # Per-group optimisers (optim.freeze / lr_multipliers) hold an empty optax.MaskedNode
    # in place of other groups' params: it stays one, with no spec.
    is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_specs = optax.tree_map_params(
        tx, lambda _, spec: spec, abstract_opt, pure_specs,
        transform_non_params=lambda _: jax.P(),
        is_leaf=lambda x: isinstance(x, jax.P) or is_masked(x))
    opt_specs = jax.tree.map(lambda a, s: a if is_masked(a) else s, abstract_opt, opt_specs,
                             is_leaf=is_masked)
    specs = dict(step=jax.P(), params=pure_specs, opt_state=opt_specs)
    shardings = sharding.named_shardings(specs, mesh)
    abstract = dict(step=jax.ShapeDtypeStruct((), jnp.int32), params=pure_params,
                    opt_state=abstract_opt)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return TrainSetup(
        graphdef=graphdef, tx=tx, abstract_state=abstract, state_shardings=shardings,
        num_visual_tokens=abstract_model.num_visual_tokens,
        visual_tokens_used=abstract_model.visual_tokens_used,
        full_visual_tokens=abstract_model.full_visual_tokens)


def pretrained_groups(config: ml_collections.ConfigDict) -> frozenset[str]:
    """Top-level param groups read from pretrained folders (``encoder``, ``llm``, ``projector``)."""
    return frozenset(g for g, section in (("encoder", config.model.vision),
                                          ("llm", config.model.llm),
                                          ("projector", config.model.projector))
                     if section.get("pretrained"))


def init_state(config: ml_collections.ConfigDict, setup: TrainSetup, tokenizer: Any) -> dict:
    """Initialises params and optimiser state directly into their shardings.

    Params of pretrained groups are never drawn: the jitted init does not return
    them (XLA drops their random init), and they are read from disk shard by shard
    into place. Peak memory is one copy of the state. LoRA adapters, which no
    checkpoint holds, keep their init.
    """
    return _init(config, setup, tokenizer, with_optimizer=True)


def init_params(config: ml_collections.ConfigDict, setup: TrainSetup, tokenizer: Any) -> Any:
    """The params alone, as ``init_state`` places them (inference: no optimiser state)."""
    return _init(config, setup, tokenizer, with_optimizer=False)["params"]


def _init(config: ml_collections.ConfigDict, setup: TrainSetup, tokenizer: Any, *,
          with_optimizer: bool) -> dict:
    loaded = pretrained_groups(config)

    def from_disk(path: tuple) -> bool:
        return path[0] in loaded and not str(path[-1]).startswith("lora_")

    flat_shardings = nnx.traversals.flatten_mapping(setup.state_shardings["params"])
    drawn_shardings = {p: s for p, s in flat_shardings.items() if not from_disk(p)}

    def init():
        model = create_model(config, tokenizer, seed=config.seed)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        flat = nnx.traversals.flatten_mapping(params)
        out = dict(step=jnp.zeros((), jnp.int32),
                   params={p: v for p, v in flat.items() if not from_disk(p)})
        if with_optimizer:
            out["opt_state"] = setup.tx.init(params)
        return out

    shardings = dict(step=setup.state_shardings["step"], params=drawn_shardings)
    if with_optimizer:
        shardings["opt_state"] = setup.state_shardings["opt_state"]
    state = jax.jit(init, out_shardings=shardings)()
    params = state.pop("params")
    if loaded:
        # Pretrained leaves enter as their abstract shapes and shardings; the reader
        # allocates each shard once.
        abstract = nnx.traversals.flatten_mapping(setup.abstract_state["params"])
        params = {**{p: a for p, a in abstract.items() if from_disk(p)}, **params}
    params = nnx.traversals.unflatten_mapping(params)
    if loaded:
        params = hf_import.load_pretrained(config, params)
    return dict(state, params=params)
