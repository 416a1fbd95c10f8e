"""Scanned (stacked) layers equal unrolled ones: same params, same outputs, same gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import long_video
from data_pipelines import datasets as data_lib
from frejax.nn import layers
from frejax.training import train
from frejax.training import train_state


def _config(scan: bool, remat: str = "none"):
    config = long_video.get_config("smoke")
    for section in (config.model.vision, config.model.llm):
        section.update(depth=3, scan_layers=scan, remat=remat)
    return config


def _model_and_batch(config):
    tokenizer = data_lib.make_tokenizer(config)
    model = train_state.create_model(config, tokenizer, seed=0)
    source = data_lib.make_source(config, "train", 4)
    from data_pipelines import input_pipeline  # noqa: PLC0415

    features = input_pipeline.VideoQAFeatures(
        tokenizer, *data_lib.text_lengths(config, tokenizer),
        template=config.data.prompt_template)
    examples = [features.map(source[i]) for i in range(4)]
    batch = {k: jnp.stack([e[k] for e in examples]) for k in examples[0]
             if np.asarray(examples[0][k]).dtype.kind in "biuf"}
    return model, batch


def _loss_and_grads(model, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def run(params):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p, rest)(batch)
            return train.loss_and_metrics(logits, batch)[0], logits
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, logits), grads = run(params)
    return loss, logits, nnx.to_pure_dict(params), nnx.to_pure_dict(grads)


def _stack_unrolled(tree):
    """Unrolled ``{layers: {0: ..., 1: ...}}`` subtrees -> stacked leaves, like the scanned ones."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and all(isinstance(k, int) for k in value):
            out[key] = jax.tree.map(lambda *xs: np.stack(xs),
                                    *(value[i] for i in range(len(value))))
        elif isinstance(value, dict):
            out[key] = _stack_unrolled(value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("remat", ["none", "full", "save_dots"])
def test_scanned_layers_equal_unrolled_ones(remat):
    unrolled = _loss_and_grads(*_model_and_batch(_config(scan=False)))
    scanned = _loss_and_grads(*_model_and_batch(_config(scan=True, remat=remat)))
    loss_u, logits_u, params_u, grads_u = unrolled
    loss_s, logits_s, params_s, grads_s = scanned
    # The same random init, stacked.
    jax.tree.map(np.testing.assert_array_equal, params_s, _stack_unrolled(params_u))
    np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads_s, _stack_unrolled(grads_u))
    assert params_s["llm"]["layers"]["attn"]["query"]["kernel"].shape[0] == 3
    assert params_s["encoder"]["blocks"]["mlp"]["fc1"]["kernel"].shape[0] == 3


def test_stacked_params_carry_the_layers_axis_and_unstack_back():
    config = _config(scan=True)
    model = nnx.eval_shape(lambda: train_state.create_model(
        config, data_lib.make_tokenizer(config), seed=0))
    for v in jax.tree.leaves(nnx.state(model.llm.layers, nnx.Param),
                             is_leaf=lambda x: isinstance(x, nnx.Variable)):
        assert v.get_metadata()["out_sharding"][0] == "layers"
    parts = layers.unstack_module(model.llm.layers)
    assert len(parts) == 3
    kernel = parts[1].attn.query.kernel
    assert kernel.get_metadata()["out_sharding"] == ("embed", "heads", "head_dim")
    assert kernel.shape == model.llm.layers.attn.query.kernel.shape[1:]


def test_remat_policy_is_checked_by_name():
    with pytest.raises(ValueError, match="must be one of"):
        layers.rematerialize(lambda x: x, "everything")


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("remat,policy", [("none", None), ("full", "nothing_saveable"),
                                          ("save_dots", "DotsSaveable(")])
def test_the_remat_policy_reaches_every_layout(scan, remat, policy):
    """The named policy wraps the layers in the traced backward pass (values cannot show it)."""
    import re  # noqa: PLC0415

    from frejax import config_lib  # noqa: PLC0415
    from frejax.models.llm import LLM  # noqa: PLC0415

    cfg = config_lib.base_config().model.llm
    cfg.update(vocab_size=20, width=16, depth=2, heads=4, kv_heads=2, mlp_dim=32, remat=remat,
               scan_layers=scan)
    graphdef, state = nnx.split(LLM(cfg, rngs=nnx.Rngs(0)))
    tokens, positions = jnp.zeros((1, 4), jnp.int32), jnp.arange(4)[None]

    def loss(state):
        llm = nnx.merge(graphdef, state)
        return llm(llm.embed(tokens), positions)[0].sum()

    policies = re.findall(r"policy=(?:<function )?(\w+\(|\w+)", str(jax.make_jaxpr(
        jax.grad(loss))(state)))
    assert set(policies) == ({policy} if policy else set())
