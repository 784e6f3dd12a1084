"""`sathmr infer`: images, folders, videos or streams → overlays, per-person JSON, meshes and raw outputs.

Images are written one by one (:func:`write_result`); each video is one unit that ends in an overlay
video and a tracks file (:mod:`sathmr.video`). Decoding runs ahead of the network and writing behind it
(:mod:`sathmr.runtime.pipeline`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
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
    output_option,
    threads_option,
    threshold_option,
)
from sathmr.inputs.discover import DEFAULT_MAX_PIXELS
from sathmr.video.config import SmoothConfig, TrackerConfig

if TYPE_CHECKING:    # the heavy modules load inside the functions, so that `sathmr infer --help` is instant
    from sathmr.runtime.distributed import ProcessGroup
    from sathmr.runtime.pipeline import PipelineStats
    from sathmr.runtime.postprocess import ImageResult
    from sathmr.runtime.predictor import Predictor
    from sathmr.video.sink import VideoOptions


@dataclass
class OutputPlan:
    root: Path
    thresholds: tuple[float, ...]
    overlay: bool = True
    mesh: str | None = None        # "obj" | "glb"
    raw: bool = False
    smpl: bool = False             # <name>_smpl.npz in the smplx convention
    anim: tuple[str, ...] = ()     # videos: "glb" (<name>_anim.glb) and/or "bvh" (<name>_<track>.bvh)

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


def write_result(plan: OutputPlan, res: ImageResult, source: str, predictor: Predictor,
                 track_ids: dict[float, list[int]] | None = None) -> None:
    """One image's files; ``track_ids`` (per threshold, one per person: a video frame) colour and label
    people by track and add ``track_id`` to their JSON."""
    from sathmr.outputs.meshes import write_meshes
    from sathmr.outputs.raster import index_colors
    from sathmr.outputs.render import result_mosaic
    from sathmr.outputs.smpl_params import write_smpl_params
    from sathmr.outputs.writers import write_json, write_npz, write_png
    from sathmr.runtime.postprocess import image_json

    cfg = predictor.cfg
    faces = predictor.body_model.faces
    if plan.raw:
        write_npz(plan.root / "raw" / f"{res.name}.npz",
                  {**res.raw, "scale_map": res.scale_map, "tok_yx": res.tok_yx, "tok_lvl": res.tok_lvl})
    for t in plan.thresholds:
        people = res.people[t]
        ids = track_ids[t] if track_ids is not None else None
        verts = [p.vertices for p in people]
        if plan.overlay:
            write_png(plan.tdir(t) / f"{res.name}.png", result_mosaic(res, people, faces, cfg.conf_thresh,
                                                                      cfg.patch_size, ids))
        if plan.mesh:
            write_meshes(plan.tdir(t) / f"{res.name}.{plan.mesh}", verts, faces, res.intrinsics, res.img_hw,
                         [p.score for p in people], None if ids is None else index_colors(ids)[:, ::-1], ids)
        if plan.smpl:
            write_smpl_params(plan.tdir(t) / f"{res.name}_smpl.npz", people, res.intrinsics, res.orig_hw,
                              res.img_hw, res.scale)
        write_json(plan.tdir(t) / f"{res.name}.json", image_json(res, t, source, predictor.backend.name, cfg.focal, ids,
                                                                 precision=predictor.backend.info.get("precision", "fp32")))


@dataclass
class Summary:
    processed: int = 0                 # images
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    people: dict[float, int] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    network_s: float = 0.0
    videos: int = 0
    frames: int = 0
    interrupted: bool = False
    pipeline: PipelineStats | None = None
    processes: int = 1

    @classmethod
    def merge(cls, parts: list[Summary]) -> Summary:
        """One summary of the shards of several processes (in rank order)."""
        people = {t: sum(p.people.get(t, 0) for p in parts) for t in parts[0].people}
        return cls(sum(p.processed for p in parts), sum(p.skipped for p in parts), [f for p in parts for f in p.failed],
                   people, [n for p in parts for n in p.tokens], sum(p.network_s for p in parts),
                   sum(p.videos for p in parts), sum(p.frames for p in parts), any(p.interrupted for p in parts),
                   parts[0].pipeline if len(parts) == 1 else None, len(parts))

    def report(self, seconds: float) -> str:
        videos = f" and {self.videos} video(s) ({self.frames} frames)" if self.videos else ""
        lines = [f"processed {self.processed} image(s){videos}, skipped {self.skipped} already done, "
                 f"failed {len(self.failed)}" + (" (interrupted: outputs so far are complete)" if self.interrupted else ""),
                 f"  processes: {self.processes}"]
        if self.processed + self.frames:
            lines += [f"  threshold {t:g}: {n} people" for t, n in sorted(self.people.items())]
        elif self.skipped:
            lines.append("  nothing new to run (--overwrite redoes finished inputs)")
        if self.tokens:
            lines.append(f"  tokens per image: mean {sum(self.tokens) / len(self.tokens):.0f} (min {min(self.tokens)}, max {max(self.tokens)})")
        if self.processed + self.frames:
            net = self.network_s / (self.processed + self.frames)
            lines.append(f"  time: {seconds:.1f} s total, network {net * 1000:.0f} ms/image")
        if self.pipeline is not None and self.pipeline.images:
            unit = "frame(s)" if self.frames and not self.processed else "image(s) and frame(s)" if self.frames else "image(s)"
            lines.append(f"  pipeline: {self.pipeline.report(unit)}")
        lines += [f"  failed: {f}" for f in self.failed]
        return "\n".join(lines)


def run_infer(predictor: Predictor, inputs: str | Path, plan: OutputPlan, batch_size: int = 1,
              overwrite: bool = False, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
              video: VideoOptions | None = None, threaded: bool = True,
              stop: threading.Event | None = None, group: ProcessGroup | None = None) -> Summary:
    """Every input unit of this process's share (an image, or a whole video: :meth:`ProcessGroup.shard`)
    through the predictor; a bad input is reported, listed in the summary and skipped.

    Videos and streams go to :mod:`sathmr.video` (``video`` holds their options). ``stop`` (set by the
    first Ctrl-C) ends the inputs; what was read is still written. ``threaded=False`` runs the same
    stages in turn in this thread (the serial baseline of the benchmarks).
    """
    from tqdm import tqdm

    from sathmr.inputs.items import iter_inputs
    from sathmr.inputs.video import VideoSource
    from sathmr.outputs.anim import write_animations
    from sathmr.runtime.distributed import ProcessGroup
    from sathmr.runtime.pipeline import Failed, Skipped, Work, run_pipeline, stop_on_sigint
    from sathmr.video.run import VIDEO_EVENTS, VideoOutputs, video_events
    from sathmr.video.sink import VideoOptions

    group = group or ProcessGroup()
    summary = Summary(people={t: 0 for t in plan.thresholds})
    video = video or VideoOptions()
    stop = stop or threading.Event()
    bar = tqdm(desc="infer", unit="image", disable=not progress)

    def events():
        # outputs are never read back as input, even when the output folder lies inside the input tree
        for unit in group.shard(iter_inputs(inputs, exclude=plan.written_dirs(), max_pixels=max_pixels)):
            if stop.is_set():
                return
            if isinstance(unit, VideoSource):
                yield from video_events(unit, predictor.prepare, plan, plan.thresholds, video, stop, overwrite,
                                        plan.overlay)
            elif unit.error:
                yield Failed(unit.source, unit.error)
            elif not overwrite and plan.done(unit.name):
                yield Skipped(unit.source)
            else:
                try:
                    yield Work(unit, predictor.prepare(unit.load()), unit.name)
                except SathmrError as exc:
                    yield Failed(unit.source, str(exc))

    def fail(message: str) -> None:
        summary.failed.append(message)
        bar.write(f"skipped {message}")

    frame_plan = replace(plan, overlay=plan.overlay and video.per_frame)
    per_frame = video.per_frame or plan.mesh or plan.smpl or plan.raw
    opened: list[VideoOutputs] = []     # built when the first video's event arrives: images never pass through it

    def videos() -> VideoOutputs:
        if not opened:
            opened.append(VideoOutputs(
                plan, plan.thresholds, predictor, video, plan.overlay, fail,
                (lambda res, src, ids: write_result(frame_plan, res, src, predictor, ids)) if per_frame else None,
                (lambda path, doc: write_animations(doc, predictor.body_model, path.parent, doc["name"], plan.anim))
                if plan.anim else None, say=bar.write))
        return opened[0]

    def consume(ev, res: ImageResult | None) -> None:
        if res is not None:
            summary.tokens.append(res.tokens.total)
            for t in plan.thresholds:
                summary.people[t] += len(res.people[t])
            bar.update(1)
        if isinstance(ev, VIDEO_EVENTS):
            videos().handle(ev, res)
        elif isinstance(ev, Failed):
            fail(f"{ev.source}: {ev.message}")
        elif isinstance(ev, Skipped):
            summary.skipped += 1
        else:
            write_result(plan, res, ev.source, predictor)
            summary.processed += 1

    try:
        with stop_on_sigint(stop, bar.write):
            summary.pipeline = run_pipeline(events(), predictor, consume, batch_size, threaded)
    finally:
        for v in opened:
            v.close()
        bar.close()
    summary.network_s = summary.pipeline.network_s
    summary.videos = sum(v.videos for v in opened)
    summary.frames = sum(v.frames for v in opened)
    summary.interrupted = stop.is_set()
    return summary


@click.command("infer", cls=Command)
@input_option(help="Image, video, folder (recursive), glob pattern in quotes ('photos/**/*.jpg'), a .txt/.lst file "
              "listing paths, one per line, a webcam index (0) or a stream URL (rtsp://..., http://...).")
@output_option(type=click.Path(file_okay=False))
@model_options
@precision_options()
@config_options
@threshold_option(name="thresholds", multiple=True, default=(0.3,), help="Detection threshold; repeat for several (default 0.3).")
@batch_size_option()
@device_option()
@click.option("--save-mesh", type=click.Choice(["obj", "glb"]), is_flag=False, flag_value="obj", default=None, help="Write meshes per image (default format obj).")
@click.option("--save-anim", default=None, metavar="glb,bvh", help="Videos: <name>_anim.glb (every track, skinned and animated) and/or <name>_<track>.bvh per threshold.")
@click.option("--save-smpl", is_flag=True, help="Write <name>_smpl.npz per image and threshold: SMPL parameters smplx loads as they are.")
@click.option("--save-raw", is_flag=True, help="Write every query's raw outputs and the exact network input (.npz).")
@click.option("--no-overlay", is_flag=True, help="Skip the overlay PNGs (and the overlay videos).")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs already exist.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels than this (checked in the file header, before decoding).")
@click.option("--per-frame", is_flag=True, help="Videos: also write every frame's PNG and JSON (as for images).")
@click.option("--no-smooth", is_flag=True, help="Videos: no temporal smoothing (One-Euro) of the tracked people.")
@click.option("--smooth-min-cutoff", type=float, default=SmoothConfig.min_cutoff, show_default=True,
              help="One-Euro cutoff in Hz of a still pose (lower: smoother, more lag).")
@click.option("--smooth-beta", type=float, default=SmoothConfig.beta, show_default=True,
              help="One-Euro speed coefficient (higher: less lag in fast motion).")
@click.option("--track-max-missed", type=click.IntRange(min=0), default=TrackerConfig.max_missed, show_default=True,
              help="Frames a track survives without a detection before its id is retired.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Videos and streams: read at most this many frames.")
@click.option("--duration", type=float, default=None, help="Videos and streams: read at most this many seconds "
              "(of video; of wall time for live sources).")
@click.option("--live/--no-live", default=None, help="Drop stale frames to keep up with the source "
              "(default: on for webcams and rtsp/rtmp/udp/srt/tcp streams, off for files and http).")
@click.option("--stream", "stream_url", default=None, metavar="udp://HOST:PORT",
              help="Publish one JSON message per video frame (track ids, SMPL parameters, joints) over UDP.")
@threads_option(help="PyTorch intra-op threads for the network (default: PyTorch's, one per core).")
@click.option("--no-pipeline", is_flag=True, help="Decode, run and write in turn in one thread (for comparison).")
def infer_command(inputs, output, backend, precision, compile_, checkpoint, model_path, config, smpl_dir, thresholds, batch_size, device,
                  save_mesh, save_anim, save_smpl, save_raw, no_overlay, overwrite, max_pixels, per_frame, no_smooth,
                  smooth_min_cutoff, smooth_beta, track_max_missed, max_frames, duration, live, stream_url, threads,
                  no_pipeline):
    """Detect people and estimate their SMPL meshes; track and smooth them in videos (several processes:
    `torchrun --nproc-per-node N -m sathmr infer ...`)."""
    import torch

    from sathmr.inputs.video import FrameLimits
    from sathmr.outputs.anim import parse_anim_formats
    from sathmr.outputs.writers import ensure_writable
    from sathmr.runtime.distributed import start
    from sathmr.runtime.predictor import load_predictor
    from sathmr.video.sink import VideoOptions
    from sathmr.video.udp import parse_udp_url

    anim = parse_anim_formats(save_anim) if save_anim else ()
    video = VideoOptions(tracker=TrackerConfig(max_missed=track_max_missed),
                         smooth=None if no_smooth else SmoothConfig(smooth_min_cutoff, smooth_beta),
                         per_frame=per_frame, limits=FrameLimits(max_frames, duration), stream=stream_url, live=live)
    if stream_url:
        parse_udp_url(stream_url)
    if threads:
        torch.set_num_threads(threads)
    group = start(device)
    ensure_writable(Path(output))
    predictor, info = load_predictor(backend, checkpoint=checkpoint, smpl_dir=smpl_dir, config=config,
                                     device=group.device, thresholds=thresholds, model_path=model_path,
                                     precision=precision, compile=compile_)
    group.echo(info.get("note") or f"model: {info.get('path')}", err=True)
    plan = OutputPlan(Path(output), predictor.thresholds, overlay=not no_overlay, mesh=save_mesh, raw=save_raw,
                      smpl=save_smpl, anim=anim)
    t0 = time.perf_counter()
    summary = run_infer(predictor, inputs, plan, batch_size, overwrite, progress=group.is_main, max_pixels=max_pixels,
                        video=video, threaded=not no_pipeline, group=group)
    summary = Summary.merge(group.gather(summary))
    group.echo(summary.report(time.perf_counter() - t0))
    group.echo(f"outputs in {plan.root}")
    if summary.interrupted:
        raise SystemExit(130)
    if summary.failed and not (summary.processed or summary.skipped or summary.frames):
        raise SystemExit(1)
