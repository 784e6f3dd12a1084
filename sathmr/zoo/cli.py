"""`sathmr models` (the registry and what of it is here) and `sathmr weights fetch` (get one)."""

from __future__ import annotations

import json

import click

from sathmr.body.assets import SMPL_SOURCE, default_smpl_dir, find_model_file
from sathmr.common.errors import SathmrError
from sathmr.common.options import Command, Group, output_option
from sathmr.zoo.local import LocalState, Records, check, packaged_config, records_path, weights_dir
from sathmr.zoo.registry import ModelEntry, get_entry, list_models


def _config(entry: ModelEntry) -> tuple[str, str]:
    if entry.config is not None:
        return entry.config, str(entry.canvas or "")
    cfg = packaged_config(entry) if entry.packaged is not None else None
    return (cfg.name, str(cfg.input_size)) if cfg else ("-", "-")


def _table(states: list[LocalState]) -> str:
    head = ("name", "kind", "config", "canvas", "local", "path", "for")
    rows = [head] + [(s.entry.name, s.entry.kind, *_config(s.entry), s.status, str(s.path or "-"), s.entry.purpose)
                     for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def _details(s: LocalState) -> str:
    e = s.entry
    lines = [f"{e.name}: {e.purpose}",
             f"  file      {e.filename} ({e.kind}; config {_config(e)[0]}, canvas {_config(e)[1]})",
             f"  source    {e.source}" + (f"  ({e.hub.url})" if e.hub else ""),
             f"  licence   {e.licence}",
             f"  local     {s.status}" + (f": {s.path}" if s.path else "") + (f" — {s.detail}" if s.detail else "")]
    if s.sha256:
        lines.append(f"  sha256    {s.sha256}")
    lines += [f"  reported  {r}" for r in e.reported]
    return "\n".join(lines)


def _json(s: LocalState) -> dict:
    e = s.entry
    cfg, canvas = _config(e)
    return {"name": e.name, "file": e.filename, "kind": e.kind, "config": cfg, "canvas": canvas, "purpose": e.purpose,
            "licence": e.licence, "source": e.source, "local": s.status, "path": str(s.path) if s.path else None,
            "sha256": s.sha256, "detail": s.detail,
            "reported": [{"benchmark": r.benchmark, "threshold": r.threshold, **dict(r.values)} for r in e.reported]}


@click.command("models", cls=Command)
@click.argument("pattern", default="*")
@click.option("--verify", is_flag=True, help="Hash the local files not hashed since they last changed (seconds per GB).")
@click.option("--details", "-v", is_flag=True, help="A card per model: source, licence, checksum, published results.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def models_command(pattern: str, verify: bool, details: bool, as_json: bool) -> None:
    """The known models (PATTERN: a name, part of one or a shell pattern), whether each is on this machine
    (in $SATHMR_WEIGHTS or ./weights) and verified, and what it is for."""
    entries = list_models(pattern)
    entries = [e for e in entries if e.name == pattern] or entries     # an exact name: its card, not a table
    if not entries:
        raise SathmrError(f"no model matches {pattern!r}; `sathmr models` lists them all")
    records = Records()
    states = [check(e, records, rehash=verify) for e in entries]
    records.save()
    if as_json:
        click.echo(json.dumps([_json(s) for s in states], indent=1))
        return
    if details or len(states) == 1:
        click.echo("\n\n".join(_details(s) for s in states))
    else:
        click.echo(_table(states))
    click.echo(f"\nweights folder: {weights_dir()}/; checksums recorded in {records_path()}; "
               "get a model with `sathmr weights fetch NAME`", err=True)


@click.group("weights", cls=Group)
def weights_group() -> None:
    """Model weights: fetch them from where the registry says (`sathmr models` lists them)."""


@weights_group.command("fetch", renamed={"--dest": "--output"})
@click.argument("names", nargs=-1, required=True)
@output_option(required=False, type=click.Path(file_okay=False), default=None,
               help="Folder to put the files in (default: $SATHMR_WEIGHTS or ./weights, where every command looks).")
@click.option("--force", is_flag=True, help="Download again even if the file is there (and accept a new upstream version).")
def fetch_command(names: tuple[str, ...], output: str | None, force: bool) -> None:
    """Download models by name from the Hugging Face Hub (or their published URL): resumable, checked
    against their sha256, moved into place only when complete. HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and
    HF_HUB_CACHE are honoured. SMPL is never fetched (licence)."""
    from sathmr.zoo.fetch import fetch

    entries = [get_entry(n) for n in names]          # every name checked before any download
    for entry in entries:
        got = fetch(entry, output, force=force)
        click.echo(f"{entry.name}: {got.how} {got.path} ({got.size / 1e6:.1f} MB), sha256 {got.sha256[:16]}… "
                   f"checked against {got.check}")
    if any(e.kind == "checkpoint" for e in entries):
        try:
            find_model_file(default_smpl_dir())
        except SathmrError:
            click.echo(f"next: the SMPL body model is never fetched (licence): {SMPL_SOURCE}; put SMPL_NEUTRAL.pkl "
                       f"in {default_smpl_dir()}/ and check it with `sathmr assets check`")
