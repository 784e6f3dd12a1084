"""Animation export (`sathmr infer --save-anim glb,bvh`): the skinned glTF and the BVH files, checked
against sathmr's own skinning and the tracks file, by the Khronos validator, and in Blender.

Blender (``bpy`` from PyPI) pins numpy < 2 while sathmr needs numpy >= 2, so it lives in its own
virtual environment: SATHMR_BLENDER_PYTHON names its python (.ci/run makes one); the Blender tests
skip, saying so, when there is none. tests/blender_probe.py is what runs inside it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.spatial.transform import Rotation
from test_meshes import VALIDATE_JS, _validator
from test_video import pan_frames, write_avi

from sathmr.body.mannequin import JOINT_NAMES
from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.outputs.anim import parse_anim_formats, write_animations
from sathmr.outputs.anim.bvh import EULER
from sathmr.outputs.anim.gltf import skin_sets
from sathmr.outputs.anim.motion import baked_betas, pose_blend_gap, skinned_vertices, track_pose
from sathmr.outputs.meshes import CV_TO_GL

pygltflib = pytest.importorskip("pygltflib", reason="pygltflib (the `anim` extra) writes the glTF")

FPS, NUM_FRAMES = 10.0, 12
PROBE = Path(__file__).with_name("blender_probe.py")
GL_TO_BLENDER = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])   # glTF y up -> Blender z up (its importers' axes)
VERT_TOL_M = 2e-5     # Blender's evaluated skinning vs sathmr's LBS, float32 on both sides (20 micrometres)
ROT_TOL = 1e-4        # rotation matrices, BVH (6 decimals of degrees) through Blender vs the tracks file


def synthetic_tracks(body, smoothing: bool = False) -> dict:
    """A tracks file with two moving people: track 1 seen in every frame, track 3 appearing late,
    missed for two frames and gone before the end (the cases the export handles explicitly)."""
    rng = np.random.default_rng(5)
    tracks = []
    for tid, frames, x in ((1, list(range(NUM_FRAMES)), -0.5), (3, [2, 3, 4, 7, 8, 9], 0.5)):
        t = np.array(frames) / FPS
        n = len(t)
        go = np.stack([np.pi + 0.2 * np.sin(2 * t), 0.8 * np.sin(t), 0.1 * t], 1)
        bp = 0.5 * np.sin(3 * t[:, None] + np.arange(69)[None]) * (rng.random(69) < 0.5)
        betas = rng.normal(0, 1, 10) + rng.normal(0, 0.1, (n, 10))
        transl = np.stack([x + 0.1 * t, 0.2 + 0 * t, 4 + 0.2 * t], 1)
        with torch.no_grad():
            _, j = body(*(torch.tensor(a, dtype=torch.float32) for a in (go, bp, betas)))
        tracks.append({"id": tid, "frames": frames, "joints3d": (j.numpy() + transl[:, None]).tolist(),
                       "smpl": {"global_orient": go.tolist(), "body_pose": bp.tolist(), "betas": betas.tolist(),
                                "transl": transl.tolist()}})
    return {"complete": True, "fps": FPS, "num_frames": NUM_FRAMES, "smoothing": {} if smoothing else None,
            "camera": {"focal_px_resized": 300.0, "resized_hw": [252, 448]}, "tracks": tracks}


def reference_gl(body, tracks: dict, track: dict) -> dict[int, np.ndarray]:
    """sathmr's own LBS vertices (no pose blend shapes) per seen frame, in the glTF frame."""
    verts = skinned_vertices(body, track_pose(track), baked_betas(track, tracks["smoothing"] is not None),
                             np.asarray(track["joints3d"])[:, 0])
    return {f: v @ CV_TO_GL.T for f, v in zip(track["frames"], verts)}


def local_rotations_json(track: dict) -> np.ndarray:
    """(F, 24, 3, 3) the tracks file's local rotations, the root preceded by the camera→glTF flip."""
    r = Rotation.from_rotvec(track_pose(track).reshape(-1, 3)).as_matrix().reshape(len(track["frames"]), 24, 3, 3)
    r[:, 0] = CV_TO_GL @ r[:, 0]
    return r


def read_bvh(path: Path) -> tuple[list[str], np.ndarray]:
    """(joint names in file order, (frames, columns) motion) of a BVH file."""
    lines = path.read_text().splitlines()
    motion_at = lines.index("MOTION")
    names = [ln.split()[1] for ln in lines[:motion_at] if ln.split()[0] in ("ROOT", "JOINT")]
    assert lines[motion_at + 2] == f"Frame Time: {1 / FPS:.8f}"
    motion = np.array([[float(x) for x in ln.split()] for ln in lines[motion_at + 3:]])
    assert int(lines[motion_at + 1].split()[1]) == len(motion)
    return names, motion


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, body_tiny):
    out = tmp_path_factory.mktemp("anim")
    tracks = synthetic_tracks(body_tiny)
    paths = write_animations(tracks, body_tiny, out, "clip", ("glb", "bvh"))
    return {"tracks": tracks, "paths": paths, "out": out}


def test_formats_and_skin_sets():
    assert parse_anim_formats("glb, bvh,glb") == ("glb", "bvh")
    with pytest.raises(SathmrError, match="comma-separated list of glb, bvh"):
        parse_anim_formats("fbx")
    w = np.random.default_rng(0).random((50, 24)) * (np.random.default_rng(1).random((50, 24)) < 0.25)
    w[:, 0] += 1e-3
    w /= w.sum(1, keepdims=True)
    joints, wts = skin_sets(w)
    assert joints.shape[1] % 4 == 0 and joints.shape[1] >= (w > 0).sum(1).max()
    assert np.allclose(wts.sum(1, dtype=np.float64), 1, atol=1e-7) and np.all(wts[:, :-1] >= wts[:, 1:])
    dense = np.zeros_like(w)
    np.add.at(dense, (np.repeat(np.arange(50), joints.shape[1]), joints.ravel()), wts.ravel())
    assert np.abs(dense - w).max() < 1e-6           # every weight kept, none moved to another joint


def test_glb_skin_keys_and_hidden_frames(synthetic):
    doc = pygltflib.GLTF2.load(str(synthetic["paths"][0]))
    assert len(doc.skins) == 2 and all(len(s.joints) == 24 for s in doc.skins)
    anim = doc.animations[0]
    blob = doc.binary_blob()

    def values(acc: int) -> np.ndarray:
        a, view = doc.accessors[acc], doc.bufferViews[doc.accessors[acc].bufferView]
        width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[a.type]
        return np.frombuffer(blob, np.float32, a.count * width, view.byteOffset).reshape(a.count, width)

    by_node = {(c.target.node, c.target.path): anim.samplers[c.sampler] for c in anim.channels}
    for skin, tr in zip(doc.skins, synthetic["tracks"]["tracks"]):
        rot = by_node[(skin.joints[5], "rotation")]
        assert np.allclose(values(rot.input)[:, 0], np.array(tr["frames"]) / FPS)
        q = values(rot.output)
        assert np.allclose(Rotation.from_quat(q).as_matrix(), local_rotations_json(tr)[:, 5], atol=1e-5)
        assert np.all((q[1:] * q[:-1]).sum(1) > 0)                    # no sign flips between keys
        pelvis = values(by_node[(skin.joints[0], "translation")].output)
        assert np.allclose(pelvis, np.asarray(tr["joints3d"])[:, 0] @ CV_TO_GL.T, atol=1e-6)
    holder = next(i for i, n in enumerate(doc.nodes) if n.name == "track_3")
    hide = by_node[(holder, "scale")]
    assert hide.interpolation == "STEP"
    assert np.allclose(values(hide.input)[:, 0], [0.0, 0.2, 1.0]) and np.allclose(values(hide.output)[:, 0], [0, 1, 0])
    assert not any(n.name == "track_1" and (i, "scale") in by_node for i, n in enumerate(doc.nodes))


def test_bvh_matches_the_tracks_file_and_interpolates_missed_frames(synthetic):
    tr = synthetic["tracks"]["tracks"][1]                      # frames 2-4 and 7-9: 5 and 6 missed
    names, motion = read_bvh(synthetic["out"] / "clip_3.bvh")
    assert len(names) == 24 and names[0] == "pelvis" and motion.shape == (8, 3 + 24 * 3)
    rot = Rotation.from_euler(EULER, motion[:, 3:].reshape(-1, 3), degrees=True).as_matrix().reshape(8, 24, 3, 3)
    order = [JOINT_NAMES.index(n) for n in names]
    ref = local_rotations_json(tr)
    seen = np.array(tr["frames"]) - 2
    assert np.abs(rot[seen] - ref[:, order]).max() < 1e-6
    assert np.allclose(motion[seen, :3], np.asarray(tr["joints3d"])[:, 0] @ CV_TO_GL.T, atol=2e-6)
    # frame 5, missed: a third of the way from frame 4 to frame 7 (slerp)
    mid = Rotation.from_matrix(ref[2:4, order[7]])
    expect = (mid[0] * Rotation.from_rotvec((mid[0].inv() * mid[1]).as_rotvec() / 3)).as_matrix()
    assert np.abs(rot[3, 7] - expect).max() < 1e-5


def test_khronos_validator_accepts_the_animation(synthetic, tmp_path, body_tiny):
    node, env = _validator()
    empty = {**synthetic["tracks"], "tracks": []}
    paths = [synthetic["paths"][0], *write_animations(empty, body_tiny, tmp_path, "empty", ("glb",))]
    for path in paths:
        res = subprocess.run([node, "-e", VALIDATE_JS, str(path)], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        issues = json.loads(res.stdout)
        assert (issues["numErrors"], issues["numWarnings"]) == (0, 0), issues["messages"][:5]


def blender_python() -> str:
    exe = os.environ.get("SATHMR_BLENDER_PYTHON")
    if exe:
        return exe
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    pytest.skip("Blender (bpy) is not installed: it pins numpy < 2, so it needs a virtual environment of its own "
                "(python3.11 -m venv V && V/bin/pip install bpy, as .ci/run does); set SATHMR_BLENDER_PYTHON=V/bin/python")


def blender_probe(tmp_path: Path, glb: Path, bvhs: list[Path], starts: list[int], frames: list[int]) -> dict:
    out = tmp_path / "probe.json"
    args = {"glb": str(glb), "bvh": [str(p) for p in bvhs], "bvh_start": starts, "fps": FPS, "frames": frames,
            "out": str(out)}
    res = subprocess.run([blender_python(), str(PROBE), json.dumps(args)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(out.read_text())


def check_in_blender(report: dict, tracks: dict, body, frames: list[int]) -> float:
    """Bones, keys, skinned vertices and BVH rotations as Blender sees them (at least three frames of one
    track compared); returns the largest vertex error."""
    glb, worst, compared = report["glb"], 0.0, []
    for k, tr in enumerate(tracks["tracks"]):
        arm = glb["armatures"][f"track_{tr['id']}"]
        assert len(arm["bones"]) == 24
        rot_keys = {p: c for p, c in arm["keys"].items() if p.endswith("rotation_quaternion")}
        assert len(rot_keys) == 24 and all(len(c) == 4 for c in rot_keys.values())
        assert all(ch == tr["frames"] for c in rot_keys.values() for ch in c)          # one key per seen frame
        assert arm["keys"]['pose.bones["pelvis"].location'] == [tr["frames"]] * 3
        ref = reference_gl(body, tracks, tr)
        mesh = glb["meshes"][f"track_{tr['id']}_body"]
        for f in frames:
            got = np.array(mesh[str(f)])
            if not tr["frames"][0] <= f <= tr["frames"][-1]:      # outside the track: hidden (scaled to a point)
                assert np.ptp(got, axis=0).max() < 1e-6
            if f not in ref:
                continue
            worst = max(worst, float(np.abs(got - ref[f] @ GL_TO_BLENDER.T).max()))
        compared.append(sum(f in ref for f in frames))
        bvh = report["bvh"][k]
        assert sorted(bvh["bones"]) == sorted(JOINT_NAMES)
        ref_rot = local_rotations_json(tr)
        parents = body.smpl.parents.numpy()
        for f in frames:
            if f not in tr["frames"]:
                continue
            world = {n: np.array(m) for n, m in bvh["rotations"][str(f)].items()}
            for j, name in enumerate(JOINT_NAMES):
                d = world[name] if j == 0 else world[JOINT_NAMES[parents[j]]].T @ world[name]
                local = GL_TO_BLENDER.T @ d @ GL_TO_BLENDER
                assert np.abs(local - ref_rot[tr["frames"].index(f), j]).max() < ROT_TOL, (tr["id"], f, name)
    assert max(compared) >= 3, compared
    return worst


def test_blender_imports_the_synthetic_tracks(synthetic, tmp_path, body_tiny):
    """Frames 0 and 11 lie outside track 3 (hidden there), 5 is one it was missed in (track 1 is seen)."""
    out, frames = synthetic["out"], [0, 3, 5, 8, 11]
    report = blender_probe(tmp_path, synthetic["paths"][0], [out / "clip_1.bvh", out / "clip_3.bvh"], [0, 2], frames)
    worst = check_in_blender(report, synthetic["tracks"], body_tiny, frames)
    print(f"Blender vs sathmr LBS {worst * 1e6:.1f} um")
    assert worst < VERT_TOL_M, f"Blender's skinned vertices are {worst * 1000:.3f} mm off sathmr's LBS"


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, smpl_tiny, embedded):
    """The synthetic two-mannequin clip through `sathmr infer --save-anim glb,bvh` (embedded default)."""
    root = tmp_path_factory.mktemp("anim_clip")
    clip = write_avi(root / "clip.avi", pan_frames(smpl_tiny, NUM_FRAMES))
    res = CliRunner().invoke(main, ["infer", "-i", str(clip), "-o", str(root / "out"), "--save-anim", "glb,bvh",
                                    "--no-overlay"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    t = root / "out" / "thresh_0.3"
    return {"dir": t, "tracks": json.loads((t / "clip_tracks.json").read_text())}


def test_save_anim_on_a_clip_writes_the_glb_and_one_bvh_per_track(clip_run, body_tiny, tmp_path):
    tracks, d = clip_run["tracks"], clip_run["dir"]
    ids = [t["id"] for t in tracks["tracks"]]
    assert len(ids) >= 2, "the clip shows two mannequins: expected at least two tracks"
    assert sorted(p.name for p in d.iterdir()) == sorted(["clip_anim.glb", "clip_tracks.json",
                                                          *(f"clip_{i}.bvh" for i in ids)])
    doc = pygltflib.GLTF2.load(str(d / "clip_anim.glb"))
    assert [n.name for n in doc.nodes if n.skin is not None] == [f"track_{i}_body" for i in ids]
    assert doc.cameras[0].perspective.aspectRatio == pytest.approx(tracks["camera"]["resized_hw"][1]
                                                                  / tracks["camera"]["resized_hw"][0])
    mean, worst = pose_blend_gap(tracks, body_tiny)
    print(f"pose blend shapes dropped by the skinned export: mean {mean * 1000:.2f} mm, max {worst * 1000:.2f} mm")
    assert 0 < mean < worst < 0.1
    res = CliRunner().invoke(main, ["infer", "-i", "x.mp4", "-o", str(tmp_path), "--save-anim", "fbx"])
    assert res.exit_code != 0 and "comma-separated list of glb, bvh" in res.output


def test_blender_imports_the_clip(clip_run, body_tiny, tmp_path):
    tracks, d = clip_run["tracks"], clip_run["dir"]
    frames = [0, 5, 11]
    tr = tracks["tracks"]
    report = blender_probe(tmp_path, d / "clip_anim.glb", [d / f"clip_{t['id']}.bvh" for t in tr],
                           [t["frames"][0] for t in tr], frames)
    worst = check_in_blender(report, tracks, body_tiny, frames)
    print(f"{len(tr)} tracks, frames seen {[len(t['frames']) for t in tr]}; Blender vs sathmr LBS {worst * 1e6:.1f} um")
    assert worst < VERT_TOL_M, f"Blender's skinned vertices are {worst * 1000:.3f} mm off sathmr's LBS"
