"""Tracked videos as animation files: a skinned, animated glTF of every track and a BVH per track,
made from a tracks file (:mod:`sathmr.video.sink`) and the body model (``sathmr infer --save-anim``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sathmr.common.errors import SathmrError
from sathmr.common.files import atomic_write
from sathmr.common.optional import require
from sathmr.outputs.anim.bvh import bvh_text
from sathmr.outputs.anim.gltf import anim_glb_bytes
from sathmr.outputs.anim.motion import track_motions

ANIM_FORMATS = ("glb", "bvh")


def parse_anim_formats(text: str) -> tuple[str, ...]:
    """``"glb,bvh"`` → ``("glb", "bvh")``; anything else is one clear error."""
    fmts = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in fmts if f not in ANIM_FORMATS]
    if bad or not fmts:
        raise SathmrError(f"--save-anim takes a comma-separated list of {', '.join(ANIM_FORMATS)}, got {text!r}")
    if "glb" in fmts:
        require("pygltflib")    # before the video is read, not after
    return fmts


def anim_paths(tracks: dict, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """The files :func:`write_animations` writes for ``tracks``."""
    glb = [out_dir / f"{stem}_anim.glb"] if "glb" in formats else []
    return glb + ([out_dir / f"{stem}_{t['id']}.bvh" for t in tracks["tracks"]] if "bvh" in formats else [])


def write_animations(tracks: dict, body_model, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """``<stem>_anim.glb`` (every track) and/or ``<stem>_<track>.bvh`` (one per track) in ``out_dir``,
    atomically; returns the paths written."""
    motions = track_motions(tracks, body_model)
    paths = anim_paths(tracks, Path(out_dir), stem, formats)
    fps = float(tracks.get("fps") or 0)
    if not fps > 0:
        raise SathmrError(f"{stem}: animations need the video's frame rate, the tracks file has fps={tracks.get('fps')}")
    if "glb" in formats:
        cam = tracks["camera"] or {}
        h, w = cam.get("resized_hw") or (2, 2)
        f = cam.get("focal_px_resized", 1.0)
        K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
        data = anim_glb_bytes(motions, body_model.faces, body_model.smpl.lbs_weights.cpu().numpy(), K, (h, w), fps,
                              int(tracks["num_frames"]), {"source": tracks.get("source"), "threshold": tracks.get("threshold")})
        atomic_write(paths[0], data)
    if "bvh" in formats:
        for m, p in zip(motions, paths[-len(motions):] if motions else []):
            atomic_write(p, bvh_text(m, fps).encode())
    return paths
