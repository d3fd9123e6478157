"""The pipeline's stages stay separable: a training node needs only the table, not brian2;
the simulator needs no torch; the CLI loads neither until a subcommand needs it; and the
modules of rmaat.attention import one way (config <- layers <- factory), with no circle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ATTENTION_DIR = Path(__file__).resolve().parents[1] / "rmaat" / "attention"
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


def _attention_imports() -> dict[str, set[str]]:
    """The sibling modules each ``rmaat.attention`` module imports, from its source.

    Imports inside functions count too (a lazy import still closes a circle), and a name
    taken from the package (``from rmaat.attention import build_attention``) counts as its
    defining module.
    """
    from rmaat.attention import _EXPORTS  # the package itself is torch-free

    graph: dict[str, set[str]] = {}
    for name in ATTENTION_MODULES:
        targets: set[str] = set()
        for node in ast.walk(ast.parse((ATTENTION_DIR / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative: from .x import y
                    module = "rmaat.attention" + (f".{module}" if module else "")
                candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                parts = candidate.split(".")
                if parts[:2] != ["rmaat", "attention"] or len(parts) < 3:
                    continue
                sibling = _EXPORTS[parts[2]].rsplit(".", 1)[1] if parts[2] in _EXPORTS else parts[2]
                if sibling in ATTENTION_MODULES and sibling != name:
                    targets.add(sibling)
        graph[name] = targets
    return graph


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
