"""``sathmr data …`` commands (registered by ``sathmr/cli.py``)."""

from __future__ import annotations

from pathlib import Path

import click

from sathmr.common.options import Group, output_option
from sathmr.train.data.defaults import HEIGHT_RANGE, LAYOUT_SPLITS, MAX_PEOPLE, POSE_PRIOR_NAMES


@click.group("data", cls=Group)
def data() -> None:
    """Dataset tools: synthetic training data."""


@data.command("synthetic", renamed={"--out": "--output"})
@output_option(type=click.Path(file_okay=False, path_type=Path),
               help="Dataset root; images and annotations go to OUTPUT/bedlam/ (OUTPUT/agora/ with --layout agora).")
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=1), help="number of scenes")
@click.option("--seed", default=0, show_default=True, type=int, help="scene i depends only on (seed, i)")
@click.option("--smpl-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="SMPL folder; default: a synthetic one generated in OUTPUT/smpl")
@click.option("--size", default=448, show_default=True, type=click.IntRange(min=56), help="long image side")
@click.option("--split", type=click.Choice(["both", "train", "val"]), default="both", show_default=True,
              help="train → bedlam train_6fps, val → validation_6fps; both: N training scenes plus N/10 "
                   "held-out validation scenes (what `sathmr train` and `sathmr eval` read by default)")
@click.option("--max-people", default=MAX_PEOPLE, show_default=True, type=click.IntRange(min=1))
@click.option("--min-height", default=HEIGHT_RANGE[0], show_default=True, type=float,
              help="smallest apparent body height, as a fraction of the long side")
@click.option("--max-height", default=HEIGHT_RANGE[1], show_default=True, type=float,
              help="largest apparent body height")
@click.option("--poses", "pose_prior", type=click.Choice(POSE_PRIOR_NAMES), default="families", show_default=True,
              help="families: standing, walking, sitting, ... with per-joint noise; uniform: every joint "
                   "independently uniform within anatomical limits (much harder)")
@click.option("--layout", type=click.Choice(list(LAYOUT_SPLITS)), default="bedlam", show_default=True,
              help="annotation layout: bedlam (train_6fps / validation_6fps) or agora (train / validation)")
@click.option("--kids", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="with --layout agora: the fraction of people flagged kid (for the AGORA kid metrics)")
def synthetic(output: Path, n: int, seed: int, smpl_dir: Path | None, size: int, split: str, max_people: int,
              min_height: float, max_height: float, pose_prior: str, layout: str, kids: float) -> None:
    """Render N scenes of posed mannequins with exact SMPL ground truth."""
    from sathmr.train.data.synthetic import generate_dataset

    # "both": validation scenes continue the training scenes' numbering, so the two never share a scene
    plan = [("train", n, 0), ("val", max(1, n // 10), n)] if split == "both" else [(split, n, 0)]
    for part, count, first in plan:
        annot = generate_dataset(output, count, seed=seed, smpl_dir=smpl_dir, size=size, split=part,
                                 max_people=max_people, first=first,
                                 height_range=(min_height, max_height), pose_prior=pose_prior,
                                 layout=layout, kids=kids)
        click.echo(f"wrote {count} scenes; annotations {annot}; read with --dataset {layout}:{LAYOUT_SPLITS[layout][part]}")
