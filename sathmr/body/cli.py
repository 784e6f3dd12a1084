"""``sathmr assets``: write the synthetic SMPL stand-in, or check an SMPL asset folder."""

from __future__ import annotations

from pathlib import Path

import click

from sathmr.body.assets import SIDE_SOURCE, SIZES, SMPL_SOURCE, SYNTHETIC_MARKER, check_folder, default_smpl_dir
from sathmr.common.errors import SathmrError
from sathmr.common.options import Group, output_option


@click.group("assets", cls=Group)
def assets() -> None:
    """SMPL body-model files: check a folder or write a synthetic stand-in."""


@assets.command("synthetic", renamed={"--out": "--output"})
@output_option(type=click.Path(path_type=Path), help="Folder to write into.")
@click.option("--size", type=click.Choice(SIZES), default="full", show_default=True,
              help="full: 6890-vertex SMPL topology; tiny: a few hundred vertices for fast tests.")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite SMPL files that are not from a synthetic run.")
def synthetic(output: Path, size: str, force: bool) -> None:
    """Write a deterministic, licence-free SMPL-format mannequin with the official file names."""
    from sathmr.body.synthetic import generate_synthetic

    try:
        paths = generate_synthetic(output, size, force=force)
    except SathmrError as exc:
        raise click.ClickException(str(exc)) from exc
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo("note: this is a stand-in, not SMPL; results with it are not comparable to published numbers")


@assets.command("check")
@click.argument("folder", type=click.Path(path_type=Path), required=False)
def check(folder: Path | None) -> None:
    """Validate an SMPL folder (default: $SATHMR_SMPL_DIR or ./weights/smpl_data/smpl)."""
    folder = folder if folder is not None else default_smpl_dir()
    if not folder.is_dir():
        raise click.ClickException(f"{folder} is not a folder; {SMPL_SOURCE}")
    rows = check_folder(folder)
    width = max(len(r.name) for r in rows)
    click.echo(f"{'file':<{width}}  {'status':<9}  detail")
    for r in rows:
        tag = "" if r.required else " (optional)"
        click.echo(f"{r.name:<{width}}  {r.status:<9}  {r.detail}{tag}".rstrip())
    if (folder / SYNTHETIC_MARKER).is_file():
        click.echo("note: this folder holds the synthetic stand-in, not the real SMPL model")
    failed = [r for r in rows if r.required and r.status != "OK"]
    if any(r.status != "OK" for r in rows):
        click.echo(f"where to get them: {SMPL_SOURCE}; {SIDE_SOURCE}; or `sathmr assets synthetic -o DIR`")
    if failed:
        raise click.ClickException(f"{folder}: required file(s) missing or broken: {', '.join(r.name for r in failed)}")
    click.echo(f"{folder}: usable")
