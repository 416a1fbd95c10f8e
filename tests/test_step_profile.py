"""frejax.benchmarks.step_profile: reading XLA:CPU's thunks and the compiled HLO."""

import jax
import jax.numpy as jnp

from frejax.benchmarks import step_profile


def _scan_grad_hlo(policy):
    """The backward of a 3-layer scan of a small MLP block, with or without remat."""
    def layer(x, w):
        return jnp.tanh(x @ w) * jax.nn.gelu(x @ w.T), None

    body = layer if policy is None else jax.checkpoint(layer, policy=policy)

    def loss(ws, x):
        return jax.lax.scan(body, x, ws)[0].sum()

    ws = jax.ShapeDtypeStruct((3, 16, 16), jnp.float32)
    x = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    return jax.jit(jax.grad(loss)).lower(ws, x).compile().as_text()


def test_a_scan_without_remat_carries_its_residuals_out_of_the_loop():
    """The cause the CPU profile names: without a policy, every residual of the body
    leaves the forward loop as a stacked buffer; full remat keeps only the carry."""
    plain = step_profile.loop_outputs(_scan_grad_hlo(None))
    remat = step_profile.loop_outputs(
        _scan_grad_hlo(jax.checkpoint_policies.nothing_saveable))
    assert plain["buffers"] > remat["buffers"] and plain["bytes"] > remat["bytes"]
    stacked = 3 * 8 * 16 * 4  # one (layers, 8, 16) float32 residual
    assert plain["bytes"] - remat["bytes"] >= 2 * stacked


def test_fusions_are_named_by_kind_and_source_operation():
    assert step_profile.kind_of("copy_bitcast_fusion.7") == "copy"
    assert step_profile.kind_of("ynn_fusion.68") == "matmul"
    assert step_profile.kind_of("bitcast_dynamic-update-slice_fusion.3") == "dynamic-update-slice"
    assert step_profile.kind_of("multiply_add_fusion.2") == "other elementwise"
    hlo = _scan_grad_hlo(None)
    ops = step_profile.source_ops(hlo)
    assert sum(op.startswith("jit(loss)/") for op in ops.values()) > len(ops) // 2
    assert any("while" in op for op in ops.values())
