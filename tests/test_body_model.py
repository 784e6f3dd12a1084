"""Loading SMPL-format files into BodyModel (tiny synthetic set): API, posing, errors, determinism."""

from __future__ import annotations

import contextlib
import io
import pickle
import shutil

import numpy as np
import pytest
import smplx
import torch

from sathmr.body import BodyModel, default_smpl_dir, generate_synthetic, load_body_model, load_mean_params
from sathmr.body.smpl import EXTRA_JOINT_NAMES, SMPL_BUFFERS
from sathmr.common.errors import SathmrError

L_ELBOW, L_WRIST, L_HAND, R_WRIST, R_HAND = 18, 20, 22, 21, 23
LEFT_TIPS, RIGHT_TIPS = slice(24 + 11, 24 + 16), slice(24 + 16, 24 + 21)


@pytest.fixture(scope="module")
def tiny_dir(smpl_tiny):
    """The session's tiny synthetic body model (tests only read it)."""
    return smpl_tiny


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> BodyModel:
    return load_body_model(tiny_dir)


def _rest(n: int = 1):
    return torch.zeros(n, 3), torch.zeros(n, 69), torch.zeros(n, 10)


def bend_left_elbow(angle: float = 1.2):
    go, pose, betas = _rest()
    pose[0, 3 * (L_ELBOW - 1) + 1] = angle  # about y: the forearm swings forward/back
    return go, pose, betas


def test_api_shapes_and_dtypes(tiny):
    verts, joints = tiny(*_rest(2))
    assert verts.shape == (2, tiny.num_verts, 3) and joints.shape == (2, 45, 3)
    assert verts.dtype == joints.dtype == torch.float32
    assert tiny.faces.dtype == np.int64 and tiny.faces.shape[1] == 3 and tiny.faces.max() < tiny.num_verts
    assert 100 < tiny.num_verts < 1000
    assert len(tiny.fingerprint) == 64 and int(tiny.fingerprint, 16) >= 0
    assert tiny.joint_regressor_h36m.shape == (17, tiny.num_verts)
    assert tiny.body_verts.dtype.kind == "i" and tiny.body_verts.max() < tiny.num_verts
    empty_v, empty_j = tiny(*_rest(0))
    assert empty_v.shape == (0, tiny.num_verts, 3) and empty_j.shape == (0, 45, 3)
    with pytest.raises(ValueError, match="body_pose"):
        tiny(torch.zeros(1, 3), torch.zeros(1, 72), torch.zeros(1, 10))


def test_state_dict_matches_official_buffer_names(tiny):
    keys = set(tiny.state_dict())
    assert keys == {f"layer_n.{name}" for name in SMPL_BUFFERS}
    assert tiny.smpl is tiny.layer_n
    assert tiny.smpl.faces_tensor.dtype == torch.int64 and tiny.smpl.parents.tolist()[:4] == [-1, 0, 0, 0]
    assert tiny.smpl.vertex_joint_selector.extra_joints_idxs.shape == (21,)


def test_vertex_joints_are_the_declared_vertices(tiny):
    verts, joints = tiny(*bend_left_elbow())
    ids = tiny.smpl.vertex_joint_selector.extra_joints_idxs
    torch.testing.assert_close(joints[0, 24:], verts[0, ids])


def test_bending_left_elbow_moves_only_the_left_hand(tiny):
    _, rest_joints = tiny(*_rest())
    _, bent = tiny(*bend_left_elbow())
    moved = (bent - rest_joints)[0].norm(dim=-1)
    assert moved[L_WRIST] > 0.1 and moved[L_HAND] > 0.1 and moved[LEFT_TIPS].min() > 0.1
    assert moved[L_ELBOW] < 1e-5
    assert moved[R_WRIST] < 1e-5 and moved[R_HAND] < 1e-5 and moved[RIGHT_TIPS].max() < 1e-5
    assert moved[:16].max() < 1e-5  # trunk, legs and head stay put


def test_betas_change_shape_and_joints(tiny):
    go, pose, betas = _rest(2)
    betas[1, 0] = 2.0  # stature
    verts, joints = tiny(go, pose, betas)
    height = verts[:, :, 1].amax(dim=1) - verts[:, :, 1].amin(dim=1)
    assert height[1] > height[0] * 1.1
    assert (joints[1, 15] - joints[0, 15]).norm() > 0.02  # joints are regressed from the shaped mesh


def test_pkl_npz_and_plain_smplx_agree(tiny_dir, tiny):
    from_npz = load_body_model(tiny_dir / "SMPL_NEUTRAL.npz")
    assert from_npz.fingerprint == tiny.fingerprint
    go, pose, betas = bend_left_elbow()
    betas[0, 1] = 1.0
    verts, joints = tiny(go, pose, betas)
    torch.testing.assert_close(from_npz(go, pose, betas)[0], verts)
    # The file is a normal SMPL pickle for smplx itself, given the tiny model's own vertex-joint ids.
    with open(tiny_dir / "SMPL_NEUTRAL.pkl", "rb") as fh:
        ids = pickle.load(fh, encoding="latin1")["sathmr_extra_joint_vertex_ids"]  # our own trusted file
    with contextlib.redirect_stdout(io.StringIO()):
        ref = smplx.SMPL(str(tiny_dir), vertex_ids=dict(zip(EXTRA_JOINT_NAMES, ids.tolist())))
    out = ref(global_orient=go, body_pose=pose, betas=betas)
    torch.testing.assert_close(out.vertices, verts)
    torch.testing.assert_close(out.joints, joints)


def test_gendered_models_differ_but_share_topology(tiny_dir, tiny):
    male, female = load_body_model(tiny_dir, "male"), load_body_model(tiny_dir, "FEMALE")
    assert len({tiny.fingerprint, male.fingerprint, female.fingerprint}) == 3
    np.testing.assert_array_equal(male.faces, tiny.faces)
    heights = [m(*_rest())[0][0, :, 1].max() - m(*_rest())[0][0, :, 1].min() for m in (tiny, male, female)]
    assert heights[1] > heights[0] > heights[2]
    with pytest.raises(SathmrError, match="unknown SMPL gender"):
        load_body_model(tiny_dir, "robot")


def test_mean_params(tiny_dir):
    pose, shape = load_mean_params(tiny_dir)
    assert pose.dtype == shape.dtype == np.float32 and pose.shape == (144,) and shape.shape == (10,)
    np.testing.assert_allclose(pose[:6], [1, 0, 0, -1, 0, 0], atol=1e-6)  # rotation of pi about x, 6D
    body = pose[6:].reshape(23, 3, 2)
    cols = np.linalg.norm(body, axis=1)
    np.testing.assert_allclose(cols, 1.0, atol=1e-5)
    assert np.abs(body - np.eye(3)[:, :2]).max() < 0.4  # near identity ...
    assert np.abs(body - np.eye(3)[:, :2]).max() > 0.01  # ... with a slight bend


def test_missing_files_say_which_and_where(tmp_path, monkeypatch):
    with pytest.raises(SathmrError, match=r"SMPL_NEUTRAL\.pkl.*not found.*smpl\.is\.tue\.mpg\.de.*synthetic"):
        load_body_model(tmp_path)
    with pytest.raises(SathmrError, match=r"smpl_mean_params\.npz not found .*SAT-HMR"):
        load_mean_params(tmp_path)
    monkeypatch.setenv("SATHMR_SMPL_DIR", str(tmp_path))
    assert default_smpl_dir() == tmp_path
    monkeypatch.delenv("SATHMR_SMPL_DIR")
    assert default_smpl_dir().parts[-3:] == ("weights", "smpl_data", "smpl")


@pytest.mark.parametrize("name", ["SMPL_NEUTRAL.pkl", "SMPL_NEUTRAL.npz"])
def test_truncated_model_gives_clear_error(tiny_dir, tmp_path, name):
    data = (tiny_dir / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(SathmrError, match="truncated") as info:
        load_body_model(tmp_path)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_malformed_model_names_the_bad_key(tiny_dir, tmp_path):
    with open(tiny_dir / "SMPL_NEUTRAL.pkl", "rb") as fh:
        model = pickle.load(fh, encoding="latin1")  # our own trusted file
    model["posedirs"] = model["posedirs"][:, :, :100]
    (tmp_path / "SMPL_NEUTRAL.pkl").write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(SathmrError, match=r"posedirs has shape .*expected \(\d+, 3, 207\)"):
        load_body_model(tmp_path)
    del model["J_regressor"]
    (tmp_path / "SMPL_NEUTRAL.pkl").write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(SathmrError, match="missing key.*J_regressor"):
        load_body_model(tmp_path)


def test_side_file_with_wrong_vertex_count_is_rejected(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path, dirs_exist_ok=True)
    np.save(tmp_path / "J_regressor_h36m_correct.npy", np.zeros((17, 6890)))
    with pytest.raises(SathmrError, match=r"J_regressor_h36m_correct\.npy.*\(17, \d+\)"):
        load_body_model(tmp_path)


def test_tiny_generation_is_byte_for_byte_deterministic(tiny_dir, tmp_path):
    paths = generate_synthetic(tmp_path, "tiny")
    assert {p.name for p in paths} >= {"SMPL_NEUTRAL.pkl", "SMPL_NEUTRAL.npz", "SMPL_MALE.pkl", "SMPL_FEMALE.pkl",
                                       "smpl_mean_params.npz", "J_regressor_h36m_correct.npy", "body_verts_smpl.npy"}
    for p in paths:
        assert p.read_bytes() == (tiny_dir / p.name).read_bytes(), p.name
