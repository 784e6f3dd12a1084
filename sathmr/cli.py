"""The `sathmr` command line. User errors print one line and exit non-zero; bugs keep their traceback.

Commands are imported when they run (or show their help), never all at once: ``sathmr --help`` and
``--version`` import click alone, and each command module keeps torch, ONNX and scipy inside its
functions, so ``sathmr infer --help`` does not wait for them either (``tests/test_cli_startup.py``).
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

import click

from sathmr import __version__
from sathmr.common.errors import SathmrError

#: name → (module, attribute, the line `sathmr --help` shows for it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "assets": ("sathmr.body.cli", "assets", "SMPL body-model files: check a folder, write a synthetic one."),
    "bench": ("sathmr.bench.cli", "bench_command", "Latency, throughput and accuracy per backend and stage."),
    "data": ("sathmr.train.data.cli", "data", "Dataset tools: synthetic training data."),
    "demo": ("sathmr.demo", "demo_command", "The pipeline end to end on synthetic scenes."),
    "eval": ("sathmr.train.cli", "eval_command", "Evaluate with the original protocols (F1, MPJPE, MVE)."),
    "export": ("sathmr.export.cli", "export_command", "Export for ONNX Runtime or TensorRT."),
    "infer": ("sathmr.infer", "infer_command", "People and SMPL meshes from images, videos, streams."),
    "models": ("sathmr.zoo.cli", "models_command", "The model registry, and what is on this machine."),
    "parity": ("sathmr.parity", "parity_command", "Compare two backends on the same images."),
    "serve": ("sathmr.serve.cli", "serve_command", "An HTTP API with dynamic batching and a page."),
    "train": ("sathmr.train.cli", "train_command", "Train SAT-HMR (accelerate, torchrun)."),
    "weights": ("sathmr.zoo.cli", "weights_group", "Fetch model weights from the Hub."),
}


def load_command(name: str) -> click.Command:
    module, attr, short = COMMANDS[name]
    command = getattr(importlib.import_module(module), attr)
    command.short_help = short
    return command


class Group(click.Group):
    """Lazy commands (:data:`COMMANDS`). User errors (``SathmrError``) become one line and exit code 2
    (with ``--debug``: the traceback too); anything else is a bug and propagates with its traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return load_command(name) if name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]   # without importing any command
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
