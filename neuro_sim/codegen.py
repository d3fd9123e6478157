"""Brian2 code-generation setup shared by the neuro_sim models.

Brian2 turns each model into generated code for one of three targets:

- ``numpy``: pure Python/NumPy, no compiler.  Tests use it (no minute-long compiles on
  CI); it pays Python overhead on every time step (~1 ms per step here).
- ``cython``: runtime mode; each code object is compiled once and cached in
  ``<cache>/cython``.  Still one Python call per code object per step.
- ``cpp_standalone``: the whole network becomes one C++ program in
  ``<cache>/standalone/<project>``, rebuilt incrementally by ``make``.  A configuration
  seen before recompiles nothing; the run itself takes well under a second.

Measured on this project's shared 2-core machine for ``simulate(16)`` of the tripartite
model (44k steps of 5 ms; wall time of a fresh process, load average 5-12, so noisy):
cpp_standalone 35 s cold / 5-9 s warm, cython 124 s cold / 12-14 s warm, numpy 80 s.
``auto`` therefore picks ``cpp_standalone`` when a C++ compiler and ``make`` work, else
``cython``, else ``numpy``.

The cache root is ``<repo root>/.brian_cache`` (gitignored), overridable with the
environment variable ``RMAAT_BRIAN_CACHE``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neuro_sim.errors import SimulationInputError

#: Modes a user may ask for; ``auto`` resolves to one of the other three.
CODEGEN_MODES = ("auto", "numpy", "cython", "cpp_standalone")
CACHE_ENV = "RMAAT_BRIAN_CACHE"
#: Standalone project directories kept (least recently used ones beyond this are removed;
#: each holds ~5-15 MB of objects and results).
KEEP_STANDALONE_PROJECTS = 8


def cache_dir() -> Path:
    """Root of the project-local Brian2 build cache (created on demand)."""
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / ".brian_cache"
    return root


def validate_codegen(codegen: str) -> str:
    """Return ``codegen`` if it names a known mode, else raise a one-line error."""
    if codegen not in CODEGEN_MODES:
        raise SimulationInputError(
            f"unknown codegen {codegen!r}; choose one of {', '.join(CODEGEN_MODES)}"
        )
    return codegen


@functools.lru_cache(maxsize=None)
def _cxx_compiler_works() -> bool:
    """True when a C++ compiler is on PATH (both compiled targets need one)."""
    return any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


@functools.lru_cache(maxsize=None)
def _standalone_available() -> bool:
    """C++ standalone builds with ``make`` (Brian2's Unix makefile) and a C++ compiler."""
    return _cxx_compiler_works() and shutil.which("make") is not None


@functools.lru_cache(maxsize=None)
def _cython_available() -> bool:
    try:
        import Cython  # noqa: F401
    except ImportError:
        return False
    return _cxx_compiler_works()


def resolve(codegen: str) -> str:
    """Map a requested mode to the Brian2 target that will actually run.

    ``auto`` falls back from ``cpp_standalone`` to ``cython`` to ``numpy`` according to
    what works here; an explicit compiled mode that cannot work raises instead of
    silently running (much) slower.
    """
    validate_codegen(codegen)
    if codegen == "auto":
        if _standalone_available():
            return "cpp_standalone"
        return "cython" if _cython_available() else "numpy"
    if codegen == "cpp_standalone" and not _standalone_available():
        raise SimulationInputError(
            "codegen 'cpp_standalone' needs a C++ compiler (g++ or clang++) and make on PATH; "
            "install them or use codegen='numpy'"
        )
    if codegen == "cython" and not _cython_available():
        raise SimulationInputError(
            "codegen 'cython' needs Cython and a C compiler; install them or use codegen='numpy'"
        )
    return codegen


@dataclass
class BrianSession:
    """One configured Brian2 scope: the target in use and how to finish a run.

    Models create their network inside :func:`session`, call ``net.run`` as usual and
    then :meth:`finish`, which builds and runs the C++ program in standalone mode (a
    no-op for the runtime targets, whose ``net.run`` already simulated).
    """

    target: str
    directory: Path | None = None

    @property
    def standalone(self) -> bool:
        return self.target == "cpp_standalone"

    def finish(self, progress: bool = False) -> None:
        """Compile and execute the standalone program (no-op for runtime targets).

        With ``progress`` a tqdm bar steps through the two stages (the simulation itself
        takes well under a second once compiled; compiling dominates a cold run).
        """
        if not self.standalone:
            return
        from brian2 import device
        from tqdm.auto import tqdm

        bar = tqdm(total=2, desc="C++ standalone: compile", disable=not progress, leave=False)
        try:
            # clean=False keeps the object files: an unchanged model recompiles nothing.
            device.build(directory=str(self.directory), compile=True, run=False, clean=False,
                         with_output=False)
            bar.set_description("C++ standalone: run")
            bar.update()
            device.run(directory=str(self.directory), with_output=False)
            bar.update()
        finally:
            bar.close()


@contextlib.contextmanager
def session(codegen: str, name: str) -> Iterator[BrianSession]:
    """Configure Brian2 for one model run; restore the runtime device afterwards.

    ``name`` names the standalone project directory.  Everything compiled into the
    program (parameters, spike-time arrays, run durations) should be part of it: a
    repeated configuration then recompiles nothing, and switching between two
    configurations does not rebuild either.  Brian2 state (preferences, device) is
    global, so runs must not be nested.
    """
    import brian2
    from brian2 import prefs

    target = resolve(codegen)
    root = cache_dir()
    if target != "cpp_standalone":
        brian2.set_device("runtime")
        prefs.codegen.target = target
        if target == "cython":
            cython_dir = root / "cython"
            cython_dir.mkdir(parents=True, exist_ok=True)
            prefs.codegen.runtime.cython.cache_dir = str(cython_dir)
        brian2.start_scope()
        yield BrianSession(target)
        return

    from brian2.utils.filelock import FileLock

    directory = root / "standalone" / name
    directory.mkdir(parents=True, exist_ok=True)
    # Two processes building the same project directory would clobber each other's
    # sources and objects: the second waits for the first.
    lock = FileLock(str(directory) + ".lock")
    lock.acquire()
    try:
        # Brian2 names code objects uniquely among the *live* ones; objects of an earlier
        # run in this process, still held in reference cycles, would turn
        # "..._codeobject" into "..._codeobject_2" and force a full recompile.
        gc.collect()
        os.utime(directory)  # mark as recently used
        _prune_standalone(directory.parent, keep=KEEP_STANDALONE_PROJECTS)
        brian2.set_device("cpp_standalone", directory=str(directory), build_on_run=False)
        brian2.start_scope()
        yield BrianSession(target, directory)
    finally:
        # Forget this project's objects so a later run in the same process starts clean.
        brian2.device.reinit()
        brian2.set_device("runtime")
        lock.release()


def _prune_standalone(parent: Path, keep: int) -> None:
    """Remove the least recently used project directories beyond ``keep`` (skipping busy ones)."""
    from brian2.utils.filelock import FileLock, Timeout

    projects = sorted((d for d in parent.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for old in projects[:-keep] if len(projects) > keep else []:
        lock = FileLock(str(old) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # another process is using it
        try:
            shutil.rmtree(old, ignore_errors=True)
        finally:
            lock.release()  # the empty lock file stays: unlinking it would race a new locker


def brian2_version() -> str:
    """Installed Brian2 version, or ``"not installed"`` (for provenance attributes)."""
    try:
        from importlib.metadata import version

        return version("brian2")
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        return "not installed"
