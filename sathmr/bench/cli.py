"""`sathmr bench`: latency, throughput and memory of every backend on the same inputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sathmr.backends.formats import model_options
from sathmr.backends.precision import precision_options
from sathmr.common.errors import SathmrError
from sathmr.common.options import (
    Command,
    batch_size_option,
    config_options,
    device_option,
    input_option,
    threads_option,
    threshold_option,
)

if TYPE_CHECKING:       # torch loads when the benchmark runs, not for `sathmr bench --help`
    from sathmr.bench.worker import Entry


def command_line() -> str:
    """The current `sathmr bench` invocation, from the options that differ from their defaults."""
    ctx = click.get_current_context()
    parts = [ctx.command_path]
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if v is None or v is False or v == () or v == p.default:
            continue
        flag = max(p.opts, key=len)
        parts += [flag] if v is True else [f"{flag} {x}" for x in (v if isinstance(v, tuple) else (v,))]
    return " ".join(parts)


def parse_backends(text: str, precisions: str | None = None) -> list[Entry]:
    """``torch,torch:bf16,ort:int8,torch+compile`` → entries. ``precisions`` (``--precision fp32,bf16,int8``)
    expands every entry without its own precision into one per listed precision that backend runs."""
    from sathmr.backends.precision import parse_precisions
    from sathmr.bench.worker import BACKEND_PRECISIONS, Entry

    listed = [p for p in parse_precisions(precisions) if p]
    entries = []
    for item in (n.strip() for n in text.split(",") if n.strip()):
        e = Entry.parse(item)
        if listed and ":" not in item:
            mine = [p for p in listed if p in BACKEND_PRECISIONS[e.backend]]
            if not mine:
                raise SathmrError(f"--precision {precisions}: none of them applies to {e.backend}, which runs "
                                  f"{', '.join(BACKEND_PRECISIONS[e.backend])} (give it its own, e.g. {e.backend}:fp32)")
            entries += [Entry(e.backend, p, e.compile) for p in mine]
        else:
            entries.append(e)
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise SathmrError(f"--backend {text}: a backend is listed twice")
    return entries


@click.command("bench", cls=Command, renamed={"--images": "--input", "--batch": "--batch-size", "--engine": "--model"})
@model_options(several=True, backend_default="torch,ort")
@precision_options("list", compile=False)
@config_options
@click.option("--random-weights", is_flag=True, help="Time the --config architecture (default sat_644, the full-size "
              "network) with random weights instead of a model: for speed without the official weights.")
@input_option(required=False, type=click.Path(exists=True), help="Image or folder of images (default: two synthetic images).")
@batch_size_option()
@threshold_option(help="Detection threshold of the accuracy comparison.")
@click.option("--iters", type=int, default=5, show_default=True, help="Measured passes over the inputs.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up passes (not measured).")
@threads_option()
@device_option()
@click.option("--scaling", is_flag=True, help="Also sweep network latency vs high-res tokens and input size.")
@click.option("--scaling-iters", type=int, default=3, show_default=True, help="Runs per scaling point (fewer when slow).")
@click.option("--scaling-max-s", type=float, default=10.0, show_default=True, help="Stop repeating a scaling point after this many seconds.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the scaling plot here (PNG; needs matplotlib).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure and the machine description as JSON.")
def bench_command(model_paths, backend_text, checkpoint, precision_text, config, smpl_dir, random_weights, inputs,
                  batch_size, threshold, iters, warmup, threads, device, scaling, scaling_iters, scaling_max_s, plot_path,
                  json_path):
    """Latency, throughput and memory per stage for several backends on the same inputs and model (as
    `sathmr infer` picks it), interleaved pass by pass, each backend in its own process; exported backends
    without an export given get one made on the fly."""
    from sathmr.backends import weights_behind
    from sathmr.backends.formats import choose_models
    from sathmr.bench.report import format_report
    from sathmr.bench.run import bench
    from sathmr.bench.scaling import plot_scaling
    from sathmr.outputs.writers import write_json
    from sathmr.zoo.weights import EMBEDDED, resolve

    names = parse_backends(backend_text or "", precision_text)
    if not names and not scaling:
        raise SathmrError("nothing to do: give --backend and/or --scaling")
    if plot_path and not scaling:
        raise SathmrError("--plot draws the scaling sweep: add --scaling")
    choices = choose_models(model_paths, sorted({e.backend for e in names}) or ["torch"], checkpoint)
    exported = {c.format.name: c.model_path for c in choices.values() if c.model_path is not None}
    weights = weights_behind(choices)
    if random_weights:
        if weights is not None:
            raise SathmrError("--random-weights times an architecture without weights: drop the weights given")
    else:
        weights = weights or resolve(None, smpl_dir).checkpoint or EMBEDDED
        if config is not None and weights == EMBEDDED:
            raise SathmrError(f"--config {config}: the model is the embedded default, which has its own config; add "
                              f"--random-weights to time the {config} architecture with random weights, or give -m WEIGHTS")
    log = lambda s: click.echo(s, err=True)  # noqa: E731 - progress on stderr, the table on stdout
    result = bench(names, config, inputs, None if random_weights else str(weights), smpl_dir, exported.get("onnx"),
                   exported.get("engine"), batch_size, iters, warmup, threads, device, scaling, scaling_iters,
                   scaling_max_s, threshold=threshold, command=command_line(), log=log, ir_path=exported.get("openvino"))
    click.echo(format_report(result))
    if scaling and plot_path:
        click.echo(f"wrote {plot_scaling(result['scaling'], Path(plot_path))}")
    if json_path:
        write_json(Path(json_path), result)
        click.echo(f"wrote {json_path}")
