"""The README's animation figures: the synthetic two-mannequin clip through `sathmr infer --save-anim
glb,bvh` (embedded default), what the skinned export drops (SMPL pose blend shapes, mm), and a frame of
the animation as Blender imports and renders it (Cycles on the CPU, headless).

    python benchmarks/anim_picture.py --out benchmarks/results   # SATHMR_BLENDER_PYTHON: a python with bpy

Writes anim_blender_frame.png and anim_blender.json (the figures) under --out.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import click
import cv2
import numpy as np
from click.testing import CliRunner
from PIL import Image

from sathmr.body import load_body_model
from sathmr.cli import main
from sathmr.outputs.anim.motion import pose_blend_gap
from sathmr.train.data.pipeline import BodyModels
from sathmr.train.data.synthetic import make_scene
from sathmr.zoo.weights import synthetic_smpl_dir

RENDER = Path(__file__).with_name("blender_render.py")
FPS, FRAMES = 10, 12


def make_clip(path: Path, smpl_dir: Path) -> Path:
    """The tests' clip (tests/test_video.py): a still mannequin scene, the camera panning 2 px a frame."""
    img = make_scene(np.random.default_rng([7, 3]), BodyModels(smpl_dir), 448, 2).image
    w = img.shape[1] - 2 * FRAMES
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, img.shape[0]))
    for i in range(FRAMES):
        wr.write(np.ascontiguousarray(img[:, 2 * i: 2 * i + w]))
    wr.release()
    return path


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="benchmarks/results", show_default=True)
@click.option("--frame", type=int, default=6, show_default=True, help="Video frame to render.")
def cli(out, frame):
    out = Path(out)
    smpl = synthetic_smpl_dir("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SATHMR_WEIGHTS"] = tmp      # the embedded default, as in the tests
        clip = make_clip(Path(tmp) / "clip.avi", smpl)
        res = CliRunner().invoke(main, ["infer", "-i", str(clip), "-o", f"{tmp}/o", "--save-anim", "glb,bvh",
                                        "--no-overlay"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        d = Path(tmp) / "o" / "thresh_0.3"
        tracks = json.loads((d / "clip_tracks.json").read_text())
        mean, worst = pose_blend_gap(tracks, load_body_model(smpl))
        png = out / "anim_blender_frame.png"
        subprocess.run([os.environ.get("SATHMR_BLENDER_PYTHON", "python"), str(RENDER), str(d / "clip_anim.glb"),
                        str(png), str(frame)], check=True)
        views = [cv2.imread(str(png).replace(".png", f"_{v}.png")) for v in ("cam", "side")]
        both = np.concatenate(views, axis=1)[:, :, ::-1]
        Image.fromarray(np.ascontiguousarray(both)).quantize(64).save(png, optimize=True)   # a small file for the README
        for v in ("cam", "side"):
            Path(str(png).replace(".png", f"_{v}.png")).unlink()
        figures = {"clip": f"{FRAMES} frames at {FPS} fps, 2 mannequins, embedded default, tiny synthetic body",
                   "tracks": {t["id"]: len(t["frames"]) for t in tracks["tracks"]},
                   "pose_blend_dropped_mm": {"mean": round(mean * 1000, 3), "max": round(worst * 1000, 3)},
                   "picture": png.name, "frame": frame}
        (out / "anim_blender.json").write_text(json.dumps(figures, indent=1) + "\n")
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    cli()
