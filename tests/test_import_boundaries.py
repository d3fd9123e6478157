"""The pipeline's stages stay separable: a training node needs only the table, not brian2;
the simulator needs no torch; the CLI loads neither until a subcommand needs it; the
modules of rmaat.attention import one way (config <- layers <- factory); no module of any
package imports itself again through others (the whole import graph, lazy imports included);
and no module is longer than MAX_MODULE_LINES."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The packages whose modules the import-graph and size tests read (tests/ and scripts/ are not modules).
PACKAGES = ("neuro_sim", "retention", "rmaat", "pipelines")
#: The most lines a module may have (issue 21: one concept per file; split a longer one along a seam).
MAX_MODULE_LINES = 500
ATTENTION_DIR = REPO / "rmaat" / "attention"
ATTENTION_MODULES = sorted(p.stem for p in ATTENTION_DIR.glob("*.py") if p.stem != "__init__")


def _modules_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter and return the top-level modules it imported."""
    probe = code + "\nimport sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import retention; from retention import load_retention_factors",
        "import retention.table, retention.macro_model, retention.factors",
        "import rmaat.encoder.model, rmaat.encoder.amrb, rmaat.attention",
        "import rmaat.data, rmaat.train.trainer",
    ],
)
def test_training_side_never_imports_brian2(code):
    assert "brian2" not in _modules_after(code)


def test_simulator_never_imports_torch():
    mods = _modules_after("import neuro_sim, neuro_sim.simulate, neuro_sim.tripartite, neuro_sim.astro_rate")
    assert "torch" not in mods


def test_cli_group_is_import_light():
    mods = _modules_after("import pipelines.cli")
    assert "torch" not in mods and "brian2" not in mods


def test_simulate_command_does_not_load_torch():
    mods = _modules_after("import pipelines.simulate_cmd")
    assert "torch" not in mods


def _module_name(path: Path) -> str:
    """``rmaat/train/trainer.py`` -> ``rmaat.train.trainer``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_exports(files: dict[str, Path]) -> dict[str, dict[str, str]]:
    """package -> its ``_EXPORTS`` table (name -> defining module), for packages that export lazily."""
    tables = {}
    for module, path in files.items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
                tables[module] = ast.literal_eval(node.value)
    return tables


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, for every module of PACKAGES, from the source.

    Every import statement counts wherever it stands: at module level, inside a function (a lazy
    import still closes a circle once it runs) and under ``if TYPE_CHECKING:`` (a type-only
    import still ties the two modules together, and is one ``from __future__`` change away from a
    run-time one). ``from .x import y`` is resolved against the importing module's package;
    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, of the
    module a lazy ``_EXPORTS`` table maps ``name`` to, and of ``pkg`` itself otherwise;
    ``importlib.import_module("literal")`` counts too. Not seen: imports by a computed name (the
    task registry's loaders, ``_EXPORTS`` lookups inside ``__getattr__``), and the implicit
    import of a module's parent packages (their ``__init__`` files are cheap here).
    """
    files = {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}
    exports = _lazy_exports(files)

    def owner(name: str) -> str | None:  # the longest prefix of a dotted name that is a module
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(owner(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y, from .. import z
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:
                        targets.add(f"{base}.{alias.name}")
                    elif alias.name in exports.get(base, {}):
                        targets.add(exports[base][alias.name])
                    else:
                        targets.add(owner(base))
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                targets.add(owner(node.args[0].value))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _attention_imports() -> dict[str, set[str]]:
    """The sibling modules each ``rmaat.attention`` module imports (:func:`import_graph` restricted
    to the package): function-level imports count, and a name taken from the package
    (``from rmaat.attention import build_attention``) counts as its defining module."""
    prefix = "rmaat.attention."
    return {module.removeprefix(prefix): {t.removeprefix(prefix) for t in targets if t.startswith(prefix)}
            for module, targets in import_graph().items() if module.startswith(prefix)}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            found = visit(target, path + [node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import circle [a, b, ..., a] through each strongly connected part of ``graph`` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    parts: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = set()
            while not part or member != node:
                member = stack.pop()
                part.add(member)
            if len(part) > 1:
                parts.append(part)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_circle({n: graph[n] & part for n in part}) for part in parts]


def test_attention_modules_import_without_a_circle():
    """config is imported by every layer, so it imports none; the factory imports the layers."""
    graph = _attention_imports()
    assert graph["config"] == set(), f"rmaat/attention/config.py imports {sorted(graph['config'])}"
    circle = _circle(graph)
    assert circle is None, "import circle in rmaat.attention: " + " -> ".join(circle)


def test_each_attention_module_imports_alone():
    """Each module of rmaat.attention imports first and alone (one interpreter, the package's
    modules dropped between imports); the config needs no torch."""
    assert "torch" not in _modules_after("import rmaat.attention.config")
    probe = (
        "import importlib, sys\n"
        f"for name in {ATTENTION_MODULES!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('rmaat.attention')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module('rmaat.attention.' + name)\n"
        "from rmaat.attention import build_attention, AttentionConfig\n"
        "for kind in ('astro', 'linear', 'softmax'):\n"
        "    build_attention(AttentionConfig(kind=kind, d_model=8, n_heads=2, seq_len=4))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_import_circle_in_any_package():
    """No module of neuro_sim, retention, rmaat or pipelines imports itself again through others
    (every import counted, lazy and type-only ones too: see import_graph)."""
    graph = import_graph()
    assert len(graph) > 50 and "rmaat.train.trainer" in graph["rmaat.train.lm_trainer"]  # the graph is read
    circles = _circles(graph)
    assert not circles, "import circle(s): " + "; ".join(" -> ".join(circle) for circle in circles)


def test_circle_finder_names_a_circle():
    """The finder reports a circle as the path that closes it, one per tangle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(_circles(graph)) == [["a", "b", "c", "a"], ["d", "e", "d"]]


def test_no_module_is_longer_than_the_limit():
    """No module of the packages exceeds MAX_MODULE_LINES lines."""
    lengths = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines())
               for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    too_long = {path: n for path, n in sorted(lengths.items()) if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split each along a seam): {too_long}"


def test_model_families_import_the_shared_parts_not_each_other():
    """rmaat.encoder (classifier) and rmaat.lm (byte LM) each build on the shared parts
    (attention, block, embeddings, memory, replay, ...); neither imports the other, and no shared
    part imports a family."""
    graph = import_graph()
    families = ("rmaat.encoder", "rmaat.lm")

    def family(module: str) -> str | None:
        return next((f for f in families if module == f or module.startswith(f + ".")), None)

    shared = [m for m in graph if m.startswith("rmaat.") and m.count(".") == 1 and family(m) is None
              and (REPO / "rmaat" / f"{m.split('.')[1]}.py").is_file()] + \
             [m for m in graph if m.startswith("rmaat.attention")]
    assert {"rmaat.block", "rmaat.embeddings", "rmaat.memory", "rmaat.replay", "rmaat.attention.causal"} <= set(shared)
    crossing = sorted(f"{m} -> {t}" for m in graph for t in graph[m]
                      if family(m) and family(t) and family(m) != family(t))
    assert not crossing, f"one model family imports the other: {crossing}"
    upward = sorted(f"{m} -> {t}" for m in shared for t in graph[m] if family(t))
    assert not upward, f"a shared part imports a model family: {upward}"
