"""The ``pipeline`` command: simulate -> fit -> table -> model -> train, one subcommand each.

Subcommands live in their own modules and are imported only when invoked, so that
``pipeline simulate`` never imports torch and ``pipeline train`` never imports brian2
(a GPU training node needs only the retention table).

User errors (bad parameters, missing files, unknown tasks) are raised anywhere in the
code as the stage's own error class; here they become one line on stderr and exit
status 1, without a traceback.
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
    "bench": "pipelines.bench_cmd:bench",
    "plot": "pipelines.plot_cmd:plot",
    "experiment": "pipelines.experiment_cmd:experiment",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported when first used."""

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
