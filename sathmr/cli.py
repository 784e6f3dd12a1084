"""The `sathmr` command line. User errors print one line and exit non-zero; bugs keep their traceback."""

from __future__ import annotations

import logging
import sys
import traceback

import click

from sathmr import __version__
from sathmr.bench.cli import bench_command
from sathmr.body.cli import assets
from sathmr.demo import demo_command
from sathmr.errors import SathmrError
from sathmr.export.cli import export_command
from sathmr.infer import infer_command
from sathmr.parity import parity_command
from sathmr.serve.cli import serve_command
from sathmr.train.cli import eval_command, train_command
from sathmr.train.data.cli import data
from sathmr.zoo.cli import models_command, weights_group


class Group(click.Group):
    """User errors (``SathmrError``) become one line and exit code 2 (with ``--debug``: the traceback too);
    anything else is a bug and propagates with its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SathmrError as exc:
            if ctx.params.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sathmr")
@click.option("--debug", is_flag=True, help="Show the traceback of user errors too.")
def main(debug: bool) -> None:
    """SAT-HMR: real-time multi-person 3D human mesh estimation with scale-adaptive tokens."""
    logger = logging.getLogger("sathmr")        # progress lines (export stages, ...) go to stderr
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


for command in (assets, infer_command, demo_command, data, train_command, eval_command, export_command,
                parity_command, bench_command, serve_command, models_command, weights_group):
    main.add_command(command)
