"""`sathmr infer`: images, folders or videos → overlays, per-person JSON, meshes and raw outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from sathmr.api import Predictor, load_predictor
from sathmr.backends import BACKENDS
from sathmr.distributed import ProcessGroup, start
from sathmr.errors import SathmrError
from sathmr.io import InputItem, ensure_writable, iter_inputs, write_json, write_npz, write_png
from sathmr.meshes import write_meshes
from sathmr.postprocess import ImageResult
from sathmr.preprocess import DEFAULT_MAX_PIXELS, Prepared
from sathmr.render import overlay_mosaic
from sathmr.smpl_params import write_smpl_params


@dataclass
class OutputPlan:
    root: Path
    thresholds: tuple[float, ...]
    overlay: bool = True
    mesh: str | None = None        # "obj" | "glb"
    raw: bool = False
    smpl: bool = False             # <name>_smpl.npz in the smplx convention

    def tdir(self, t: float) -> Path:
        return self.root / f"thresh_{t:g}"

    def files(self, name: str) -> list[Path]:
        out = [self.root / "raw" / f"{name}.npz"] if self.raw else []
        for t in self.thresholds:
            out += [self.tdir(t) / f"{name}.png"] if self.overlay else []
            out += [self.tdir(t) / f"{name}.{self.mesh}"] if self.mesh else []
            out += [self.tdir(t) / f"{name}_smpl.npz"] if self.smpl else []
            out.append(self.tdir(t) / f"{name}.json")   # written last: its presence marks completion
        return out

    def done(self, name: str) -> bool:
        return all(p.is_file() for p in self.files(name))

    def written_dirs(self) -> list[Path]:
        """The folders this plan (or an earlier run with other thresholds) writes: never read as input."""
        return sorted({*self.root.glob("thresh_*"), *(self.tdir(t) for t in self.thresholds), self.root / "raw"})


def write_result(plan: OutputPlan, res: ImageResult, source: str, predictor: Predictor) -> None:
    cfg = predictor.cfg
    faces = predictor.body_model.faces
    if plan.raw:
        write_npz(plan.root / "raw" / f"{res.name}.npz",
                  {**res.raw, "scale_map": res.scale_map, "tok_yx": res.tok_yx, "tok_lvl": res.tok_lvl})
    for t in plan.thresholds:
        people = res.people[t]
        verts = [p.vertices for p in people]
        if plan.overlay:
            boxes = np.array([p.box for p in people], dtype=np.float32).reshape(-1, 4) * res.scale
            img = overlay_mosaic(
                res.resized_bgr, boxes, np.array([p.score for p in people]),
                np.array(verts).reshape(len(people), -1, 3) if people else np.zeros((0, 0, 3)), faces, res.intrinsics,
                res.scale_map, cfg.conf_thresh, res.tok_yx, res.tok_lvl, cfg.patch_size)
            write_png(plan.tdir(t) / f"{res.name}.png", img)
        if plan.mesh:
            write_meshes(plan.tdir(t) / f"{res.name}.{plan.mesh}", verts, faces, res.intrinsics, res.img_hw,
                         [p.score for p in people])
        if plan.smpl:
            write_smpl_params(plan.tdir(t) / f"{res.name}_smpl.npz", people, res.intrinsics, res.orig_hw,
                              res.img_hw, res.scale)
        write_json(plan.tdir(t) / f"{res.name}.json", {
            "image": source, "image_hw": list(res.orig_hw), "resized_hw": list(res.img_hw),
            "resize_rate": res.scale, "threshold": t, "backend": predictor.backend.name,
            "camera": {"focal_px_resized": cfg.focal, "principal_point_resized": [res.img_hw[1] / 2, res.img_hw[0] / 2],
                       "note": "3D outputs are in the camera frame of the resized image; divide pixel "
                               "quantities by resize_rate for the original image (boxes and joints2d already are)"},
            "tokens": res.tokens.to_json(), "num_people": len(people), "people": [p.to_json() for p in people],
        })


@dataclass
class Summary:
    processed: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    people: dict[float, int] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    network_s: float = 0.0
    processes: int = 1

    @classmethod
    def merge(cls, parts: list[Summary]) -> Summary:
        """One summary of the shards of several processes (in rank order)."""
        people = {t: sum(p.people.get(t, 0) for p in parts) for t in parts[0].people}
        return cls(sum(p.processed for p in parts), sum(p.skipped for p in parts), [f for p in parts for f in p.failed],
                   people, [n for p in parts for n in p.tokens], sum(p.network_s for p in parts), len(parts))

    def report(self, seconds: float) -> str:
        lines = [f"processed {self.processed} image(s), skipped {self.skipped} already done, failed {len(self.failed)}",
                 f"  processes: {self.processes}"]
        for t, n in sorted(self.people.items()):
            lines.append(f"  threshold {t:g}: {n} people")
        if self.tokens:
            lines.append(f"  tokens per image: mean {np.mean(self.tokens):.0f} (min {min(self.tokens)}, max {max(self.tokens)})")
        if self.processed:
            net = self.network_s / self.processed
            lines.append(f"  time: {seconds:.1f} s total, network {net * 1000:.0f} ms/image")
        lines += [f"  failed: {f}" for f in self.failed]
        return "\n".join(lines)


def input_unit(item: InputItem) -> str:
    """The file an item comes from: the frames of one video (sources ``<file>#frame<i>``) are one unit."""
    return item.source.partition("#frame")[0]


def run_infer(predictor: Predictor, inputs: str | Path, plan: OutputPlan, batch_size: int = 1,
              overwrite: bool = False, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
              group: ProcessGroup = ProcessGroup()) -> Summary:
    """Every input (of this process's share, see :meth:`ProcessGroup.shard`) through the predictor; a bad
    input is reported, listed in the summary and skipped. Returns this process's summary."""
    summary = Summary(people={t: 0 for t in plan.thresholds})
    pending: list[tuple[InputItem, Prepared]] = []

    def flush() -> None:
        if not pending:
            return
        out = predictor.run_batch([p for _, p in pending], [it.name for it, _ in pending])
        summary.network_s += out.times["network"]
        for (item, _), res in zip(pending, out.results):
            write_result(plan, res, item.source, predictor)
            summary.processed += 1
            summary.tokens.append(res.tokens.total)
            for t in plan.thresholds:
                summary.people[t] += len(res.people[t])
        pending.clear()

    def fail(item: InputItem, message: str) -> None:
        summary.failed.append(f"{item.source}: {message}")
        bar.write(f"skipped {item.source}: {message}")

    # outputs are never read back as input, even when the output folder lies inside the input tree
    listing = iter_inputs(inputs, exclude=plan.written_dirs(), max_pixels=max_pixels)
    bar = tqdm(group.shard(listing, key=input_unit), desc="infer", unit="img", disable=not progress)
    for item in bar:
        if item.error:
            fail(item, item.error)
            continue
        if not overwrite and plan.done(item.name):
            summary.skipped += 1
            continue
        try:
            prepared = predictor.prepare(item.load())
        except SathmrError as exc:
            fail(item, str(exc))
            continue
        pending.append((item, prepared))
        if len(pending) >= batch_size:
            flush()
    flush()
    return summary


@click.command("infer")
@click.option("--input", "-i", "inputs", required=True, help="Image, video, folder (recursive), glob pattern in quotes "
              "('photos/**/*.jpg') or a .txt/.lst file listing paths, one per line.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="torch", show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="SAT-HMR weights (.pth official or .safetensors); default: weights/ or the embedded model.")
@click.option("--model", "model_path", type=click.Path(), help="Exported model (a two-stage folder or a .onnx/.engine file) for --backend ort|trt.")
@click.option("--config", default=None, help="Model config of an official checkpoint (default sat_644).")
@click.option("--smpl-dir", type=click.Path(file_okay=False), help="SMPL folder (default weights/smpl_data/smpl).")
@click.option("--threshold", "-t", "thresholds", type=float, multiple=True, default=(0.3,), show_default=True, help="Detection threshold; repeat for several.")
@click.option("--batch-size", "-b", type=int, default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--save-mesh", type=click.Choice(["obj", "glb"]), is_flag=False, flag_value="obj", default=None, help="Write meshes per image (default format obj).")
@click.option("--save-smpl", is_flag=True, help="Write <name>_smpl.npz per image and threshold: SMPL parameters smplx loads as they are.")
@click.option("--save-raw", is_flag=True, help="Write every query's raw outputs and the exact network input (.npz).")
@click.option("--no-overlay", is_flag=True, help="Skip the overlay PNGs.")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs already exist.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels than this (checked in the file header, before decoding).")
def infer_command(inputs, output, backend, checkpoint, model_path, config, smpl_dir, thresholds, batch_size, device,
                  save_mesh, save_smpl, save_raw, no_overlay, overwrite, max_pixels):
    """Detect people and estimate their SMPL meshes (several processes: `torchrun --nproc-per-node N -m sathmr infer`)."""
    if batch_size < 1:
        raise SathmrError("--batch-size must be >= 1")
    group = start(device)
    ensure_writable(Path(output))
    predictor, info = load_predictor(backend, checkpoint=checkpoint, smpl_dir=smpl_dir, config=config,
                                     device=group.device, thresholds=thresholds, model_path=model_path)
    group.echo(info.get("note") or f"model: {info.get('path')}", err=True)
    plan = OutputPlan(Path(output), predictor.thresholds, overlay=not no_overlay, mesh=save_mesh, raw=save_raw,
                      smpl=save_smpl)
    t0 = time.perf_counter()
    summary = run_infer(predictor, inputs, plan, batch_size, overwrite, progress=group.is_main,
                        max_pixels=max_pixels, group=group)
    summary = Summary.merge(group.gather(summary))
    group.echo(summary.report(time.perf_counter() - t0))
    group.echo(f"outputs in {plan.root}")
    if summary.failed and not summary.processed and not summary.skipped:
        raise SystemExit(1)
