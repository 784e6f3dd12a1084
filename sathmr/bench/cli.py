"""`sathmr bench`: latency, throughput and memory of every backend on the same inputs."""

from __future__ import annotations

from pathlib import Path

import click

from sathmr.backends import BACKENDS
from sathmr.bench.report import format_report
from sathmr.bench.run import bench
from sathmr.bench.scaling import plot_scaling
from sathmr.bench.worker import BACKEND_PRECISIONS, Entry
from sathmr.errors import SathmrError
from sathmr.io import write_json
from sathmr.precision import parse_precisions


def command_line() -> str:
    """The current `sathmr bench` invocation, from the options that differ from their defaults."""
    ctx = click.get_current_context()
    parts = [ctx.command_path]
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if v is None or v is False or v == p.default:
            continue
        flag = max(p.opts, key=len)
        parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts)


def parse_backends(text: str, precisions: str | None = None) -> list[Entry]:
    """``torch,torch:bf16,ort:int8,torch+compile`` → entries. ``precisions`` (``--precision fp32,bf16,int8``)
    expands every entry without its own precision into one per listed precision that backend runs."""
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


@click.command("bench")
@click.option("--backend", "backend_text", default="torch,ort", show_default=True,
              help=f"Comma-separated backends to compare ({', '.join(BACKENDS)}), each as BACKEND[:PRECISION][+compile] "
                   "(torch:bf16, ort:int8, torch+compile); empty with --scaling for the sweep only.")
@click.option("--precision", "precision_text", default=None,
              help="Comma-separated precisions (fp32,bf16,fp16,int8): every backend without its own at each one it runs "
                   "(torch: fp32/bf16/fp16, ort: fp32/fp16/int8), side by side with speed-up and accuracy vs torch fp32.")
@click.option("--config", default=None, help="Model config (default sat_644: the full-size network).")
@click.option("--images", type=click.Path(exists=True), help="Image or folder of images (default: two synthetic images).")
@click.option("--checkpoint", help="Weights: a file or a name from `sathmr models` (default: random weights of the "
              "full architecture).")
@click.option("--smpl-dir", type=click.Path(file_okay=False), help="SMPL folder (default: the synthetic body model).")
@click.option("--model", "model_path", type=click.Path(exists=True), help="Exported ONNX model (folder or file) for ort (default: export on the fly).")
@click.option("--engine", "engine_path", type=click.Path(exists=True), help="TensorRT engines (folder or file) for trt (default: built on the fly).")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--iters", type=int, default=5, show_default=True, help="Measured passes over the inputs.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up passes (not measured).")
@click.option("--threads", type=int, default=None, help="Intra-op threads for PyTorch and ONNX Runtime (default: PyTorch's).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--scaling", is_flag=True, help="Also sweep network latency vs high-res tokens and input size.")
@click.option("--scaling-iters", type=int, default=3, show_default=True, help="Runs per scaling point (fewer when slow).")
@click.option("--scaling-max-s", type=float, default=10.0, show_default=True, help="Stop repeating a scaling point after this many seconds.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the scaling plot here (PNG; needs matplotlib).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure and the machine description as JSON.")
def bench_command(backend_text, precision_text, config, images, checkpoint, smpl_dir, model_path, engine_path, batch, iters,
                  warmup, threads, device, scaling, scaling_iters, scaling_max_s, plot_path, json_path):
    """Latency, throughput and memory per stage for several backends on the same inputs, interleaved
    pass by pass, each backend in its own process."""
    names = parse_backends(backend_text, precision_text)
    if not names and not scaling:
        raise SathmrError("nothing to do: give --backend and/or --scaling")
    if plot_path and not scaling:
        raise SathmrError("--plot draws the scaling sweep: add --scaling")
    log = lambda s: click.echo(s, err=True)  # noqa: E731 - progress on stderr, the table on stdout
    result = bench(names, config, images, checkpoint, smpl_dir, model_path, engine_path, batch, iters, warmup, threads,
                   device, scaling, scaling_iters, scaling_max_s, command=command_line(), log=log)
    click.echo(format_report(result))
    if scaling and plot_path:
        click.echo(f"wrote {plot_scaling(result['scaling'], Path(plot_path))}")
    if json_path:
        write_json(Path(json_path), result)
        click.echo(f"wrote {json_path}")
