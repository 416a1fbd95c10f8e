"""Helpers shared by the compression tests: random latents, compressors with random params."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import frejax.compression as compression

FRE_RES_NAMES = ("fre_res", "temporal_dct_only", "anchors_only")

# The paper's split (the defaults until natural video chose segment-mean anchors and
# energy-chosen coefficients): the tests of its mechanics ask for it by name.
PAPER = dict(anchor="middle", residual="inter_frame", coding="single")


def paper(options=None, **overrides):
    """``compressor.fre_res`` options: the paper's split, then ``options``, then ``overrides``."""
    return {**PAPER, **dict(options or {}), **overrides}


def _latents(seed, b, t, n, d):
    # numpy, not jax.random: every new jax.random shape is a multi-second compile on CPU.
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, n, d)), jnp.float32)


def _build(name, geometry, budget, options, seed=0):
    """A compressor with random numpy params (gate open), skipping per-shape init compiles."""
    abstract = nnx.eval_shape(lambda: compression.build(name, geometry, budget, options,
                                                        rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda a: (0.3 * rng.normal(size=a.shape)).astype(a.dtype), state)
    return nnx.merge(graphdef, state)


# Faster CPU compiles for the many small one-off programs here (the mesh test uses defaults).
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit_apply(module, compiler_options=QUICK_COMPILE):
    """``module(*args)`` jitted with the module state as an input (gate edits need no retrace)."""
    graphdef, _ = nnx.split(module)
    fn = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args),
                 compiler_options=compiler_options)
    return lambda *args: fn(jax.tree.map(np.asarray, nnx.state(module)), *args)


def _open_gate(model, value=0.7):
    """Turns the absorber on (its gate starts closed)."""
    if model.absorber is not None:
        model.absorber.gate[...] = jnp.full_like(model.absorber.gate[...], value)


MODES = [  # (entry, options): every output and allocation mode
    ("fre_res", dict(output="absorbed", allocation="uniform")),
    ("fre_res", dict(output="absorbed", allocation="energy")),
    ("fre_res", dict(output="dual", allocation="uniform")),
    ("fre_res", dict(output="dual", allocation="energy")),
    ("temporal_dct_only", dict(allocation="uniform")),
    ("temporal_dct_only", dict(allocation="energy")),
    ("anchors_only", dict()),
]
