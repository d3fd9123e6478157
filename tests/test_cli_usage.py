"""Usage errors of `pipeline` (an unknown option, a missing argument, a bad value, an unknown
command) in every subcommand, however deeply nested: one line on stderr naming the command and
its --help, exit status 1 (the status of every user error), never click's usage block with
status 2; --help still prints the help and exits 0.

The walk goes over the click tree itself, so a subcommand added later is covered without
editing this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipelines.cli import cli


def walk(command: click.Command, path: tuple[str, ...] = ()):
    """(path, command) of ``command`` and of every subcommand below it, depth first."""
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, name), (*path, name))


COMMANDS = [path for path, _ in walk(cli)]


def _one_line_usage_error(result, *fragments: str) -> str:
    """The single stderr line of a usage error; asserts exit 1 through SystemExit, nothing on stdout."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert result.stdout == "", result.stdout
    assert "Usage:" not in lines[0] and "Try '" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_the_walk_reaches_nested_subcommands():
    """The walk sees the top-level group, its subcommands and their subcommands (else the tests
    below would pass while checking nothing)."""
    assert () in COMMANDS and ("train",) in COMMANDS and ("experiment", "run",) in COMMANDS
    assert ("data", "generate") in COMMANDS and ("plot", "training") in COMMANDS and len(COMMANDS) > 15


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "pipeline")
def test_unknown_option_is_one_line_and_exit_1(path):
    """`pipeline <cmd> --no-such-flag`: one ``Error:`` line on stderr with the command, the option
    and the command's --help; exit 1; nothing on stdout."""
    result = CliRunner().invoke(cli, [*path, "--no-such-flag"], prog_name="pipeline")
    line = _one_line_usage_error(result, "--no-such-flag", " ".join(("pipeline", *path)) + " --help")
    assert line.startswith("Error: " + " ".join(("pipeline", *path)) + ": no such option")


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "pipeline")
def test_help_still_prints_help_and_exits_0(path):
    """`pipeline <cmd> --help` is not an error: the usage and help on stdout, exit 0."""
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="pipeline")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: " + " ".join(("pipeline", *path))) and result.stderr == ""


@pytest.mark.parametrize("args, fragments", [
    (["experiment", "run"], ["pipeline experiment run: missing argument 'NAME'"]),
    (["experiment", "run", "memory", "--scale", "nope"], ["invalid value for '--scale'", "'nope'"]),
    (["experiment", "run", "memory", "--jobs", "x"], ["invalid value for '--jobs'", "'x' is not a valid integer"]),
    (["experiment", "list", "extra"], ["pipeline experiment list: got unexpected extra argument (extra)"]),
    (["nosuch"], ["pipeline: no such command 'nosuch'", "(see 'pipeline --help')"]),
    (["experiment", "nosuch"], ["pipeline experiment: no such command 'nosuch'"]),
    (["data", "generate", "--size"], ["pipeline data generate: option '--size' requires an argument"]),
])
def test_other_usage_errors_are_one_line_and_exit_1(args, fragments):
    """A missing argument, a bad choice, a bad integer, an extra argument, an unknown (nested)
    command, an option without its value: each one line and exit 1."""
    _one_line_usage_error(CliRunner().invoke(cli, args, prog_name="pipeline"), *fragments)


def test_bare_group_still_shows_its_help():
    """`pipeline experiment` without a subcommand is a request for the group's help, not turned
    into an error line: the help text (several lines, the subcommands listed) is shown."""
    result = CliRunner().invoke(cli, ["experiment"], prog_name="pipeline")
    assert "Usage: pipeline experiment" in result.output and "report" in result.output


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "pipeline"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipelines.cli"]


@pytest.mark.parametrize("launcher", ["console script", "python -m"])
def test_unknown_option_in_a_real_process(launcher):
    """The installed `pipeline` script (and `python -m pipelines.cli`) in a subprocess: exit status
    1, stdout empty, exactly one non-empty stderr line -- what a shell or CI job sees."""
    command = _console_script() if launcher == "console script" else [sys.executable, "-m", "pipelines.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "experiment", "run", "memory", "--bogus"], capture_output=True, text=True,
                          env=env, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), done.stderr
    assert lines[0].startswith("Error: pipeline experiment run: no such option '--bogus'")
    assert "(see 'pipeline experiment run --help')" in lines[0]
