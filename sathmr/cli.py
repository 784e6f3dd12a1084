"""The `sathmr` command line. User errors print one line and exit non-zero; bugs keep their traceback."""

from __future__ import annotations

import sys

import click

from sathmr import __version__
from sathmr.errors import SathmrError


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SathmrError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sathmr")
def main() -> None:
    """SAT-HMR: real-time multi-person 3D human mesh estimation with scale-adaptive tokens."""


def _register() -> None:
    from sathmr.bench import bench_command
    from sathmr.body.cli import assets
    from sathmr.export.cli import export_command
    from sathmr.demo import demo_command
    from sathmr.infer import infer_command
    from sathmr.parity import parity_command
    from sathmr.train.cli import eval_command, train_command
    from sathmr.train.data.cli import data

    main.add_command(assets)
    main.add_command(infer_command)
    main.add_command(demo_command)
    main.add_command(data)
    main.add_command(train_command)
    main.add_command(eval_command)
    main.add_command(export_command)
    main.add_command(parity_command)
    main.add_command(bench_command)


_register()
