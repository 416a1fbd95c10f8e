"""Logical axis names inside, physical mesh outside.

Modules name their axes with logical names (``batch``, ``frames``, ``tokens``,
``embed``, ...). The config maps each logical name to zero or more mesh axes
(``data``, ``fsdp``, ``tensor``). Nothing in a model refers to a mesh axis.

Outside a mesh context (``jax.set_mesh``) the constraint helpers are no-ops, so
every module also runs eagerly on one device, in a notebook or a unit test.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

# Every logical axis a frejax module may name. A rule set must map all of them.
LOGICAL_AXES = (
    "batch",      # examples
    "frames",     # video frames (T)
    "tokens",     # tokens inside a frame (N) or sequence positions
    "length",     # text / multimodal sequence length
    "embed",      # model width
    "activation_embed",  # width of the residual stream saved between layers
    "mlp",        # MLP hidden width
    "heads",      # attention heads
    "kv_heads",   # key/value heads (grouped-query attention)
    "head_dim",   # per-head width
    "vocab",      # vocabulary
    "patch",      # flattened patch pixels
    "coeffs",     # kept DCT coefficients
    "layers",     # stacked layers
)

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters are placed by ``jax.jit(init, out_shardings=...)`` from their
# logical names, never at creation: modules then build the same way off-mesh
# (tests, notebooks) and on a pod. Flax 0.12 shards eagerly by default.
nnx.use_eager_sharding(False)

Rules = tuple[tuple[str, Any], ...]

_state = threading.local()


def _current_rules() -> Rules | None:
    return getattr(_state, "rules", None)


@contextlib.contextmanager
def axis_rules(rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Binds logical-to-mesh rules for constraints and parameter specs."""
    rules = validate_rules(rules)
    previous = _current_rules()
    _state.rules = rules
    try:
        with nnx.logical_axis_rules(rules):
            yield
    finally:
        _state.rules = previous


def validate_rules(rules: Sequence[tuple[str, Any]]) -> Rules:
    """Checks that rules cover every logical axis and name only mesh axes."""
    if not isinstance(rules, (list, tuple)) or not all(
            isinstance(r, (list, tuple)) and len(r) == 2 for r in rules):
        raise ValueError(f"sharding.rules: must be (logical axis, mesh axes) pairs, got {rules!r}")
    rules = tuple((str(k), _as_mesh_axes(v)) for k, v in rules)
    names = [k for k, _ in rules]
    unknown = sorted(set(names) - set(LOGICAL_AXES))
    if unknown:
        raise ValueError(
            f"sharding.rules: unknown logical axes {unknown}; allowed: {LOGICAL_AXES}")
    missing = sorted(set(LOGICAL_AXES) - set(names))
    if missing:
        raise ValueError(
            f"sharding.rules: logical axes {missing} have no rule; map them to"
            " None to replicate")
    for name, value in rules:
        axes = value if isinstance(value, tuple) else (value,)
        bad = [a for a in axes if a is not None and a not in MESH_AXES]
        if bad:
            raise ValueError(
                f"sharding.rules[{name!r}]: mesh axes {bad} not in {MESH_AXES}")
    return rules


def _as_mesh_axes(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        return value if len(value) > 1 else (value[0] if value else None)
    return value


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis over the mesh axes ``batch`` maps to; the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",)))


def logical_to_spec(names: Sequence[str | None], rules: Rules | None = None) -> PartitionSpec:
    """Maps logical axis names to a ``PartitionSpec`` under ``rules``.

    A mesh axis is used at most once per spec: a later logical axis that maps
    to an axis already taken is replicated instead (as in Flax/MaxText).
    """
    rules = _current_rules() if rules is None else rules
    table = dict(rules or ())
    used: set[str] = set()
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule")
        target = table[name]
        axes = target if isinstance(target, tuple) else (target,)
        axes = tuple(a for a in axes if a is not None and a not in used)
        used.update(axes)
        out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return PartitionSpec(*out)


def _active_mesh() -> jax.sharding.AbstractMesh | None:
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names (no-op off-mesh)."""
    rules = _current_rules()
    if rules is None or _active_mesh() is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names for an array of rank {x.ndim}")
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def param(init: Any, names: Sequence[str | None]) -> Any:
    """Wraps an initializer so the created ``nnx.Param`` carries logical names."""
    return nnx.with_partitioning(init, tuple(names))


def param_specs(state: Any, rules: Rules | None = None) -> Any:
    """``PartitionSpec`` tree for an ``nnx.State`` whose params carry logical names."""
    rules = _current_rules() if rules is None else validate_rules(rules)

    def spec(v: Any) -> Any:
        if isinstance(v, nnx.Variable):
            names = v.get_metadata().get("out_sharding")
            return v.replace(logical_to_spec(names, rules) if names else PartitionSpec())
        return PartitionSpec()

    return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def named_shardings(tree_of_specs: Any, mesh: jax.sharding.Mesh) -> Any:
    return jax.tree.map(
        lambda p: NamedSharding(mesh, p), tree_of_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec))


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh; one entry may be -1 ("the rest")."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=axis_types)
    except NotImplementedError:
        # A TPU topology whose physical axes do not factor into the logical ones
        # (fsdp=16 on v5p 8x8x4): split physical axes rather than refuse the mesh.

        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


def check_mesh_shape(shape: Sequence[int]) -> list[int]:
    """Checks a ``(data, fsdp, tensor)`` shape's syntax; returns it as ints."""
    try:
        shape = [int(s) for s in shape]
    except (TypeError, ValueError):
        raise ValueError(f"mesh.shape: expected {len(MESH_AXES)} integers for {MESH_AXES},"
                         f" got {shape!r}") from None
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh.shape: expected {len(MESH_AXES)} entries for {MESH_AXES}, got {shape}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh.shape: at most one entry may be -1, got {shape}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape: entries must be positive or -1, got {shape}")
    return shape


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills the -1 entry of a mesh shape and checks it against the device count."""
    shape = check_mesh_shape(shape)
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"mesh.shape {shape}: {num_devices} devices not divisible by {known}")
        shape[shape.index(-1)] = num_devices // known
    elif known != num_devices:
        raise ValueError(f"mesh.shape {shape} needs {known} devices, found {num_devices}")
    return tuple(shape)


def batch_local(fn: Any) -> Any:
    """Runs ``fn`` per device on its own slice of the batch via ``jax.shard_map``.

    For parameter-free, per-example math (the DCT, the anchor/residual split):
    every positional argument and every output has the batch on axis 0, so each
    device handles its own videos and no collective is needed. Off-mesh, or when
    ``batch`` maps to no mesh axis, ``fn`` is called directly.
    """

    def wrapped(*args: Any) -> Any:
        rules = _current_rules()
        mesh = _active_mesh()
        if rules is None or mesh is None:
            return fn(*args)
        batch_spec = logical_to_spec(("batch",), rules)
        if batch_spec[0] is None:
            return fn(*args)
        return jax.shard_map(
            fn, in_specs=tuple(batch_spec for _ in args), out_specs=batch_spec,
            check_vma=False)(*args)

    return wrapped


def unsharded_params(params: Any, specs: Any, axis: str = "fsdp", *,
                     min_size: int = 0) -> list[tuple[str, tuple[int, ...], PartitionSpec]]:
    """Parameters of more than ``min_size`` elements whose spec does not use ``axis``.

    ``params`` (arrays or ``ShapeDtypeStruct``s) and ``specs`` (``PartitionSpec``s)
    are trees of the same structure, e.g. the pure dicts of ``train_state.make_setup``.
    Returns ``(path, shape, spec)`` triples, largest first.
    """
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    if len(flat) != len(spec_leaves):
        raise ValueError(f"unsharded_params: {len(flat)} params but {len(spec_leaves)} specs")
    out = []
    for (path, p), spec in zip(flat, spec_leaves):
        used = {a for entry in spec if entry is not None
                for a in (entry if isinstance(entry, tuple) else (entry,))}
        if _size(p.shape) > min_size and axis not in used:
            out.append((jax.tree_util.keystr(path, simple=True, separator="/"),
                        tuple(p.shape), spec))
    return sorted(out, key=lambda item: -_size(item[1]))


def check_params_sufficiently_sharded(params: Any, specs: Any, mesh_shape: dict[str, int], *,
                                      max_unsharded_size: int) -> None:
    """With ``fsdp > 1``, every parameter above ``max_unsharded_size`` elements must use fsdp.

    A large parameter left replicated over fsdp costs its full size (plus two
    Adam moments) on every device, which is what FSDP exists to avoid; it is
    nearly always a missing or misspelt rule. (MaxText's
    ``assert_params_sufficiently_sharded`` has the same purpose.)
    """
    fsdp = mesh_shape.get("fsdp", 1)
    if fsdp <= 1:
        return
    offenders = unsharded_params(params, specs, "fsdp", min_size=max_unsharded_size)
    if offenders:
        listed = "; ".join(f"{path} {shape} {spec}" for path, shape, spec in offenders[:8])
        more = f" and {len(offenders) - 8} more" if len(offenders) > 8 else ""
        raise ValueError(
            f"sharding.rules leave {len(offenders)} parameter(s) of more than"
            f" {max_unsharded_size} elements replicated over the fsdp axis ({fsdp} devices):"
            f" {listed}{more}. Map one of their logical axes to 'fsdp' in"
            " config.sharding.rules, or raise config.sharding.max_unsharded_param_size.")


def _size(shape: Sequence[int]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size
