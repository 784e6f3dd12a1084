"""One tracked person as a BVH file (``<name>_<track>.bvh``): the same 24-joint skeleton and motion as
the glTF, without a mesh.

Metres, y up, the glTF frame of :mod:`sathmr.outputs.anim.motion` (so the root rotation includes the camera
flip and the rest pose stands upright, facing +z). The root has position and rotation channels, every
other joint rotation channels, all in ``Zrotation Yrotation Xrotation`` order (R = Rz Ry Rx, degrees,
unwrapped over time so no channel jumps by 360). BVH has one frame rate and no gaps: frame 0 is the
track's first seen frame, one frame per video frame up to its last, missed frames interpolated as the
glTF plays them (slerp). The root's OFFSET is zero, so its position channels are the pelvis itself.
"""

from __future__ import annotations

import numpy as np

from sathmr.outputs.anim.motion import NUM_JOINTS, TrackMotion

EULER = "ZYX"                 # scipy's intrinsic Z, then Y, then X: R = Rz @ Ry @ Rx
CHANNELS = "Zrotation Yrotation Xrotation"
LEAF_END_M = 0.08             # length of the End Site of a joint without children


def bvh_text(m: TrackMotion, fps: float) -> str:
    """The BVH file of ``m`` at ``fps`` frames per second (module docstring)."""
    sk = m.skeleton
    offsets = sk.offsets.copy()
    offsets[0] = 0.0
    children = {j: [c for c in range(NUM_JOINTS) if sk.parents[c] == j] for j in range(NUM_JOINTS)}
    lines = ["HIERARCHY"]

    def joint(j: int, depth: int) -> None:
        pad = "  " * depth
        head = "ROOT" if sk.parents[j] < 0 else "JOINT"
        lines.extend([f"{pad}{head} {sk.names[j]}", f"{pad}{{", f"{pad}  OFFSET {_fmt(offsets[j])}"])
        chans = f"6 Xposition Yposition Zposition {CHANNELS}" if sk.parents[j] < 0 else f"3 {CHANNELS}"
        lines.append(f"{pad}  CHANNELS {chans}")
        for c in children[j]:
            joint(c, depth + 1)
        if not children[j]:
            bone = offsets[j] if np.linalg.norm(offsets[j]) > 1e-9 else np.array([0.0, 1.0, 0.0])
            end = LEAF_END_M * bone / np.linalg.norm(bone)
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {_fmt(end)}", f"{pad}  }}"])
        lines.append(f"{pad}}}")

    joint(0, 0)
    frames, rot, pelvis = m.dense()
    euler = rot.as_euler(EULER, degrees=True).reshape(len(frames), NUM_JOINTS, 3)
    euler = np.unwrap(euler, period=360.0, axis=0)
    order = _depth_first(children)
    rows = np.concatenate([pelvis, euler[:, order].reshape(len(frames), -1)], axis=1)
    lines += ["MOTION", f"Frames: {len(frames)}", f"Frame Time: {1.0 / fps:.8f}"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def _depth_first(children: dict[int, list[int]]) -> list[int]:
    """Joint order of the hierarchy as written (the order of the motion columns)."""
    out, stack = [], [0]
    while stack:
        j = stack.pop()
        out.append(j)
        stack.extend(reversed(children[j]))
    return out


def _fmt(v: np.ndarray) -> str:
    return " ".join(f"{x:.6f}" for x in v)
