"""Evaluation as the original computes it: 3DPW's H36M joints from R·(V − t) + t, AGORA's kid metrics,
the AGORA test submission zip, and `sathmr eval` reporting them (with what each figure measures)."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_metrics import _NumpyOnly, skeleton  # the matching tests' skeleton, the numpy-only unpickler

from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.model.config import get_config
from sathmr.train.data.augment import AugParams
from sathmr.train.data.pipeline import BodyModels, SampleBuilder
from sathmr.train.data.readers import ImageRecord, open_dataset
from sathmr.train.metrics import H36M_EVAL_JOINTS, EvalAccumulator, procrustes_align, write_agora_submission


# 3DPW: H36M joints -------------------------------------------------------------------------------
def original_3dpw(reg, pred_v, pred_t, gt_v, gt_t) -> dict[str, float]:
    """The original's evaluate_3dpw for one matched pair, written out from spec §7.4 (mm, unrounded)."""
    pj = np.einsum("ik,ji->jk", pred_v - pred_t, reg) + pred_t
    gj = np.einsum("ik,ji->jk", gt_v - gt_t, reg) + gt_t
    pv, gv = pred_v - pj[0], gt_v - gj[0]
    pj, gj = (pj - pj[0])[list(H36M_EVAL_JOINTS)], (gj - gj[0])[list(H36M_EVAL_JOINTS)]

    def err(a, b):
        return float(np.sqrt(((a - b) ** 2).sum(1)).mean() * 1000)

    return {"mpjpe": err(pj, gj), "pa_mpjpe": err(procrustes_align(pj, gj), gj),
            "mve": err(pv, gv), "pa_mve": err(procrustes_align(pv, gv), gv)}


def test_h36m_joints_are_regressed_without_the_translation():
    """With regressor rows summing to 0.98–1.02 (the real file's sums are unknown here), the camera-frame
    R·V leaks (1 − row sum)·t — centimetres at 5–6 m — into the joints; the original's R·(V − t) + t does
    not. sathmr must give the original's numbers [must match §7.4]."""
    rng = np.random.default_rng(23)
    n_verts = 60
    reg = rng.random((17, n_verts))
    reg *= rng.uniform(0.98, 1.02, (17, 1)) / reg.sum(1, keepdims=True)
    assert np.abs(reg.sum(1) - 1).max() > 0.005
    body = rng.normal(size=(n_verts, 3)) * [0.2, 0.5, 0.15]
    gt_t, pred_t = np.array([0.3, -0.2, 6.0]), np.array([0.25, -0.1, 5.2])
    gt_v = body + gt_t
    pred_v = 1.05 * body + rng.normal(scale=0.01, size=body.shape) + pred_t
    j2 = skeleton()[None]
    gt = {"j2ds": j2, "verts": gt_v[None], "transl": gt_t[None]}
    pred = {"j2ds": j2, "verts": pred_v[None], "transl": pred_t[None]}

    acc = EvalAccumulator("3dpw", h36m_regressor=reg)
    acc.add(pred, gt)
    got = acc.result()
    want = original_3dpw(reg, pred_v, pred_t, gt_v, gt_t)
    for key, value in want.items():
        assert got[key] == round(value, 1), key

    camera_frame = original_3dpw(reg, pred_v, np.zeros(3), gt_v, np.zeros(3))   # R·V
    assert abs(camera_frame["mpjpe"] - want["mpjpe"]) > 1.0
    assert abs(camera_frame["pa_mpjpe"] - want["pa_mpjpe"]) > 1.0


# AGORA: kid metrics ------------------------------------------------------------------------------
def kid_scene(kid):
    """Three GT people (0 and 2 flagged by ``kid``): GT0 found 24 mm off at one joint, GT1 found exactly,
    GT2 missed, and one false positive far away."""
    rng = np.random.default_rng(7)
    centers = [(300.0, 400.0), (700.0, 400.0), (1100.0, 400.0)]
    g2 = np.stack([skeleton(c) for c in centers])
    g3 = rng.normal(size=(3, 24, 3)) * 0.3 + [0, 0, 5]
    gv = rng.normal(size=(3, 30, 3)) * 0.3 + [0, 0, 5]
    p3, pv = g3[:2].copy(), gv[:2].copy()
    p3[0, 10] += [0.024, 0, 0]                       # MPJPE of GT0: 1.0 mm; GT1: 0
    p2 = np.concatenate([g2[:2] + 1, skeleton((1200.0, 1500.0))[None]])
    pred = {"j2ds": p2, "j3ds": np.concatenate([p3, g3[:1]]), "verts": np.concatenate([pv, gv[:1]])}
    gt = {"j2ds": g2, "j3ds": g3, "verts": gv}
    if kid is not None:
        gt["kid"] = np.asarray(kid)
    return pred, gt


def test_kid_metrics_follow_the_original():
    acc = EvalAccumulator("agora")
    acc.add(*kid_scene([True, False, True]))
    r = acc.result()
    assert (r["precision"], r["recall"], r["f1"]) == (0.67, 0.67, 0.67)          # TP 2, FP 1, FN 1
    assert r["mpjpe"] == 0.5 and r["num_matched"] == 2
    # kids: GT0 found, GT2 missed — and the one false positive counts against them too (as the original)
    assert r["kid_num_gt"] == 2 and r["kid_num_matched"] == 1
    assert (r["kid_precision"], r["kid_recall"], r["kid_f1"]) == (0.5, 0.5, 0.5)
    assert r["kid_mpjpe"] == 1.0 and r["kid_mve"] == 0.0
    assert r["kid_nmje"] == 2.0 and r["kid_nmve"] == 0.0

    flipped = EvalAccumulator("agora")
    flipped.add(*kid_scene([False, True, False]))                                 # the adult is the kid
    f = flipped.result()
    assert f["kid_num_gt"] == 1 and f["kid_recall"] == 1.0 and f["kid_mpjpe"] == 0.0
    assert {k: v for k, v in f.items() if not k.startswith("kid_")} == {k: v for k, v in r.items()
                                                                           if not k.startswith("kid_")}


def test_kid_flags_index_gt_positions_and_appear_only_when_annotated():
    # flags for more people than the GT kept (the original does not filter them; see the pipeline test)
    longer = EvalAccumulator("agora")
    longer.add(*kid_scene([True, False, True, True, True]))
    assert longer.result()["kid_num_gt"] == 2
    with pytest.raises(SathmrError, match="2 kid flags for 3"):
        EvalAccumulator("agora").add(*kid_scene([True, False]))
    plain = EvalAccumulator("agora")
    plain.add(*kid_scene(None))
    assert not [k for k in plain.result() if k.startswith("kid")]
    # sums scored image by image (as several processes do) and merged keep the kid metrics
    merged = EvalAccumulator("agora")
    for kid in (None, [True, False, True]):
        merged.sums.merge(merged.score_image(*kid_scene(kid))[0])
    m = merged.result()
    assert m["kid_num_gt"] == 2 and m["kid_precision"] == round(1 / 3, 2)           # kid TP 1, every FP: 2


def test_pipeline_keeps_the_kid_flags_of_dropped_people(tmp_path, smpl_tiny):
    """[quirk] The original's eval target carries one kid flag per valid person even when persons with
    fewer than 4 visible joints are dropped (`kid` is not among its per-human keys), so flags are read by
    GT position from the unfiltered list. Here person 0 stands far outside the view and is dropped."""
    img = tmp_path / "scene.png"
    cv2.imwrite(str(img), np.full((224, 224, 3), 128, np.uint8))
    k = np.array([[200.0, 0, 112], [0, 200.0, 112], [0, 0, 1]])
    n = 2
    rec = ImageRecord(img_path=img, ds="agora", intrinsics=k,
                      global_orient=np.tile([np.pi, 0, 0], (n, 1)), body_pose=np.zeros((n, 69)),
                      betas=np.zeros((n, 10)), transl=np.array([[50.0, 0, 4], [0.0, 0, 4]]),
                      cam_rot=np.tile(np.eye(3), (n, 1, 1)), cam_trans=np.zeros((n, 3)),
                      genders=["neutral"] * n, valid_3d=True, detect_all_people=True,
                      kid=np.array([False, True]))
    _, tgt = SampleBuilder(BodyModels(smpl_tiny), get_config("tiny")).build(rec, AugParams(), None, train=False)
    assert tgt["pnum"] == 1 and tgt["transl"][0, 0] == 0                           # only person 1 is left
    assert tgt["kid"].tolist() == [False, True]                                    # as the original: unfiltered


# AGORA test submission -----------------------------------------------------------------------------
def test_submission_zip_is_the_originals_and_atomic(tmp_path):
    rng = np.random.default_rng(5)
    j2ds = (rng.random((3, 45, 2)) * 1288).astype(np.float32)
    poses = rng.normal(size=(3, 72)).astype(np.float32)
    betas = rng.normal(size=(3, 10)).astype(np.float32)
    preds = [{"img_name": "ag_test.cam00.png", "j2ds": j2ds, "poses": poses, "betas": betas}]
    zpath = write_agora_submission(preds, tmp_path / "out.zip")
    assert zpath == tmp_path / "out.zip" and sorted(p.name for p in tmp_path.iterdir()) == ["out.zip"]
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        raw = [zf.read(n) for n in names]
    # the original names the file by the image name up to its first dot, persons in query order
    assert names == [f"predictions/ag_test_personId_{k}.pkl" for k in range(3)]
    for k, data in enumerate(raw):
        assert b"numpy._core" not in data and b"numpy.core.multiarray" in data   # loads under numpy 1 and 2
        rec = _NumpyOnly(io.BytesIO(data)).load()
        assert set(rec) == {"joints", "params"}
        # float32 canvas joints × (3840/1288) in float32, bit for bit what the original computes
        assert rec["joints"].dtype == np.float32
        assert np.array_equal(rec["joints"], j2ds[k, :24] * (3840 / 1288))
        p = rec["params"]
        assert p["transl"].shape == (1, 3) and not p["transl"].any()
        assert np.array_equal(p["betas"], betas[k : k + 1])
        assert np.array_equal(p["global_orient"], poses[k, :3].reshape(1, 1, 3))
        assert np.array_equal(p["body_pose"], poses[k, 3:].reshape(1, 23, 3))

    before = zpath.read_bytes()
    bad = [{"img_name": "x.png", "j2ds": j2ds, "poses": poses[:2], "betas": betas}]
    with pytest.raises(SathmrError, match="3 people but poses"):
        write_agora_submission(bad, zpath)
    assert zpath.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.zip"]


# `sathmr eval` ---------------------------------------------------------------------------------------
def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_eval_reports_kid_metrics_and_writes_the_submission(tmp_path, embedded):
    data = tmp_path / "data"
    res = run("data", "synthetic", "--out", data, "--n", "4", "--size", "224", "--max-people", "3",
              "--split", "train", "--layout", "agora", "--kids", "0.5")
    assert res.exit_code == 0 and "--dataset agora:train" in res.output, res.output
    flagged = sum(int(r.kid.sum()) for r in open_dataset(data, "agora", "train"))
    assert flagged >= 1

    res = run("eval", "--data", data, "--dataset", "agora:train", "--threshold", "0.3", "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert 1 <= m["kid_num_gt"] <= flagged and m["kid_num_matched"] <= m["num_matched"]
    assert {"kid_f1", "kid_precision", "kid_recall", "kid_mpjpe", "kid_mve", "kid_nmje", "kid_nmve"} <= set(m)
    defs = m["definitions"]
    assert set(defs) == set(m) - {"dataset", "threshold", "protocol", "numerics", "definitions"}
    assert "τ 0.3" in defs["f1"] and "24 SMPL joints, hip-midpoint aligned" in defs["mpjpe"]
    assert "body_verts_smpl.npy" in defs["mve"] and "kids only" in defs["kid_mpjpe"]
    table = {line.split()[0]: line for line in res.output.splitlines() if line.startswith(("mpjpe", "kid_f1"))}
    assert f"{m['mpjpe']}" in table["mpjpe"] and "24 SMPL joints" in table["mpjpe"]
    assert "every false positive counts" in table["kid_f1"]

    test_dir = data / "agora" / "test"                                   # AGORA test: images, no GT
    shutil.copytree(data / "agora" / "train", test_dir)
    res = run("eval", "--data", data, "--dataset", "agora:test")
    assert res.exit_code == 2 and "add --agora-submission out.zip" in res.output, res.output
    (tmp_path / "a_file").write_text("")
    res = run("eval", "--data", data, "--dataset", "agora:test", "--agora-submission", tmp_path / "a_file" / "s.zip")
    assert res.exit_code == 2 and "cannot write to the output folder" in res.output    # before the run
    assert "AGORA submission" not in res.output
    res = run("eval", "--data", data, "--dataset", "agora:test", "--threshold", "0.3",
              "--agora-submission", tmp_path / "sub.zip")
    assert res.exit_code == 0 and "threshold 0.3  protocol agora" in res.output, res.output
    assert "f1" not in res.output.split()                                # nothing to score
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        names = zf.namelist()
        recs = [_NumpyOnly(io.BytesIO(zf.read(n))).load() for n in names]
    assert f"({len(names)} people in 4 images)" in res.output
    stems = {p.stem for p in test_dir.iterdir()}
    assert names and all(n.startswith("predictions/") and n.split("/")[1].rsplit("_personId_", 1)[0] in stems
                         for n in names)
    assert all(r["joints"].shape == (24, 2) and r["params"]["body_pose"].shape == (1, 23, 3) for r in recs)


def test_kids_need_the_agora_layout(tmp_path):
    res = run("data", "synthetic", "--out", tmp_path, "--n", "1", "--size", "112", "--kids", "0.5")
    assert res.exit_code != 0 and "--layout agora" in res.output and not (tmp_path / "bedlam").exists()


def test_torch_tensors_are_accepted(tmp_path):
    """Eval hands the accumulator numpy; the API also takes tensors (kid flags as a bool tensor)."""
    pred, gt = kid_scene([True, False, True])
    gt = {k: torch.as_tensor(v) for k, v in gt.items()}
    acc = EvalAccumulator("agora")
    acc.add(pred, gt)
    assert acc.result()["kid_num_gt"] == 2
