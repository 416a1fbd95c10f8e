"""Imports run one way: data, compression, models, config, state, inference, training, entry points.

Every module's imports are read from its source (``ast``: imports inside
functions and ``if`` blocks count too) and checked against ``LAYERS``. A module
may import its own layer or a lower one, never a higher one.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("frejax", "data_pipelines", "configs", "benchmarks")

# Lowest first. A name matches a module and everything below it ("frejax.models"
# covers "frejax.models.llm"); the longest matching name decides.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("text and decoding", ("data_pipelines", "data_pipelines.tokenizer",
                           "data_pipelines.video_decode", "data_pipelines.package_assets")),
    ("annotation files", ("data_pipelines.annotations", "data_pipelines.video_benchmarks")),
    ("sources and converters", ("data_pipelines.video_qa_synthetic", "data_pipelines.video_folder",
                                "data_pipelines.array_record_shards",
                                "data_pipelines.tfds_video_folder",
                                "data_pipelines.natural_footage",
                                "data_pipelines.natural_video_qa")),
    ("grain chain", ("data_pipelines.input_pipeline",)),
    ("global batches", ("data_pipelines.datasets",)),
    ("core", ("frejax", "frejax.sharding", "frejax.attention", "frejax.layers", "frejax.distributed",
              "frejax.metric_logging", "frejax.kept_information")),
    ("compression", ("frejax.compression",)),
    ("models", ("frejax.models",)),
    ("config", ("frejax.config_lib", "configs")),
    ("state", ("frejax.train_state", "frejax.checkpointing", "frejax.evaluate")),
    ("inference", ("frejax.streaming", "frejax.token_cache", "frejax.predict", "frejax.export",
                   "frejax.latent_cache")),
    ("training loop", ("frejax.train",)),
    ("entry points", ("frejax.main", "frejax.aot", "frejax.analyze", "frejax.benchmark_eval",
                      "frejax.natural_qa", "frejax.natural_qa_report",
                      "benchmarks")),
)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    if best is None:
        raise KeyError(f"{module} is in no layer of tests/test_layering.py; add it")
    return best


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of a project module, at any depth."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import mod`` imports the module ``pkg.mod`` when it is one.
            out += [(node.lineno, f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base)
                    for a in node.names]
    return [(line, m) for line, m in out if m.split(".")[0] in PACKAGES]


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def backward_imports(module: str, source: str, is_package: bool) -> list[str]:
    """Imports of ``module`` that point to a higher layer, as readable lines."""
    own = layer_of(module)
    bad = []
    for line, target in imported_modules(source, module, is_package):
        if layer_of(target) > own:
            bad.append(f"{module}:{line} imports {target}"
                       f" ({LAYERS[own][0]} -> {LAYERS[layer_of(target)][0]})")
    return bad


def project_modules() -> list[pathlib.Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_every_module_imports_only_its_own_layer_or_lower():
    problems = []
    for path in project_modules():
        problems += backward_imports(module_name(path), path.read_text(),
                                     path.name == "__init__.py")
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_every_project_module_has_a_layer():
    for path in project_modules():
        layer_of(module_name(path))  # raises naming the module


@pytest.mark.parametrize("module, source", [
    ("data_pipelines.tokenizer", "from frejax import train\n"),
    ("data_pipelines.datasets", "def f():\n    from frejax import sharding\n"),
    ("frejax.compression.dct", "import frejax.models.llm\n"),
    ("frejax.predict", "from frejax import train\n"),
    ("frejax.models.vit", "if True:\n    from frejax import config_lib as c\n"),
])
def test_a_backward_import_is_found_even_inside_a_function(module, source):
    assert backward_imports(module, source, is_package=False)


def test_forward_imports_pass():
    assert not backward_imports("frejax.train", "from frejax import sharding\n"
                                "from data_pipelines import datasets\n", is_package=False)
