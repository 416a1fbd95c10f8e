"""Every ``python -m`` command in the README and docs/ names a module and flags that exist.

Commands are read from fenced code blocks (backslash continuations joined) and from
inline code. A command's module must be found, each ``--flag`` must be one the module
(or the shared command-line helpers) defines, and each ``--config.<key>`` must be a key
of the config schema. The commands themselves run elsewhere in the suite where they
are cheap; this keeps the documented spelling of all of them from going stale.
"""

import importlib.util
import pathlib
import re
import shlex

import pytest

from data_pipelines import package_assets
from frejax import config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Flags every absl program takes, and those of the shared helpers the commands import.
COMMON_FLAGS = {"help", "helpfull", "helpshort", "debug"}
SHARED_SOURCES = [REPO / "frejax" / "cli.py"]
_DEFINE = re.compile(r"""(?:DEFINE_\w+|add_argument)\(\s*["'](?:--)?([\w.-]+)["']""")


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``python -m`` command in the docs."""
    out = []
    for path in DOCS:
        text = path.read_text()
        blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
        lines = []
        for block in blocks:
            lines += block.replace("\\\n", " ").splitlines()
        lines += re.findall(r"`(python -m [^`]+)`", text)
        for line in lines:
            for part in re.split(r"&&|;", line.split("#")[0]):
                part = part.strip()
                if part.startswith("python -m "):
                    try:
                        argv = shlex.split(part)
                    except ValueError:
                        argv = part.split()
                    out.append((f"{path.relative_to(REPO)}: {part[:80]}", argv[2:]))
    return out


# Commands of other programs the docs give: their flags are read from their own sources.
LMMS_EVAL = "lmms-eval==0.7.3"


def _origin(module: str) -> pathlib.Path | None:
    if module == "lmms_eval":   # fetched and unpacked, as tests/test_lmms_eval_model.py does
        tree = package_assets.wheel_tree(LMMS_EVAL, package_assets.asset_dir("lmms_eval_0.7.3_wheel"))
        return pathlib.Path(tree) / "lmms_eval" / "__main__.py"
    spec = importlib.util.find_spec(module)
    return None if spec is None else pathlib.Path(spec.origin)


def _module_flags(module: str) -> set[str]:
    sources = [_origin(module), *SHARED_SOURCES]
    return COMMON_FLAGS | {m for src in sources for m in _DEFINE.findall(src.read_text())}


COMMANDS = documented_commands()
SCHEMA = set(config_lib._flatten(config_lib.base_config()))


def test_the_docs_hold_commands():
    modules = {argv[0] for _, argv in COMMANDS}
    assert {"frejax.main", "frejax.inference.predict", "frejax.studies.natural_qa"} <= modules


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_names_a_module_and_flags_that_exist(where, argv):
    module = argv[0]
    if module == "pytest":
        return
    assert _origin(module) is not None, f"{where}: no module {module}"
    flags = _module_flags(module)
    for token in argv[1:]:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0]
        if name.startswith("config."):
            key = name.removeprefix("config.")
            assert key in SCHEMA or any(k.startswith(key + ".") for k in SCHEMA), \
                f"{where}: --config.{key} is no config key"
        else:
            assert name in flags, f"{where}: {module} defines no --{name}"


def test_the_check_finds_a_stale_module_and_flag():
    assert importlib.util.find_spec("frejax.predict") is None  # moved to frejax.inference
    assert "question" in _module_flags("frejax.inference.predict")
    assert "nonsense" not in _module_flags("frejax.inference.predict")


def _run_help(module: str) -> tuple[str, int, str]:
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return module, proc.returncode, proc.stdout + proc.stderr


def test_every_documented_module_runs_as_a_command():
    """``python -m <module> --help`` exits 0 for every documented module: it imports on a
    fresh interpreter and its flags are defined without clashes (two at a time)."""
    import concurrent.futures
    # lmms_eval's own command line runs in tests/test_lmms_eval_model.py.
    modules = sorted({argv[0] for _, argv in COMMANDS} - {"pytest", "venv", "pip", "lmms_eval"})
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run_help, modules))
    # absl prints the help and exits 1, argparse exits 0; a module that fails to import
    # or to define its flags prints a traceback instead of the usage.
    failed = [f"{m} (exit {rc}): {out[-400:]}" for m, rc, out in results
              if "Traceback" in out or rc not in (0, 1) or not re.search(r"(?i)usage|flags", out)]
    assert not failed, "\n".join(failed)
