"""Synthetic multi-person dataset: deterministic, in BEDLAM layout, with exact GT the reader recovers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sathmr.common.errors import SathmrError
from sathmr.model.config import get_config
from sathmr.train.data.annots_io import load_annots
from sathmr.train.data.augment import AugParams
from sathmr.train.data.cli import data
from sathmr.train.data.geometry import matrix_to_rotvec, rotvec_to_matrix
from sathmr.train.data.pipeline import BodyModels, HMRDataset, SampleBuilder
from sathmr.train.data.poses import plausible_pose
from sathmr.train.data.readers import open_dataset
from sathmr.train.data.synthetic import generate_dataset, make_scene

CFG = get_config("tiny")


@pytest.fixture(scope="module")
def smpl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sathmr.body import generate_synthetic

    out = tmp_path_factory.mktemp("smpl")
    generate_synthetic(out, size="tiny")
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_per_seed(tmp_path: Path, smpl_dir: Path) -> None:
    generate_dataset(tmp_path / "a", 3, seed=7, smpl_dir=smpl_dir)
    generate_dataset(tmp_path / "b", 3, seed=7, smpl_dir=smpl_dir)
    generate_dataset(tmp_path / "c", 3, seed=8, smpl_dir=smpl_dir)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b and len(a) == 4                               # 3 images + 1 annotation file
    a_images = [v for k, v in a.items() if k.endswith(".png")]
    c_images = [v for k, v in c.items() if k.endswith(".png")]
    assert not set(a_images) & set(c_images)


def test_scenes_are_prefix_stable(tmp_path: Path, smpl_dir: Path) -> None:
    generate_dataset(tmp_path / "short", 1, seed=2, smpl_dir=smpl_dir)
    generate_dataset(tmp_path / "long", 3, seed=2, smpl_dir=smpl_dir)
    name = "bedlam/train/synth_s2_000000.png"
    assert (tmp_path / "short" / name).read_bytes() == (tmp_path / "long" / name).read_bytes()


def test_reader_and_pipeline_recover_the_rendered_meshes(tmp_path: Path, smpl_dir: Path) -> None:
    """World-frame annotation → camera-frame GT through the reader reproduces what was rendered."""
    bodies = BodyModels(smpl_dir)
    n = 4
    scenes = [make_scene(np.random.default_rng([5, i]), bodies, 448, 4) for i in range(n)]
    generate_dataset(tmp_path, n, seed=5, smpl_dir=smpl_dir, max_people=4)
    reader = open_dataset(tmp_path, "bedlam", "train_6fps")
    assert len(reader) == n
    builder = SampleBuilder(bodies, CFG)
    for i, scene in enumerate(scenes):
        rec = reader[i]
        assert rec.num_people == len(scene.verts) >= 1
        _, tgt = builder.build(rec, AugParams(), None, train=False)
        assert tgt["resize_rate"] == pytest.approx(1.0)
        assert tgt["pnum"] >= 1                                # people are at least partly in view
        kept = [p for p in range(len(scene.verts))
                if np.abs(tgt["verts"].numpy() - scene.verts[p]).max(axis=(1, 2)).min() < 1e-3]
        assert len(kept) == tgt["pnum"]
        assert tgt["genders"] == ["neutral"] * tgt["pnum"] and tgt["3d_valid"]


def test_every_scene_is_trainable(tmp_path: Path, smpl_dir: Path) -> None:
    generate_dataset(tmp_path, 5, seed=11, smpl_dir=smpl_dir)
    ds = HMRDataset(open_dataset(tmp_path, "bedlam", "train_6fps"), BodyModels(smpl_dir), CFG, train=True, seed=0)
    for i in range(len(ds)):
        image, tgt = ds[i]
        assert tgt["img_path"].endswith(f"synth_s11_{i:06d}.png")       # no fallback to the next index
        assert image.shape[1] % 56 == 0 and image.shape[2] % 56 == 0 and max(image.shape[1:]) == 448
        assert tgt["scale_map"][..., 0].sum() > 0


def test_val_split_and_default_smpl_folder(tmp_path: Path, smpl_dir: Path) -> None:
    annot = generate_dataset(tmp_path, 2, seed=0, smpl_dir=smpl_dir, split="val", size=224)
    assert annot == tmp_path / "bedlam/bedlam_smpl_validation_6fps.npz"
    reader = open_dataset(tmp_path, "bedlam", "validation_6fps")
    assert all(r.img_path.parent == tmp_path / "bedlam/validation" and r.img_path.is_file() for r in reader)
    ann = load_annots(annot)
    first = next(iter(ann.values()))
    assert set(first) == {"cam_int", "cam_rot", "cam_trans", "shape", "pose_world", "trans_world"}
    with pytest.raises(SathmrError, match="unknown split"):
        generate_dataset(tmp_path, 1, split="test", smpl_dir=smpl_dir)


def test_plausible_poses_respect_joint_limits() -> None:
    rng = np.random.default_rng(0)
    poses = np.stack([plausible_pose(rng) for _ in range(200)]).reshape(200, 23, 3)
    knees = poses[:, [3, 4], 0]                       # joints 4, 5 (index − 1), x axis: bend backwards only
    assert (knees >= 0).all() and knees.max() > 1.0
    assert np.abs(poses).max() < np.pi
    left_elbow, right_elbow = poses[:, 17, 1], poses[:, 18, 1]
    assert (left_elbow <= 0).all() and (right_elbow >= 0).all()


def test_cli_writes_a_readable_dataset(tmp_path: Path, smpl_dir: Path) -> None:
    out = tmp_path / "ds"
    res = CliRunner().invoke(data, ["synthetic", "-o", str(out), "--n", "2", "--seed", "3",
                                    "--smpl-dir", str(smpl_dir), "--size", "224"])
    assert res.exit_code == 0, res.output
    assert "train_6fps" in res.output
    assert len(open_dataset(out, "bedlam", "train_6fps")) == 2
    bad = CliRunner().invoke(data, ["synthetic", "-o", str(out), "--n", "0"])
    assert bad.exit_code != 0
    hard = CliRunner().invoke(data, ["synthetic", "-o", str(tmp_path / "u"), "--n", "2", "--seed", "3", "--poses",
                                     "uniform", "--smpl-dir", str(smpl_dir), "--size", "224", "--split", "train"])
    assert hard.exit_code == 0, hard.output
    fam, uni = (load_annots(r / "bedlam/bedlam_smpl_train_6fps.npz") for r in (out, tmp_path / "u"))
    assert fam.keys() == uni.keys()                                   # the same scenes, other poses
    assert all(not np.array_equal(fam[k]["pose_world"][0][3:], uni[k]["pose_world"][0][3:]) for k in fam)
    with pytest.raises(SathmrError, match="unknown pose prior"):
        generate_dataset(tmp_path / "x", 1, smpl_dir=smpl_dir, pose_prior="random")


def test_the_back_of_a_mannequin_renders_darker_than_its_front(smpl_dir: Path) -> None:
    """The two-tone cue that tells a mannequin seen from behind from one seen from the front."""
    from sathmr.outputs.render import render_meshes
    from sathmr.train.data.synthetic import BACK_SHADE, front_faces, two_tone

    bm = BodyModels(smpl_dir).get("neutral")
    faces = np.asarray(bm.faces, dtype=np.int64)
    front = front_faces(bm, faces)
    assert 0.3 < front.mean() < 0.7                      # about half of the surface faces forward
    colors = two_tone(np.array([[200, 150, 100]], np.uint8), front)
    assert colors.shape == (1, len(faces), 3)
    assert (colors[0, front] == [200, 150, 100]).all()
    assert (colors[0, ~front] == np.rint(np.array([200, 150, 100]) * BACK_SHADE)).all()
    k = np.array([[500.0, 0, 112], [0, 500.0, 112], [0, 0, 1]])
    means = []
    upright = rotvec_to_matrix(np.array([np.pi, 0.0, 0.0]))[0]          # SMPL y up → image y down
    for heading in (0.0, np.pi):                         # facing the camera, then turned away
        rot = upright @ rotvec_to_matrix(np.array([0.0, heading, 0.0]))[0]
        orient = torch.tensor(matrix_to_rotvec(rot[None]), dtype=torch.float32)
        with torch.no_grad():
            verts, _ = bm(orient, torch.zeros(1, 69), torch.zeros(1, 10))
        verts = verts[0].double().numpy() + [0, 0, 5.0]
        blank = np.zeros((224, 224, 3), np.uint8)
        img = render_meshes(blank, [verts], faces, k, colors)
        covered = img.any(axis=2)
        assert covered.sum() > 500
        means.append(img[covered].astype(float).mean())
    assert means[1] < 0.6 * means[0]


def test_height_range_sets_the_apparent_size(smpl_dir: Path) -> None:
    """A curriculum stage of large people only: every mannequin spans about the requested fraction."""
    bodies = BodyModels(smpl_dir)

    def heights(height_range) -> list[float]:
        out = []
        for i in range(6):
            scene = make_scene(np.random.default_rng([4, i]), bodies, 448, 3, height_range)
            k = scene.annotation["cam_int"]
            long_side = 2 * max(k[0, 2], k[1, 2])
            uv_y = k[1, 1] * scene.verts[..., 1] / scene.verts[..., 2]
            out += list(np.ptp(uv_y, axis=1) / long_side)
        return out

    big = heights((0.5, 0.5))
    assert all(0.3 < h < 0.65 for h in big)
    assert min(heights((0.08, 0.9))) < 0.3
    with pytest.raises(SathmrError, match="min-height"):
        generate_dataset(Path("unused"), 1, smpl_dir=smpl_dir, height_range=(0.5, 0.2))


def test_agora_layout_holds_the_same_scenes_with_kid_flags(tmp_path: Path, smpl_dir: Path) -> None:
    """`--layout agora` writes the scenes `--layout bedlam` writes (same images, same camera-frame GT
    through the AGORA reader), plus kid flags drawn on their own stream."""
    generate_dataset(tmp_path / "b", 3, seed=4, smpl_dir=smpl_dir, split="val")
    generate_dataset(tmp_path / "a", 3, seed=4, smpl_dir=smpl_dir, split="val", layout="agora", kids=0.5)
    generate_dataset(tmp_path / "all", 3, seed=4, smpl_dir=smpl_dir, split="val", layout="agora", kids=1.0)
    bedlam, agora = open_dataset(tmp_path / "b", "bedlam", "validation_6fps"), open_dataset(tmp_path / "a", "agora", "validation")
    builder = SampleBuilder(BodyModels(smpl_dir), CFG)
    flags = []
    for rb, ra, rall in zip(bedlam, agora, open_dataset(tmp_path / "all", "agora", "validation")):
        assert rb.img_path.read_bytes() == ra.img_path.read_bytes()
        tb, ta = (builder.build(r, AugParams(), None, train=False)[1] for r in (rb, ra))
        np.testing.assert_allclose(ta["verts"].numpy(), tb["verts"].numpy(), atol=1e-6)
        assert rb.kid is None and len(ra.kid) == ra.num_people and rall.kid.all()
        assert ta["kid"].tolist() == ra.kid.tolist()
        flags += ra.kid.tolist()
    assert any(flags) and not all(flags)
    with pytest.raises(SathmrError, match="--layout agora"):
        generate_dataset(tmp_path / "c", 1, smpl_dir=smpl_dir, kids=0.5)
