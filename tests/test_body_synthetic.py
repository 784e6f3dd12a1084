"""The full-size synthetic mannequin: SMPL sizes, one closed genus-0 surface, sane rig, determinism."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import smplx
import torch

from sathmr.body import generate_synthetic, load_body_model
from sathmr.body.assets import read_model_arrays
from sathmr.body.mannequin import PARENTS, REST_JOINTS
from sathmr.body.smpl import SMPL_EXTRA_VERTEX_IDS

NOSE, R_EYE, L_EYE, R_EAR, L_EAR = range(5)
L_BIG_TOE, L_SMALL_TOE, L_HEEL, R_BIG_TOE, R_SMALL_TOE, R_HEEL = range(5, 11)
L_TIPS, R_TIPS = range(11, 16), range(16, 21)


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("smpl_full")
    generate_synthetic(out, "full")
    return out


@pytest.fixture(scope="module")
def arrays(full_dir):
    return read_model_arrays(full_dir / "SMPL_NEUTRAL.pkl")


def test_smpl_sizes_and_official_structure(arrays, full_dir):
    assert arrays["v_template"].shape == (6890, 3)
    assert arrays["f"].shape == (13776, 3)
    assert arrays["shapedirs"].shape == (6890, 3, 10)
    assert arrays["posedirs"].shape == (6890, 3, 207)
    assert arrays["J_regressor"].shape == (24, 6890) and arrays["weights"].shape == (6890, 24)
    np.testing.assert_array_equal(arrays["kintree_table"][0, 1:], PARENTS[1:])
    assert "sathmr_extra_joint_vertex_ids" not in arrays  # the full size uses the real smplx ids
    with open(full_dir / "SMPL_NEUTRAL.pkl", "rb") as fh:
        raw = fh.read()
    assert b"scipy.sparse" in raw and b"csc_matrix" in raw  # sparse J_regressor, like the MPI file


def test_one_closed_oriented_genus0_surface(arrays):
    faces = arrays["f"].astype(np.int64)
    v = arrays["v_template"]
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # Closed and consistently oriented: every directed edge once, its reverse once.
    keys = directed[:, 0] * 6890 + directed[:, 1]
    assert len(np.unique(keys)) == len(keys)
    assert set(keys) == set(directed[:, 1] * 6890 + directed[:, 0])
    num_edges = len(keys) // 2
    assert len(v) - num_edges + len(faces) == 2  # Euler characteristic of a sphere
    # Connected: flood fill over edges reaches every vertex.
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    graph = sp.coo_matrix((np.ones(len(directed)), (directed[:, 0], directed[:, 1])), shape=(6890, 6890))
    assert connected_components(graph, directed=False)[0] == 1
    volume = np.einsum("ij,ij->i", v[faces[:, 0]], np.cross(v[faces[:, 1]], v[faces[:, 2]])).sum() / 6
    assert 0.04 < volume < 0.12  # outward normals, adult-sized (m^3)


def test_human_proportions(arrays):
    v = arrays["v_template"]
    height = v[:, 1].max() - v[:, 1].min()
    span = v[:, 0].max() - v[:, 0].min()
    assert 1.6 < height < 1.85 and 1.5 < span < 1.9  # T-pose arm span ~ height
    assert abs(v[:, 0].mean()) < 1e-3  # left/right symmetric
    joints = arrays["J_regressor"] @ v
    np.testing.assert_allclose(joints, REST_JOINTS, atol=2e-3)
    assert joints[15, 1] > joints[12, 1] > joints[0, 1] > joints[4, 1] > joints[7, 1]  # head above feet
    assert joints[16, 0] > 0 > joints[17, 0]  # subject's left is +x


def test_rig_weights_and_regressor(arrays):
    w, reg = arrays["weights"], arrays["J_regressor"]
    assert w.min() >= 0 and np.allclose(w.sum(axis=1), 1.0)
    assert reg.min() >= 0 and np.allclose(reg.sum(axis=1), 1.0)
    assert np.all((reg > 0).sum(axis=1) >= 8)  # regressed from a neighbourhood, not a single vertex
    # Smooth: across every edge the weight vector changes little.
    f = arrays["f"].astype(np.int64)
    assert np.abs(w[f[:, 0]] - w[f[:, 1]]).sum(axis=1).max() < 0.6
    assert np.all(np.linalg.norm(arrays["shapedirs"], axis=1).max(axis=0) > 0.005)  # 10 live directions
    pose_norm = np.linalg.norm(arrays["posedirs"], axis=1).max()
    assert 0 < pose_norm < 0.05  # small correctives


def test_vertex_joints_sit_at_anatomical_places(arrays):
    v = arrays["v_template"][SMPL_EXTRA_VERTEX_IDS]
    head = REST_JOINTS[15]
    assert v[NOSE, 2] > head[2] + 0.05 and abs(v[NOSE, 0]) < 0.01  # front of the face, centred
    assert v[L_EYE, 0] > 0 > v[R_EYE, 0] and v[L_EYE, 1] > v[NOSE, 1]
    assert v[L_EAR, 0] > 0.06 and v[R_EAR, 0] < -0.06 and abs(v[L_EAR, 1] - head[1]) < 0.1
    for big, small, heel, side in ((L_BIG_TOE, L_SMALL_TOE, L_HEEL, 1), (R_BIG_TOE, R_SMALL_TOE, R_HEEL, -1)):
        assert v[big, 1] < -1.1 and v[big, 2] > 0.1 and v[small, 2] > 0.05 and v[heel, 2] < -0.05
        assert side * v[small, 0] > side * v[big, 0]  # small toe on the outside
    for tips, side in ((list(L_TIPS), 1), (list(R_TIPS), -1)):
        x = side * v[tips, 0]
        assert x[0] > 0.75 and np.all(x[1:] > 0.85)  # thumb at the hand's side, fingers at its end
        assert np.all(np.diff(v[tips, 2]) < 0)  # palms down: thumb to pinky runs front (+z) to back
    assert len(set(SMPL_EXTRA_VERTEX_IDS.tolist())) == 21


def test_poses_through_our_loader_and_smplx(full_dir):
    bm = load_body_model(full_dir)
    assert bm.num_verts == 6890 and bm.faces.shape == (13776, 3)
    go, pose, betas = torch.zeros(2, 3), torch.zeros(2, 69), torch.zeros(2, 10)
    pose[1, 3 * 17 + 1] = -1.3  # left elbow (joint 18) about y
    verts, joints = bm(go, pose, betas)
    moved = (joints[1] - joints[0]).norm(dim=-1)
    assert moved[20] > 0.15 and moved[22] > 0.15 and moved[35:40].min() > 0.15  # left wrist, hand, tips
    assert moved[21] < 1e-5 and moved[23] < 1e-5 and moved[40:45].max() < 1e-5  # right side untouched
    with contextlib.redirect_stdout(io.StringIO()):
        ref = smplx.SMPL(str(full_dir))  # plain smplx reading the pickle, default vertex ids
    out = ref(global_orient=go, body_pose=pose, betas=betas)
    torch.testing.assert_close(out.vertices, verts)
    torch.testing.assert_close(out.joints, joints)


def test_full_generation_is_byte_for_byte_deterministic(full_dir, tmp_path):
    for path in generate_synthetic(tmp_path, "full"):
        assert path.read_bytes() == (full_dir / path.name).read_bytes(), path.name
