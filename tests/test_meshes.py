"""Mesh files (GLB, OBJ) in their viewers' frame with the photo's camera, and the smplx-ready SMPL file.

One synthetic mannequin scene goes through `sathmr infer` with the embedded default model (trained on
such scenes, so the people it finds stand upright); the files are then read back with trimesh, smplx
and, where installed, the Khronos glTF validator.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sathmr.cli import main
from sathmr.infer import OutputPlan
from sathmr.outputs.meshes import CV_TO_GL, gltf_camera, mesh_file_bytes, person_names, srgb_to_linear
from sathmr.outputs.render import person_colors
from sathmr.zoo.weights import EMBEDDED, synthetic_smpl_dir

from helpers import embedded_config

HEAD, L_ANKLE, R_ANKLE = 15, 7, 8          # SMPL joint indices
NAME = "scene"
VALIDATOR_DIR_ENV = "SATHMR_GLTF_VALIDATOR_DIR"   # a node_modules folder holding gltf-validator


def infer(args: list[str]):
    res = CliRunner().invoke(main, ["infer", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def smpl_dir() -> Path:
    return synthetic_smpl_dir("tiny")


@pytest.fixture(scope="module")
def run(tmp_path_factory, smpl_dir):
    """One synthetic portrait scene (448 x 252) through `sathmr infer --save-mesh glb|obj --save-smpl --save-raw`."""
    from sathmr.train.data.pipeline import BodyModels
    from sathmr.train.data.synthetic import make_scene

    root = tmp_path_factory.mktemp("meshes")
    scene = make_scene(np.random.default_rng([20261125, 6]), BodyModels(smpl_dir), 448, 6)
    image = root / f"{NAME}.png"
    cv2.imwrite(str(image), scene.image)
    common = ["-i", str(image), "--checkpoint", str(EMBEDDED), "--smpl-dir", str(smpl_dir), "-t", "0.3"]
    infer([*common, "-o", str(root / "glb"), "--save-mesh", "glb", "--save-smpl", "--save-raw"])
    infer([*common, "-o", str(root / "obj"), "--save-mesh", "obj", "--no-overlay"])
    out = root / "glb" / "thresh_0.3"
    data = json.loads((out / f"{NAME}.json").read_text())
    assert data["num_people"] >= 2, "the embedded default should find the mannequins"
    side = embedded_config().input_size
    assert data["resized_hw"] == [side, round(252 * side / 448)]    # not square, so the aspect ratio is tested
    raw = np.load(root / "glb" / "raw" / f"{NAME}.npz")
    verts_cv = [raw["pred_verts"][p["query"]] for p in data["people"]]
    return {"root": root, "glb": out / f"{NAME}.glb", "obj": root / "obj" / "thresh_0.3" / f"{NAME}.obj",
            "npz": out / f"{NAME}_smpl.npz", "json": data, "verts_cv": verts_cv, "common": common}


def glb_json(data: bytes | Path) -> dict:
    """The JSON chunk of a GLB."""
    data = data.read_bytes() if isinstance(data, Path) else data
    assert data[:4] == b"glTF" and struct.unpack("<I", data[4:8])[0] == 2
    n, kind = struct.unpack("<II", data[12:20])
    assert kind == 0x4E4F534A   # "JSON"
    return json.loads(data[20:20 + n])


def gl_project(points_gl: np.ndarray, yfov: float, aspect: float, hw: tuple[int, int]) -> np.ndarray:
    """glTF perspective camera at the origin → pixels of an h x w viewport (top-left origin)."""
    t = np.tan(yfov / 2)
    ndc = np.stack([points_gl[:, 0] / (-points_gl[:, 2] * t * aspect), points_gl[:, 1] / (-points_gl[:, 2] * t)], 1)
    h, w = hw
    return np.stack([(ndc[:, 0] + 1) / 2 * w, (1 - ndc[:, 1]) / 2 * h], 1)


def glb_people(path: Path) -> dict[str, np.ndarray]:
    """World-space vertices per person node, through trimesh's glTF loader and scene graph."""
    import trimesh

    scene = trimesh.load_scene(path, process=False)
    out = {}
    for node in scene.graph.nodes_geometry:
        T, geom = scene.graph[node]
        out[node] = trimesh.transform_points(scene.geometry[geom].vertices, T)
    return out


def test_glb_people_upright_in_front_of_the_photo_camera(run, smpl_dir):
    from sathmr.body import load_body_model

    data, tree = run["json"], glb_json(run["glb"])
    h, w = data["resized_hw"]
    f = data["camera"]["focal_px_resized"]
    (cam,) = tree["cameras"]
    assert cam["type"] == "perspective"
    assert cam["perspective"]["yfov"] == pytest.approx(2 * np.arctan((h / 2) / f), rel=1e-6)
    assert cam["perspective"]["aspectRatio"] == pytest.approx(w / h, rel=1e-9)
    assert 0 < cam["perspective"]["znear"] <= 0.1
    cam_nodes = [n for n in tree["nodes"] if "camera" in n]
    assert len(cam_nodes) == 1 and not {"matrix", "rotation", "translation"} & set(cam_nodes[0])   # at the origin
    assert tree["nodes"].index(cam_nodes[0]) in tree["scenes"][0]["nodes"]

    people = glb_people(run["glb"])
    names = person_names([p["score"] for p in data["people"]])
    assert sorted(people) == sorted(names)
    J = load_body_model(smpl_dir).smpl.J_regressor.numpy()
    for name, v_cv in zip(names, run["verts_cv"]):
        v = people[name]
        joints = J @ v
        assert joints[HEAD, 1] > max(joints[L_ANKLE, 1], joints[R_ANKLE, 1]) + 0.3, f"{name} is not head-up in +y"
        assert (v[:, 2] < 0).all(), f"{name} is not in front of the camera (-z)"
        # through the file's own camera the person lands on the pixels the model put them on
        uv = v_cv @ np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]]).T
        np.testing.assert_allclose(gl_project(v, cam["perspective"]["yfov"], cam["perspective"]["aspectRatio"], (h, w)),
                                   uv[:, :2] / uv[:, 2:], atol=1e-2)
    # one material per person in the overlay's colour (linear factors of the sRGB overlay colours)
    rgb = person_colors(len(names))[:, ::-1]
    mats = {m["name"]: m for m in tree["materials"]}
    for i, name in enumerate(names):
        pbr = mats[name]["pbrMetallicRoughness"]
        np.testing.assert_allclose(pbr["baseColorFactor"][:3], srgb_to_linear(rgb[i]), atol=2 / 255)
        assert pbr["metallicFactor"] == 0
    node = next(n for n in tree["nodes"] if n.get("name") == names[0])
    assert node["extras"]["score"] == pytest.approx(data["people"][0]["score"], abs=1e-6)


def test_obj_is_in_the_same_frame_with_the_overlay_colours(run):
    import trimesh

    text = run["obj"].read_text()
    assert text.startswith("# sathmr people; metres, y up, -z forward")
    scene = trimesh.load_scene(run["obj"], process=False, maintain_order=True, split_objects=True,
                               group_material=False)
    names = person_names([p["score"] for p in run["json"]["people"]])
    assert sorted(scene.geometry) == sorted(names)
    rgb = person_colors(len(names))[:, ::-1]
    for i, (name, v_cv) in enumerate(zip(names, run["verts_cv"])):
        mesh = scene.geometry[name]
        used = np.unique(mesh.faces)          # the objects share one vertex list; each uses its own block
        np.testing.assert_allclose(mesh.vertices[used], v_cv @ CV_TO_GL.T, atol=1e-6)
        np.testing.assert_array_equal(mesh.visual.vertex_colors[used, :3], np.broadcast_to(rgb[i], (len(used), 3)))


def test_smpl_npz_reproduces_the_vertices_with_smplx(run, smpl_dir):
    import smplx

    from sathmr.body.assets import EXTRA_IDS_KEY
    from sathmr.body.smpl import EXTRA_JOINT_NAMES

    p = np.load(run["npz"], allow_pickle=False)
    data = run["json"]
    n = data["num_people"]
    shapes = {"global_orient": (n, 3), "body_pose": (n, 69), "betas": (n, 10), "transl": (n, 3), "scores": (n,),
              "boxes": (n, 4), "camera_intrinsics": (3, 3), "image_hw": (2,), "resized_hw": (2,), "resize_rate": ()}
    assert {k: p[k].shape for k in shapes} == shapes
    assert "transl moves the SMPL origin" in str(p["convention"])
    assert list(p["image_hw"]) == data["image_hw"] and list(p["resized_hw"]) == data["resized_hw"]
    np.testing.assert_allclose(p["boxes"], [q["box_xyxy"] for q in data["people"]], atol=1e-3)
    # the README's three lines; the tiny synthetic model also needs its own vertex joints (real SMPL does not)
    ids = np.load(smpl_dir / "SMPL_NEUTRAL.npz")[EXTRA_IDS_KEY]
    smpl = smplx.SMPL(model_path=str(smpl_dir), vertex_ids=dict(zip(EXTRA_JOINT_NAMES, ids.tolist())))
    out = smpl(**{k: torch.from_numpy(p[k]) for k in ("global_orient", "body_pose", "betas", "transl")})
    np.testing.assert_allclose(out.vertices.detach().numpy(), np.stack(run["verts_cv"]), atol=1e-5)
    # and the camera: K @ X / z on the resized image, / resize_rate for the original = our joints2d
    j = out.joints.detach().numpy() @ p["camera_intrinsics"].T.astype(np.float64)
    np.testing.assert_allclose(j[..., :2] / j[..., 2:] / p["resize_rate"], [q["joints2d"] for q in data["people"]],
                               atol=2e-2)


def test_resume_knows_the_smpl_file(run):
    plan = OutputPlan(run["root"] / "glb", (0.3,), mesh="glb", raw=True, smpl=True)
    assert run["npz"] in plan.files(NAME) and plan.done(NAME)
    args = [*run["common"], "-o", str(run["root"] / "glb"), "--save-mesh", "glb", "--save-smpl", "--save-raw"]
    assert "skipped 1 already done" in infer(args).output
    before = run["glb"].stat().st_mtime_ns
    run["npz"].unlink()
    assert "processed 1 image(s)" in infer(args).output
    assert run["npz"].is_file() and run["glb"].stat().st_mtime_ns != before


def test_no_people_still_gives_valid_files_and_track_ids_name_nodes():
    K = np.array([[500.0, 0, 160], [0, 500, 120], [0, 0, 1]])
    faces = np.array([[0, 1, 2]])
    tree = glb_json(mesh_file_bytes("glb", [], faces, K, (240, 320), []))
    assert tree["nodes"] == [{"name": "camera", "camera": 0}] and tree["scenes"][0]["nodes"] == [0]
    assert tree["cameras"][0]["perspective"]["aspectRatio"] == pytest.approx(320 / 240)
    assert b"no people detected" in mesh_file_bytes("obj", [], faces, K, (240, 320), [])
    tri = np.array([[0.0, 0, 2], [0.1, 0, 2], [0, 0.1, 2]])
    tree = glb_json(mesh_file_bytes("glb", [tri, tri + 0.2], faces, K, (240, 320), [0.9, 0.5], track_ids=[7, 3]))
    names = [n["name"] for n in tree["nodes"] if "mesh" in n]
    assert sorted(names) == ["person_00_track_7_score_0.900", "person_01_track_3_score_0.500"]
    assert {n["extras"]["track_id"] for n in tree["nodes"] if "mesh" in n} == {7, 3}
    with pytest.raises(ValueError, match="centred principal point"):
        gltf_camera(np.array([[500.0, 0, 100], [0, 500, 120], [0, 0, 1]]), (240, 320))


def _validator() -> tuple[str, dict]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the Khronos glTF validator runs on it")
    env = dict(os.environ)
    if os.environ.get(VALIDATOR_DIR_ENV):
        env["NODE_PATH"] = os.environ[VALIDATOR_DIR_ENV]
    if subprocess.run([node, "-e", "require.resolve('gltf-validator')"], env=env, capture_output=True).returncode:
        pytest.skip(f"the gltf-validator npm package is not installed (npm install gltf-validator; "
                    f"point {VALIDATOR_DIR_ENV} at its node_modules folder)")
    return node, env


VALIDATE_JS = """
const v = require('gltf-validator');
v.validateBytes(new Uint8Array(require('fs').readFileSync(process.argv[1])))
  .then(r => console.log(JSON.stringify(r.issues)), e => { console.error(e); process.exit(3); });
"""


def test_khronos_validator_accepts_the_glb(run, tmp_path):
    node, env = _validator()
    empty = tmp_path / "empty.glb"
    empty.write_bytes(mesh_file_bytes("glb", [], np.zeros((1, 3), int), np.array([[500.0, 0, 160], [0, 500, 120],
                                                                                   [0, 0, 1]]), (240, 320), []))
    for path in (run["glb"], empty):
        res = subprocess.run([node, "-e", VALIDATE_JS, str(path)], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        issues = json.loads(res.stdout)
        assert (issues["numErrors"], issues["numWarnings"]) == (0, 0), issues["messages"][:5]
