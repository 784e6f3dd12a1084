"""Tracked people as one animated, skinned glTF (``<name>_anim.glb``), written with pygltflib.

Per track, under a node ``track_<id>``: the 24 SMPL joints as a node tree (rest: identity rotations,
translations = bone offsets of the track's shape); beside it, at the scene root as glTF wants skinned
meshes, the node ``track_<id>_body``: the body mesh in its rest shape skinned to them with
the model's own skinning weights (every non-zero weight kept: as many JOINTS_n/WEIGHTS_n sets as the
model needs), and in the one animation ``motion`` a rotation key per joint and a translation key on the
pelvis at every frame the track was seen (time = frame index / fps, LINEAR).

Missed frames: between two seen frames the keys interpolate (slerp for rotations), which is how the
tracker bridges misses (at most ``max_missed`` frames, else the track ends). Before a track's first
and after its last seen frame the body is hidden: the ``track_<id>`` node's scale steps to 0 (a STEP
sampler), since glTF would otherwise hold the first/last pose for the whole video.

Frames follow :mod:`sathmr.outputs.meshes`: y up, the camera at the origin looking down -z with the model
camera's field of view, so looking through it shows the people where the video shows them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from sathmr.common.optional import require
from sathmr.outputs.anim.motion import NUM_JOINTS, TrackMotion
from sathmr.outputs.meshes import FRAME_NOTE, ROUGHNESS, gltf_camera, json_only_glb, srgb_to_linear
from sathmr.outputs.raster import index_colors

FLOAT, UINT, UBYTE = 5126, 5125, 5121
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
MISSED_NOTE = ("keys at the frames a track was seen (time = frame / fps); missed frames in between "
               "interpolate (slerp); before its first and after its last frame a track is hidden (scale 0, STEP)")


class _Builder:
    """Accessors over one binary buffer (4-byte aligned views)."""

    def __init__(self, gl) -> None:
        self.gl, self.doc, self.blob = gl, gl.GLTF2(), bytearray()

    def accessor(self, data: np.ndarray, ctype: int, kind: str, target: int | None = None,
                 bounds: bool = False) -> int:
        gl = self.gl
        data = np.ascontiguousarray(data)
        self.blob += b"\0" * (-len(self.blob) % 4)
        self.doc.bufferViews.append(gl.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=data.nbytes,
                                                  target=target))
        self.blob += data.tobytes()
        flat = data.reshape(len(data), -1)
        acc = gl.Accessor(bufferView=len(self.doc.bufferViews) - 1, componentType=ctype, count=len(data), type=kind)
        if bounds:
            acc.min, acc.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.doc.accessors.append(acc)
        return len(self.doc.accessors) - 1

    def node(self, **kw) -> int:
        self.doc.nodes.append(self.gl.Node(**kw))
        return len(self.doc.nodes) - 1


def skin_sets(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, 4k) joint indices and weights holding every non-zero weight, largest first, rows summing to 1
    in float32; unused slots are joint 0 with weight 0 (as glTF asks)."""
    w = np.asarray(weights, np.float64)
    k = max(1, int(np.ceil((w > 0).sum(1).max() / 4))) * 4
    order = np.argsort(-w, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(w, order, axis=1)
    top /= top.sum(1, keepdims=True)
    joints = np.where(top > 0, order, 0).astype(np.uint8)
    top = top.astype(np.float32)
    top[:, 0] += np.float32(1.0) - top.sum(1, dtype=np.float32)      # the float32 residual on the largest
    return joints, top


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    n = np.zeros_like(verts)
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    for c in range(3):
        np.add.at(n, faces[:, c], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _add_track(b: _Builder, m: TrackMotion, faces: np.ndarray, weights: np.ndarray, rgb: np.ndarray, fps: float,
               num_frames: int, anim) -> list[int]:
    gl, doc, sk = b.gl, b.doc, m.skeleton
    offsets = sk.offsets
    joint_nodes = [b.node(name=name, translation=offsets[j].tolist()) for j, name in enumerate(sk.names)]
    for j, p in enumerate(sk.parents):
        if p >= 0:
            doc.nodes[joint_nodes[p]].children.append(joint_nodes[j])
    ibm = np.tile(np.eye(4, dtype=np.float32), (NUM_JOINTS, 1, 1))
    ibm[:, :3, 3] = -sk.joints
    doc.skins.append(gl.Skin(name=f"track_{m.id}", joints=joint_nodes, skeleton=joint_nodes[0],
                             inverseBindMatrices=b.accessor(ibm.transpose(0, 2, 1), FLOAT, "MAT4")))  # column-major
    verts = sk.verts.astype(np.float32)
    attrs = gl.Attributes(POSITION=b.accessor(verts, FLOAT, "VEC3", ARRAY_BUFFER, bounds=True),
                          NORMAL=b.accessor(_vertex_normals(sk.verts, faces).astype(np.float32), FLOAT, "VEC3",
                                            ARRAY_BUFFER))
    joints, wts = skin_sets(weights)
    for s in range(joints.shape[1] // 4):
        setattr(attrs, f"JOINTS_{s}", b.accessor(joints[:, 4 * s: 4 * s + 4], UBYTE, "VEC4", ARRAY_BUFFER))
        setattr(attrs, f"WEIGHTS_{s}", b.accessor(wts[:, 4 * s: 4 * s + 4], FLOAT, "VEC4", ARRAY_BUFFER))
    doc.materials.append(gl.Material(name=f"track_{m.id}", doubleSided=True, pbrMetallicRoughness=gl.PbrMetallicRoughness(
        baseColorFactor=[*srgb_to_linear(rgb).tolist(), 1.0], metallicFactor=0.0, roughnessFactor=ROUGHNESS)))
    indices = b.accessor(np.asarray(faces, np.uint32).reshape(-1), UINT, "SCALAR", ELEMENT_ARRAY_BUFFER)
    doc.meshes.append(gl.Mesh(name=f"track_{m.id}_body", primitives=[gl.Primitive(
        attributes=attrs, indices=indices, material=len(doc.materials) - 1)]))
    body = b.node(name=f"track_{m.id}_body", mesh=len(doc.meshes) - 1, skin=len(doc.skins) - 1)
    holder = b.node(name=f"track_{m.id}", children=[joint_nodes[0]],
                    extras={"track_id": m.id, "first_frame": int(m.frames[0]), "last_frame": int(m.frames[-1]),
                            "frames_seen": len(m.frames), "betas": np.round(sk.betas, 6).tolist()})

    def channel(node: int, path: str, times: np.ndarray, values: np.ndarray, kind: str, interp: str = "LINEAR") -> None:
        t = b.accessor(times.astype(np.float32).reshape(-1, 1), FLOAT, "SCALAR", bounds=True)
        anim.samplers.append(gl.AnimationSampler(input=t, output=b.accessor(values.astype(np.float32), FLOAT, kind),
                                                 interpolation=interp))
        anim.channels.append(gl.AnimationChannel(sampler=len(anim.samplers) - 1,
                                                 target=gl.AnimationChannelTarget(node=node, path=path)))

    times = m.frames / fps
    quats = m.quats()
    for j, node in enumerate(joint_nodes):
        channel(node, "rotation", times, quats[:, j], "VEC4")
    channel(joint_nodes[0], "translation", times, m.pelvis, "VEC3")
    steps = ([(0.0, 0.0)] if m.frames[0] > 0 else []) + [(times[0], 1.0)]
    steps += [((m.frames[-1] + 1) / fps, 0.0)] if m.frames[-1] + 1 < num_frames else []
    if len(steps) > 1:
        channel(holder, "scale", np.array([t for t, _ in steps]), np.array([[s] * 3 for _, s in steps]), "VEC3", "STEP")
    return [holder, body]     # the skinned mesh at the root: its own transform is ignored anyway


def anim_glb_bytes(motions: Sequence[TrackMotion], faces: np.ndarray, weights: np.ndarray, K: np.ndarray,
                   image_hw: tuple[int, int], fps: float, num_frames: int, extras: dict | None = None) -> bytes:
    """The GLB of ``motions`` (module docstring); ``weights`` (V, 24) are the body model's skinning
    weights, ``K``/``image_hw`` the resized image's camera, ``num_frames`` the video's length."""
    gl = require("pygltflib")
    b = _Builder(gl)
    doc = b.doc
    doc.asset = gl.Asset(version="2.0", generator="sathmr (pygltflib)")
    anim = gl.Animation(name="motion")
    colors = index_colors([m.id for m in motions])[:, ::-1] if motions else np.zeros((0, 3))
    roots = [n for m, rgb in zip(motions, colors) for n in _add_track(b, m, faces, weights, rgb, fps, num_frames, anim)]
    cam = gltf_camera(K, image_hw)
    doc.cameras.append(gl.Camera(name="camera", type="perspective", perspective=gl.Perspective(**cam["perspective"])))
    roots.append(b.node(name="camera", camera=0))   # no transform: origin, looking down -z, y up
    if anim.channels:
        doc.animations.append(anim)
    doc.scenes.append(gl.Scene(nodes=roots, extras={"frame": FRAME_NOTE, "fps": fps, "num_frames": num_frames,
                                                    "missed_frames": MISSED_NOTE, **(extras or {})}))
    doc.scene = 0
    if not b.blob:   # pygltflib always writes a BIN chunk, which glTF wants omitted when empty
        return json_only_glb(json.loads(doc.gltf_to_json()))
    doc.buffers.append(gl.Buffer(byteLength=len(b.blob)))
    doc.set_binary_blob(bytes(b.blob))
    return b"".join(doc.save_to_bytes())
