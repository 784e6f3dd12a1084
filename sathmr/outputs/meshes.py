"""Mesh files of the detected people (``.glb``, ``.obj``) in the frame their viewers expect.

The model works in the OpenCV camera frame (x right, y down, z forward, metres). glTF mandates y up
with cameras looking down −z, and OBJ, which has no rule of its own, is read by Blender, three.js and
MeshLab in that same OpenGL frame. Both files therefore store every vertex rotated 180° about x,
``(x, y, z) → (x, −y, −z)`` (``CV_TO_GL``): a proper rotation, so winding and handedness survive and
the camera stays at the origin. The GLB also holds a perspective camera node there (looking down −z,
y up) with the model camera's vertical field of view on the resized image and its aspect ratio, so
looking through it shows the people where they stand in the photo.

trimesh (already a dependency) writes the buffers, normals and materials; no second glTF library is
needed. Its own camera export is bypassed: it writes ``aspectRatio`` as the ratio of the two field-of-
view *angles* rather than w/h, so the camera is added to the glTF tree in the documented
``tree_postprocessor`` hook, together with the per-person ``extras``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh
from trimesh.visual.material import PBRMaterial

from sathmr.common.files import atomic_write
from sathmr.outputs.raster import NEAR, person_colors

CV_TO_GL = np.diag([1.0, -1.0, -1.0])    # OpenCV camera frame → glTF/OpenGL frame (180° about x)
ROUGHNESS = 0.7                          # matte skin-like surface; metallic 0 (glTF's default 1 renders black)
FRAME_NOTE = ("metres, y up, -z forward (glTF/OpenGL): the model's OpenCV camera frame (x right, y down, "
              "z forward) rotated 180 deg about x, (x, y, z) -> (x, -y, -z); camera at the origin")


def to_gl(points_cv: np.ndarray) -> np.ndarray:
    """Points in the OpenCV camera frame → the y-up, −z-forward glTF/OpenGL frame."""
    return np.asarray(points_cv, dtype=np.float64) @ CV_TO_GL.T


def gltf_camera(K: np.ndarray, image_hw: tuple[int, int]) -> dict:
    """The glTF perspective camera equal to pinhole ``K`` on an ``image_hw`` image.

    glTF cameras have square pixels and a centred principal point; the model camera (one focal,
    principal point at the centre of the resized image) is exactly that, anything else is refused.
    """
    K = np.asarray(K, dtype=np.float64)
    h, w = image_hw
    if K.shape != (3, 3) or not np.isclose(K[0, 0], K[1, 1]) or not np.allclose(K[:2, 2], (w / 2, h / 2)):
        raise ValueError(f"glTF needs one focal and a centred principal point for a {w}x{h} image, got K={K.tolist()}")
    return {"name": "camera", "type": "perspective",
            "perspective": {"yfov": float(2 * np.arctan(h / 2 / K[1, 1])), "aspectRatio": w / h, "znear": NEAR}}


def person_names(scores: Sequence[float], track_ids: Sequence[int] | None = None) -> list[str]:
    """Node names in score order: ``person_00_score_0.912`` (``person_00_track_7_score_0.912`` with ids)."""
    if track_ids is not None and len(track_ids) != len(scores):
        raise ValueError(f"{len(track_ids)} track ids for {len(scores)} people")
    tracks = [f"_track_{t}" for t in track_ids] if track_ids is not None else [""] * len(scores)
    return [f"person_{i:02d}{tr}_score_{s:.3f}" for i, (s, tr) in enumerate(zip(scores, tracks))]


def srgb_to_linear(rgb_u8: np.ndarray) -> np.ndarray:
    """sRGB bytes → linear [0, 1]: glTF colour factors are linear, the overlay colours are sRGB."""
    c = np.asarray(rgb_u8, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _scene(verts_gl: list[np.ndarray], faces: np.ndarray, colors_rgb: np.ndarray, names: list[str],
           glb: bool) -> trimesh.Scene:
    scene = trimesh.Scene()
    for v, rgb, name in zip(verts_gl, colors_rgb, names):
        mesh = trimesh.Trimesh(vertices=v, faces=faces, process=False)
        if glb:   # a material per person: viewers light it; vertex colours alone fall back to metallic
            factor = np.append(srgb_to_linear(rgb), 1.0)
            mesh.visual = trimesh.visual.TextureVisuals(material=PBRMaterial(
                name=name, baseColorFactor=factor, metallicFactor=0.0, roughnessFactor=ROUGHNESS, doubleSided=True))
        else:     # OBJ: trimesh writes the colour per vertex, `v x y z r g b`
            mesh.visual.face_colors = np.append(rgb, 255)
        scene.add_geometry(mesh, node_name=name, geom_name=name)
    return scene


def _finish_tree(tree: dict, camera: dict, extras: dict[str, dict], scene_extras: dict) -> None:
    """trimesh ``tree_postprocessor``: add the camera node, per-person and per-scene extras."""
    nodes = tree.setdefault("nodes", [])
    for node in nodes:
        if node.get("name") in extras:
            node["extras"] = extras[node["name"]]
    tree["cameras"] = [camera]
    nodes.append({"name": "camera", "camera": 0})   # no transform: origin, looking down -z, y up
    tree["scenes"][0].setdefault("nodes", []).append(len(nodes) - 1)
    tree["scenes"][0]["extras"] = scene_extras
    tree["asset"]["generator"] = "sathmr (trimesh)"


def json_only_glb(tree: dict) -> bytes:
    """A GLB of a glTF tree without binary data (trimesh refuses to export scenes without geometry)."""
    body = json.dumps(tree).encode()
    body += b" " * (-len(body) % 4)
    return (b"glTF" + (2).to_bytes(4, "little") + (12 + 8 + len(body)).to_bytes(4, "little")
            + len(body).to_bytes(4, "little") + b"JSON" + body)


def mesh_file_bytes(fmt: str, verts: Sequence[np.ndarray], faces: np.ndarray, K: np.ndarray,
                    image_hw: tuple[int, int], scores: Sequence[float], colors_rgb: np.ndarray | None = None,
                    track_ids: Sequence[int] | None = None) -> bytes:
    """One image's people as a ``glb`` or ``obj`` file (see the module docstring for the frame).

    ``verts`` are (V, 3) per person in the OpenCV camera frame of the resized image, ``K`` and
    ``image_hw`` that image's camera; ``colors_rgb`` (N, 3) uint8 defaults to the overlay colours.
    """
    if fmt not in ("glb", "obj"):
        raise ValueError(f"mesh format must be glb or obj, got {fmt!r}")
    n = len(verts)
    if len(scores) != n:
        raise ValueError(f"{len(scores)} scores for {n} people")
    colors_rgb = person_colors(n)[:, ::-1] if colors_rgb is None else np.asarray(colors_rgb)
    names = person_names(scores, track_ids)
    f, (h, w) = float(np.asarray(K)[1, 1]), image_hw
    if fmt == "obj":
        header = f"# sathmr people; {FRAME_NOTE}; pinhole f={f:g} px on the {w}x{h} resized image\n"
        if not n:
            return (header + "# no people detected\n").encode()
        scene = _scene([to_gl(v) for v in verts], faces, colors_rgb, names, glb=False)
        return header.encode() + scene.export(file_type="obj", header=None).encode()
    camera = gltf_camera(K, image_hw)
    extras = {name: {"index": i, "score": float(s)} for i, (name, s) in enumerate(zip(names, scores))}
    for name, tid in zip(names, track_ids if track_ids is not None else ()):
        extras[name]["track_id"] = int(tid)
    scene_extras = {"frame": FRAME_NOTE, "focal_px": f, "resized_hw": [int(h), int(w)]}
    if not n:
        tree = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": []}]}
        _finish_tree(tree, camera, extras, scene_extras)
        return json_only_glb(tree)
    scene = _scene([to_gl(v) for v in verts], faces, colors_rgb, names, glb=True)
    return scene.export(file_type="glb", include_normals=True,
                        tree_postprocessor=lambda tree: _finish_tree(tree, camera, extras, scene_extras))


def write_meshes(path: Path, verts: Sequence[np.ndarray], faces: np.ndarray, K: np.ndarray,
                 image_hw: tuple[int, int], scores: Sequence[float], colors_rgb: np.ndarray | None = None,
                 track_ids: Sequence[int] | None = None) -> None:
    """All people of one image in one file, the format from the suffix (``.glb`` | ``.obj``), atomically."""
    path = Path(path)
    atomic_write(path, mesh_file_bytes(path.suffix[1:].lower(), verts, faces, K, image_hw, scores, colors_rgb,
                                       track_ids))
