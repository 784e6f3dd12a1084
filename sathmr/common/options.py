"""One option vocabulary for every command: the same name, short flag and meaning wherever a thing appears.

| thing | option | meaning |
| --- | --- | --- |
| input | ``-i/--input`` | images, a folder, a video, a stream, a list file (a dataset root for train/eval) |
| output | ``-o/--output`` | the folder (or file) written |
| model | ``-m/--model`` | weights, a registry name or an export; it picks the backend |
| backend(s) | ``--backend`` | overrides the backend the model implies; a comma list where backends are compared |
| batch size | ``-b/--batch-size`` | images per network call (``--max-batch-size``: the upper bound of a dynamic batch) |
| threshold | ``-t/--threshold`` | detection threshold |
| device | ``--device`` | cpu, cuda, cuda:1 ... |
| threads | ``--threads`` | intra-op threads of PyTorch / ONNX Runtime |
| precision | ``--precision`` | fp32, bf16, fp16, int8 (a comma list where precisions are compared) |

Old spellings stay for one release as hidden aliases (:class:`Command`'s ``renamed``): they work, are
not in ``--help``, and print what to use instead. ``--model``/``--backend`` come from
:func:`sathmr.backends.formats.model_options`, ``--precision`` from :func:`sathmr.backends.precision.precision_options`; this
module imports only click, so that ``--help`` never waits for torch.
"""

from __future__ import annotations

import click


def rename_args(args: list[str], renamed: dict[str, str]) -> tuple[list[str], list[str]]:
    """Old spellings in ``args`` (``--images X``, ``--images=X``) → the new ones, and a note per rename."""
    out, notes = [], []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:], notes
        flag, eq, value = arg.partition("=")
        if flag in renamed:
            notes.append(f"note: {flag} is now {renamed[flag]}; the old name goes in a later release")
            arg = renamed[flag] + eq + value
        out.append(arg)
    return out, notes


class Command(click.Command):
    """A command whose old option spellings (``renamed``: old flag → new flag) still work, hidden."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.renamed = renamed or {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args, notes = rename_args(args, self.renamed)
        for note in dict.fromkeys(notes):
            click.echo(note, err=True)
        return super().parse_args(ctx, args)


class Group(click.Group):
    """A group of :class:`Command`s (``sathmr data``, ``assets``, ``weights``)."""
    command_class = Command


def input_option(required: bool = True, help: str = "Image, video or folder of images.", name: str = "inputs", **kwargs):
    return click.option("--input", "-i", name, required=required, help=help, **kwargs)


def output_option(required: bool = True, help: str = "Output folder.", **kwargs):
    return click.option("--output", "-o", required=required, help=help, **kwargs)


def batch_size_option(default: int | None = 1, help: str = "Images per network call.", **kwargs):
    return click.option("--batch-size", "-b", type=click.IntRange(min=1), default=default,
                        show_default=default is not None, help=help, **kwargs)


def threshold_option(default: float | None = 0.3, help: str = "Detection threshold.", name: str = "threshold", **kwargs):
    return click.option("--threshold", "-t", name, type=click.FloatRange(0, 1, max_open=True), default=default,
                        show_default=default is not None and not kwargs.get("multiple"), help=help, **kwargs)


def device_option(help: str = "cpu, cuda, cuda:1 ..."):
    return click.option("--device", default="cpu", show_default=True, help=help)


def threads_option(help: str = "Intra-op threads of PyTorch and ONNX Runtime (default: PyTorch's, one per core)."):
    return click.option("--threads", type=click.IntRange(min=1), default=None, help=help)


CONFIG_HELP = "Model config of an official checkpoint (default: the checkpoint's own; sat_644 for an official file)."
SMPL_HELP = "SMPL folder (default: weights/smpl_data/smpl; the synthetic body model with the embedded default)."


def config_options(command):
    """``--config`` and ``--smpl-dir``, worded the same everywhere."""
    command = click.option("--smpl-dir", type=click.Path(file_okay=False), help=SMPL_HELP)(command)
    return click.option("--config", default=None, help=CONFIG_HELP)(command)
