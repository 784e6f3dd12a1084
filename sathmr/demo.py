"""`sathmr demo`: the whole pipeline on a fresh machine, no downloads.

Renders a few synthetic scenes (mannequins with exact ground truth), runs inference on them (and on
``--input`` if given) with overlays, and prints an evaluation table against the ground truth. It uses
the official weights when they are in ``weights/``, otherwise the embedded default, and says which.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from sathmr.common.options import Command, input_option, output_option, threshold_option


@click.command("demo", cls=Command)
@output_option(required=False, default="demo_out", show_default=True, type=click.Path(file_okay=False))
@input_option(required=False, type=click.Path(exists=True), help="Also run on these images (file or folder).")
@click.option("--scenes", type=click.IntRange(min=1), default=8, show_default=True, help="Synthetic scenes to render and evaluate.")
@threshold_option(help="Detection threshold (the original demo uses 0.3).")
def demo_command(output, inputs, scenes, threshold):
    """Run inference, overlays and an evaluation table on synthetic scenes (and your images)."""
    from sathmr.infer import OutputPlan, run_infer
    from sathmr.runtime.predictor import Predictor, load_predictor
    from sathmr.train.cli import metrics_table, open_sets
    from sathmr.train.data.pipeline import BodyModels
    from sathmr.train.data.synthetic import generate_dataset
    from sathmr.train.engine import evaluate
    from sathmr.zoo.weights import resolve

    out = Path(output)
    res = resolve(None, None)
    click.echo(res.note)
    predictor, info = load_predictor("torch", smpl_dir=res.smpl_dir, thresholds=(threshold,))
    cfg = predictor.cfg
    data = out / "synthetic_scenes"
    if not (data / "bedlam" / "bedlam_smpl_validation_6fps.npz").is_file():
        generate_dataset(data, scenes, seed=20261125, smpl_dir=res.smpl_dir, size=cfg.input_size, split="val")
    t0 = time.perf_counter()
    for name, src in [("synthetic", data / "bedlam" / "validation")] + ([("yours", Path(inputs))] if inputs else []):
        plan = OutputPlan(out / name, predictor.thresholds, overlay=True, mesh="obj")
        summary = run_infer(predictor, src, plan, progress=False)
        click.echo(f"[{name}] " + summary.report(time.perf_counter() - t0).replace("\n", "\n  "))
    bodies = BodyModels(res.smpl_dir)
    ds = open_sets(data, [("bedlam", "validation_6fps")], bodies, cfg, train=False)
    metrics = evaluate(Predictor(predictor.backend, bodies.get("neutral"), (threshold,)), ds, threshold)
    click.echo(f"\nevaluation on {len(ds)} synthetic scenes (threshold {threshold}, AGORA protocol):")
    click.echo(metrics_table(metrics))
    click.echo(f"\noverlays, meshes and JSON in {out}/ (open {out}/synthetic/thresh_{threshold:g}/*.png)")
