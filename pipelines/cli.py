"""The ``pipeline`` command: simulate -> fit -> table -> model -> train, one subcommand each.

Subcommands live in their own modules and are imported only when invoked, so that
``pipeline simulate`` never imports torch and ``pipeline train`` never imports brian2
(a GPU training node needs only the retention table).

User errors (bad parameters, missing files, unknown tasks) are raised anywhere in the
code as the stage's own error class; here they become one line on stderr and exit
status 1, without a traceback. So do usage errors of every subcommand, however deeply nested
(an unknown option, a missing argument, a bad value, an unknown command): one ``Error:`` line
naming the command and its ``--help``, exit status 1, instead of click's usage block and
status 2. ``--help`` still prints the help and exits 0; a group called without a subcommand
still prints its help.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from neuro_sim.errors import SimulationInputError
from retention.errors import OutputPathError, RetentionTableError
from rmaat.errors import RMAATUserError

#: Exceptions that mean "the user asked for something impossible": shown as one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    SimulationInputError,
    RetentionTableError,
    OutputPathError,
    RMAATUserError,
)

#: name -> "module:attribute" of each subcommand, loaded on demand.
SUBCOMMANDS: dict[str, str] = {
    "simulate": "pipelines.simulate_cmd:simulate",
    "data": "pipelines.data_cmd:data",
    "train": "pipelines.train_cmd:train",
    "evaluate": "pipelines.train_cmd:evaluate",
    "generate": "pipelines.generate_cmd:generate",
    "export": "pipelines.export_cmd:export",
    "bench": "pipelines.bench_cmd:bench",
    "plot": "pipelines.plot_cmd:plot",
    "experiment": "pipelines.experiment_cmd:experiment",
    "probe": "pipelines.probe_cmd:probe",
}


class UsageLine(click.ClickException):
    """A click usage error as one line (exit status 1, like every other user error)."""

    exit_code = 1


def usage_line(error: click.UsageError) -> click.ClickException:
    """``pipeline experiment run: no such option '--bogus' (see 'pipeline experiment run --help')``:
    the message of a usage error on one line, with the command it belongs to and its help."""
    message = " ".join(error.format_message().split()).rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = error.ctx if error.ctx is not None else _innermost_context(error)
    path = ctx.command_path if ctx is not None else None
    if not path:
        return UsageLine(message)
    return UsageLine(f"{path}: {message} (see '{path} --help')")


def _innermost_context(error: BaseException) -> click.Context | None:
    """The context of the command whose parsing raised ``error``, for the parser's errors that
    carry none (``option '--size' requires an argument``): the last ``ctx`` on its traceback."""
    found, tb = None, error.__traceback__
    while tb is not None:
        ctx = tb.tb_frame.f_locals.get("ctx")
        if isinstance(ctx, click.Context):
            found = ctx
        tb = tb.tb_next
    return found


class LazyGroup(click.Group):
    """A click group whose subcommands are imported when first used; user errors and usage
    errors anywhere below it become one line (see the module docstring)."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        # the group's own options (``pipeline --bogus``) are parsed here, outside invoke
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare ``pipeline``: click prints the help
        except click.UsageError as error:
            raise usage_line(error) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in SUBCOMMANDS if self._module_exists(name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            raise click.ClickException(str(error)) from None
        except click.exceptions.NoArgsIsHelpError:
            raise  # a group without its subcommand (``pipeline experiment``): its help
        except click.UsageError as error:  # parsing a subcommand's arguments, or raised by one
            raise usage_line(error) from None

    @staticmethod
    def _module_exists(name: str) -> bool:
        module_name = SUBCOMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup)
@click.version_option(package_name="rmaat-pipeline")
def cli() -> None:
    """RMAAT pipeline: simulate astrocyte LTP, build retention tables, train RMAAT."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pipeline")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
