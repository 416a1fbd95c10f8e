"""Config and tokenizer drift between a checkpoint and the run that restores it.

Which keys must match, may change, or change only how the same params are
computed is declared beside the config schema (``config_lib.MUST_MATCH_KEYS``,
``COMPUTE_ONLY_KEYS``, ``SAFE_KEYS``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from data_pipelines import tokenizer as tokenizer_lib
from frejax.config_lib import (COMPUTE_ONLY_KEYS, MODEL_SHAPE_KEYS, MUST_MATCH_KEYS,
                               SAFE_KEYS, matches_key)


class ConfigDriftError(ValueError):
    """The checkpoint was written with a config whose model shape differs."""


_ABSENT = "<absent>"


def check_model_shape(saved: Mapping[str, Any], current: ml_collections.ConfigDict, *,
                      where: str) -> None:
    """Inference: fails naming the keys (``MODEL_SHAPE_KEYS``) whose saved values would give
    the checkpoint's params other shapes than ``current``'s model; nothing is logged."""
    old = _flatten(saved)
    new = _flatten(json.loads(json.dumps(current.to_dict())))
    fatal = {k: (old[k], new[k]) for k in sorted(set(old) & set(new))
             if old[k] != new[k] and matches_key(k, MODEL_SHAPE_KEYS)
             and not matches_key(k, COMPUTE_ONLY_KEYS) and not k.endswith(".pretrained")}
    if fatal:
        listing = "; ".join(f"{k}: checkpoint {a!r}, --config {b!r}" for k, (a, b) in fatal.items())
        raise ConfigDriftError(
            f"--config describes another model than {where} ({listing}); pass the config the"
            " checkpoint was trained with (the same file and arg as for frejax.main)")


def check_config_drift(saved: Mapping[str, Any], current: ml_collections.ConfigDict, *,
                       where: str = "the checkpoint") -> None:
    """Fails if a ``MUST_MATCH_KEYS`` key differs; logs every other change.

    ``saved`` is the config JSON of a checkpoint. Keys outside both lists (the
    optimiser, batch size, seed, ...) may change, with a warning: the run is then
    no longer the one that was saved. A key only one side has (the schema grew
    or shrank between versions) is warned about too; if it changed a shape, the
    structure check of the restore names the arrays.
    """
    old = _flatten(saved)
    new = _flatten(json.loads(json.dumps(current.to_dict())))  # tuples -> lists, as saved
    changed = {k: (old.get(k, _ABSENT), new.get(k, _ABSENT))
               for k in sorted(set(old) | set(new)) if old.get(k, _ABSENT) != new.get(k, _ABSENT)}
    fatal = {k: v for k, v in changed.items()
             if matches_key(k, MUST_MATCH_KEYS) and not matches_key(k, COMPUTE_ONLY_KEYS)
             and _ABSENT not in v}
    if fatal:
        lines = "\n  ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in fatal.items())
        raise ConfigDriftError(
            f"config differs from {where} in keys that fix the model shape:\n  {lines}\n"
            "Resume with the checkpoint's values, or train in a new --workdir.")
    risky = {k: v for k, v in changed.items() if not matches_key(k, SAFE_KEYS)}
    if risky:
        logging.warning("Resuming from %s with changed settings: %s", where,
                        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in risky.items()))
    safe = {k: v for k, v in changed.items() if k not in risky}
    if safe:
        logging.info("Resuming from %s; changed (safe): %s", where,
                     ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in safe.items()))


def check_tokenizer_drift(saved: Any, current: Any, *, where: str) -> None:
    """Resuming with another vocabulary (e.g. annotations that changed) would misread every id."""
    a, b = tokenizer_lib.to_spec(saved), tokenizer_lib.to_spec(current)
    if a == b:
        return
    detail = ""
    if a.get("kind") == b.get("kind") == "word":
        gone = sorted(set(a["words"]) - set(b["words"]))
        new = sorted(set(b["words"]) - set(a["words"]))
        detail = f": words only in the checkpoint {gone[:8]}, only now {new[:8]}"
    raise ConfigDriftError(
        f"the tokenizer differs from the one saved at {where} ({a.get('kind')} vs"
        f" {b.get('kind')}{detail}); resume with the data and tokenizer the run started with,"
        " or start a new workdir")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
