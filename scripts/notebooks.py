"""Execute the notebooks in place, deterministically, and check that committed outputs are current.

    python scripts/notebooks.py execute [NOTEBOOK ...]   # run each, write it back with its outputs
    python scripts/notebooks.py check [NOTEBOOK ...]     # run each, compare with the committed one
    python scripts/notebooks.py check --images           # ... image bytes too (same machine only)

(default: every ``notebooks/*.ipynb``). ``scripts/make_figures.sh`` runs ``execute``;
``tests/test_notebooks.py`` loads this file for :func:`execute` and :func:`differences`.

Each notebook runs top to bottom in a fresh kernel of *this* interpreter (a kernelspec written to
a temporary ``JUPYTER_PATH``, searched before the user's own kernels), in the repository root
(so ``import rmaat`` is this checkout's code), with matplotlib's inline backend. What is written
back is made reproducible: no execution timestamps (``record_timing=False``), the notebook
metadata reduced to the kernelspec and the language name (no interpreter version), cell ids kept
as committed. A re-run on an unchanged tree therefore rewrites the same bytes (the notebooks seed
whatever they draw at random).

The currency check (:func:`differences`) compares, cell by cell, what each code cell shows: the
number and kind of its outputs; stream and ``text/plain`` outputs exactly, after
:func:`normalise_text` (memory addresses and this checkout's absolute path); and for each image
its format and pixel size. Image bytes are compared only with ``--images``: two executions on
one machine give byte-identical PNGs (checked, with 1 and 2 torch threads), but a PNG also
depends on the FreeType and matplotlib build that drew it, so by default a machine whose fonts
render one pixel differently does not call a current figure stale.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: Seconds any one cell may take (each notebook runs on CPU in under two minutes; issue 5).
CELL_TIMEOUT_S = 240
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _write_kernel(root: Path) -> None:
    """Make ``root`` a JUPYTER_PATH whose python3 kernel is the interpreter running this script."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL["display_name"], "language": KERNEL["language"],
    }))


def execute(path: Path, timeout: int = CELL_TIMEOUT_S) -> Any:
    """The notebook at ``path`` executed in a fresh kernel (an nbformat node; the file is not
    written). Raises nbclient's CellExecutionError, naming the cell, on any error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    saved = {key: os.environ.get(key) for key in ("JUPYTER_PATH", "MPLBACKEND")}
    with tempfile.TemporaryDirectory(prefix="rmaat-jupyter-") as kernels:
        _write_kernel(Path(kernels))
        os.environ["JUPYTER_PATH"] = kernels
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                           resources={"metadata": {"path": str(REPO)}}).execute()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return tidy(nb)


def tidy(nb: Any) -> Any:
    """``nb`` with nothing machine- or time-dependent left: metadata reduced, and consecutive
    stream outputs of one cell merged (how a print's lines are cut into messages is timing)."""
    nb.metadata = {"kernelspec": dict(KERNEL), "language_info": {"name": "python"}}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        merged: list[Any] = []
        for output in cell.outputs:
            if (output.output_type == "stream" and merged and merged[-1].output_type == "stream"
                    and merged[-1].name == output.name):
                merged[-1].text += output.text
            else:
                merged.append(output)
        cell.outputs = merged
    return nb


def write(nb: Any, path: Path) -> None:
    import nbformat

    nbformat.validate(nb)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        nbformat.write(nb, handle)


def normalise_text(text: str) -> str:
    """Text output without what changes between identical runs: memory addresses, this checkout's path."""
    return _ADDRESS.sub("0x…", text.replace(str(REPO), "<repo>"))


def _png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    return struct.unpack(">II", raw[16:24])  # the IHDR chunk: width, height


def shown(output: Any, images: bool = False) -> list[tuple]:
    """What one output shows, as comparable items (``images``: with each image's bytes)."""
    kind = output["output_type"]
    if kind == "stream":
        return [(kind, output["name"], normalise_text(output["text"]))]
    if kind == "error":
        return [(kind, output["ename"], normalise_text(output["evalue"]))]
    items = []
    for mime, data in sorted(output.get("data", {}).items()):
        if mime.startswith("image/"):
            size = _png_size(data) if mime == "image/png" else None
            items.append((kind, mime, size) + ((hashlib.sha256(str(data).encode()).hexdigest(),) if images else ()))
        else:
            text = data if isinstance(data, str) else json.dumps(data, sort_keys=True)
            items.append((kind, mime, normalise_text(text)))
    return items


def differences(committed: Any, executed: Any, images: bool = False) -> list[str]:
    """Where the committed notebook's outputs differ from a fresh execution's (empty: current).
    With ``images``, image bytes must be equal too (meaningful on the machine that committed them)."""
    old = [c for c in committed.cells if c.cell_type == "code"]
    new = [c for c in executed.cells if c.cell_type == "code"]
    if [c.source for c in old] != [c.source for c in new]:
        return ["the code cells differ (executed a different notebook?)"]
    found = []
    for i, (a, b) in enumerate(zip(old, new), start=1):
        before = [item for out in a.outputs for item in shown(out, images)]
        after = [item for out in b.outputs for item in shown(out, images)]
        if before != after or a.execution_count != b.execution_count:
            first = next((f"{x!r:.200} != {y!r:.200}" for x, y in zip(before, after) if x != y),
                         f"{len(before)} outputs committed, {len(after)} now")
            found.append(f"code cell {i} (`{a.source.splitlines()[0] if a.source else ''}`): {first}")
    return found


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("execute", "check"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    import nbformat

    images = "--images" in argv
    paths = [Path(p).resolve() for p in argv[1:] if p != "--images"] or NOTEBOOKS
    stale = 0
    for path in paths:
        executed = execute(path)
        if argv[0] == "execute":
            write(executed, path)
            print(f"executed {path.relative_to(REPO)}")
            continue
        found = differences(nbformat.read(path, as_version=4), executed, images)
        stale += bool(found)
        print(f"{path.relative_to(REPO)}: " + ("current" if not found else "STALE\n  " + "\n  ".join(found)))
    if stale:
        print("rerun `bash scripts/make_figures.sh notebooks` and commit the notebooks", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
