"""The pipeline's stages stay separable: a training node needs only the table, not brian2;
the simulator needs no torch; and the CLI loads neither until a subcommand needs it."""

import subprocess
import sys

import pytest


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
        "import rmaat.model, rmaat.amrb, rmaat.attention",
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
