"""Imports run one way, package by package, and no module imports itself round a cycle.

Every module's imports are read from its source (``ast``: imports inside
functions and ``if`` blocks count too). ``GROUPS`` lists the packages lowest
first; a module may import its own group or a lower one, never a higher one.
Inside a group, order is kept by the cycle check over the whole tree.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("frejax", "data_pipelines", "configs")

# Lowest first. A name covers a package and everything below it ("frejax.models"
# covers "frejax.models.llm"); the longest matching name decides.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data", ("data_pipelines",)),
    ("run-wide basics", ("frejax", "frejax.sharding", "frejax.distributed")),
    ("building blocks", ("frejax.nn",)),
    ("compression", ("frejax.compression",)),
    ("models", ("frejax.models",)),
    ("converters", ("frejax.models.convert",)),
    ("config", ("frejax.config_lib", "configs", "frejax.cli")),  # cli parses config flags
    ("training", ("frejax.training",)),
    ("inference", ("frejax.inference",)),
    ("studies", ("frejax.studies",)),
    ("entry points", ("frejax.main", "frejax.benchmarks")),
)


def group_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, names) in enumerate(GROUPS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    if best is None:
        raise KeyError(f"{module} is in no group of tests/test_layering.py; add it")
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
    """Imports of ``module`` that point to a higher group, as readable lines."""
    own = group_of(module)
    bad = []
    for line, target in imported_modules(source, module, is_package):
        if group_of(target) > own:
            bad.append(f"{module}:{line} imports {target}"
                       f" ({GROUPS[own][0]} -> {GROUPS[group_of(target)][0]})")
    return bad


def project_modules() -> list[pathlib.Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in project_modules():
        name = module_name(path)
        graph[name] = {m for _, m in imported_modules(path.read_text(), name,
                                                      path.name == "__init__.py") if m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_imports_only_its_own_group_or_lower():
    problems = []
    for path in project_modules():
        problems += backward_imports(module_name(path), path.read_text(),
                                     path.name == "__init__.py")
    assert not problems, "imports against the group order:\n" + "\n".join(problems)


def test_every_project_module_has_a_group():
    for path in project_modules():
        group_of(module_name(path))  # raises naming the module


def test_groups_are_packages():
    for _, names in GROUPS:
        for name in names:
            assert _is_module(name), f"{name} in GROUPS is no module or package"


def test_no_import_cycle_anywhere():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert not cycles({"a": {"b"}, "b": set()})


@pytest.mark.parametrize("module, source", [
    ("data_pipelines.tokenizer", "from frejax.training import train\n"),
    ("data_pipelines.datasets", "def f():\n    from frejax import sharding\n"),
    ("frejax.compression.dct", "import frejax.models.llm\n"),
    ("frejax.inference.predict", "from frejax.studies import natural_qa\n"),
    ("frejax.training.train", "from frejax.inference import predict\n"),
    ("frejax.models.vit", "if True:\n    from frejax import config_lib as c\n"),
    ("frejax.models.llm", "from frejax.models.convert import hf_import\n"),
])
def test_a_backward_import_is_found_even_inside_a_function(module, source):
    assert backward_imports(module, source, is_package=False)


def test_forward_imports_pass():
    assert not backward_imports("frejax.training.train", "from frejax import sharding\n"
                                "from data_pipelines import datasets\n", is_package=False)
