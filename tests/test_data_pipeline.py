"""Ground-truth pipeline (spec §5.3): self-consistency of the targets, augmentation vs image, scale map."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sathmr.common.errors import SathmrError
from sathmr.model.config import get_config
from sathmr.outputs.render import render_meshes
from sathmr.runtime.preprocess import MEAN, STD
from sathmr.train.data.augment import AugParams, augment_intrinsics, color_jitter, occlude
from sathmr.train.data.geometry import FLIP_PERM, embed_3x3, flip_pose, matrix_to_rotvec, project, rotation_2d, rotvec_to_matrix
from sathmr.train.data.pipeline import BodyModels, HMRDataset, SampleBuilder, collate, cxcywh_to_xyxy, stack_images
from sathmr.train.data.readers import ImageRecord
from sathmr.train.data.scale_map import build_scale_map, subdivide_once, unique_edges

CFG = get_config("tiny")          # S = 448, cells of 28 px


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> BodyModels:
    from sathmr.body import generate_synthetic

    smpl_dir = tmp_path_factory.mktemp("smpl")
    generate_synthetic(smpl_dir, size="tiny")
    return BodyModels(smpl_dir)


def _rotvec(mat: np.ndarray) -> np.ndarray:
    return matrix_to_rotvec(mat)[0]


def _record(path: Path, k: np.ndarray, pixels: list[tuple[float, float, float]], hw: tuple[int, int],
            cam_rot: np.ndarray | None = None, cam_trans: np.ndarray | None = None,
            image: np.ndarray | None = None, seed: int = 0) -> ImageRecord:
    """People whose pelvis (approximately) projects to pixel (u, v) at depth z, upright and facing the camera."""
    rng = np.random.default_rng(seed)
    n = len(pixels)
    cam_rot = np.eye(3) if cam_rot is None else cam_rot
    cam_trans = np.zeros(3) if cam_trans is None else cam_trans
    cv2.imwrite(str(path), np.full((*hw, 3), 90, np.uint8) if image is None else image)
    upright = rotvec_to_matrix(np.array([np.pi, 0.0, 0.0]))[0]
    orient_c = np.stack([_rotvec(upright @ rotvec_to_matrix(rng.normal(0, 0.2, 3))[0]) for _ in range(n)])
    pos_c = np.array([[(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z] for u, v, z in pixels])
    orient_w = np.stack([_rotvec(cam_rot.T @ rotvec_to_matrix(o)[0]) for o in orient_c])
    transl_w = (pos_c - cam_trans) @ cam_rot          # pelvis offset ignored: only rough placement matters
    return ImageRecord(
        img_path=path, ds="bedlam", intrinsics=k, global_orient=orient_w,
        body_pose=rng.normal(0, 0.15, (n, 69)), betas=rng.normal(0, 0.5, (n, 10)), transl=transl_w,
        cam_rot=np.broadcast_to(cam_rot, (n, 3, 3)).copy(), cam_trans=np.broadcast_to(cam_trans, (n, 3)).copy(),
        genders=["neutral"] * n, valid_3d=True, detect_all_people=True)


K640 = np.array([[600.0, 0, 320.0], [0, 600.0, 240.0], [0, 0, 1]])
K_OFF = np.array([[600.0, 0, 250.0], [0, 600.0, 290.0], [0, 0, 1]])      # principal point off the centre


def _check_consistency(target: dict) -> None:
    """Targets agree with each other: projection, boxes, depths, shapes."""
    n = target["pnum"]
    j3ds, j2ds = target["j3ds"].double().numpy(), target["j2ds"].double().numpy()
    k = target["person_intrinsics"].double().numpy()
    np.testing.assert_allclose(project(j3ds, k), j2ds, atol=1e-2)
    h, w = target["img_size"].tolist()
    S = CFG.input_size
    xyxy = cxcywh_to_xyxy(target["boxes"].double().numpy()) * S
    for p in range(n):
        u, v = j2ds[p, :, 0], j2ds[p, :, 1]
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        assert inside.sum() >= 4
        assert (u[inside] >= xyxy[p, 0] - 1e-3).all() and (u[inside] <= xyxy[p, 2] + 1e-3).all()
        assert (v[inside] >= xyxy[p, 1] - 1e-3).all() and (v[inside] <= xyxy[p, 3] + 1e-3).all()
    assert (xyxy[:, 2] <= w - 1 + 1e-3).all() and (xyxy[:, 3] <= h - 1 + 1e-3).all()
    np.testing.assert_allclose(target["depths"][:, 0].numpy(), j3ds[:, 0, 2], rtol=1e-5)
    np.testing.assert_allclose(target["depths"][:, 1].numpy(), j3ds[:, 0, 2] / k[:, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(target["focals"].numpy(), k[:, 0, 0], rtol=1e-6)
    assert target["j2ds_mask"].all() and target["j2ds_mask"].shape == (n, 45, 2)
    assert target["labels"].tolist() == [0] * n
    H, W = (-(-h // 56) * 56, -(-w // 56) * 56)
    assert target["scale_map"].shape == (H // 28, W // 28, 2)


def test_eval_gt_is_the_world_params_moved_into_the_camera(tmp_path: Path, bodies: BodyModels) -> None:
    cam_rot = rotvec_to_matrix(np.array([0.1, -0.3, 0.05]))[0]
    cam_trans = np.array([0.2, -0.1, 0.5])
    rec = _record(tmp_path / "a.png", K640, [(200, 250, 6.0), (450, 260, 9.0)], (480, 640), cam_rot, cam_trans)
    image, target = SampleBuilder(bodies, CFG).build(rec, AugParams(), None, train=False)
    r = 448 / 640
    assert target["img_size"].tolist() == [int(480 * r), 448] and target["resize_rate"] == pytest.approx(r)
    assert image.shape == (3, 336, 448)
    np.testing.assert_allclose(target["cam_intrinsics"].numpy(), K640 * [[r, 1, r], [1, r, r], [1, 1, 1]], rtol=1e-6)
    bm = bodies.get("neutral")
    with torch.no_grad():
        v_w, _ = bm(torch.tensor(rec.global_orient, dtype=torch.float32), torch.tensor(rec.body_pose, dtype=torch.float32),
                    torch.tensor(rec.betas, dtype=torch.float32))
    v_w = v_w.double().numpy() + rec.transl[:, None]
    expected = v_w @ cam_rot.T + cam_trans
    np.testing.assert_allclose(target["verts"].numpy(), expected, atol=2e-4)
    _check_consistency(target)


@pytest.mark.parametrize("aug", [AugParams(10.0, False, 1.3), AugParams(-12.0, True, 0.85), AugParams(0.0, True, 1.0),
                                 AugParams(7.0, True, 1.6)])
def test_augmented_image_and_gt_stay_aligned(tmp_path: Path, bodies: BodyModels, aug: AugParams) -> None:
    """Render a person into the source image; after any warp the GT mesh must cover the same pixels."""
    rec = _record(tmp_path / "a.png", K_OFF, [(330, 200, 5.0)], (480, 640))
    builder = SampleBuilder(bodies, CFG)
    _, src = builder.build(rec, AugParams(), None, train=False)
    r = src["resize_rate"]
    k0 = src["cam_intrinsics"].double().numpy()
    white = np.full((1, 3), 255, np.uint8)
    # draw at the original resolution with the original intrinsics
    k_orig = k0.copy()
    k_orig[:2] /= r
    drawn = render_meshes(np.zeros((480, 640, 3), np.uint8), list(src["verts"].double().numpy()), bodies.faces,
                          k_orig, white)
    cv2.imwrite(str(rec.img_path), drawn)
    image, tgt = builder.build(rec, aug, None, train=False)
    _check_consistency(tgt)
    h, w = tgt["img_size"].tolist()
    pix = ((image.permute(1, 2, 0).numpy() * STD + MEAN) * 255.0)[:h, :w]
    seen = pix.max(axis=2) > 60
    gt = render_meshes(np.zeros((h, w, 3), np.uint8), list(tgt["verts"].double().numpy()), bodies.faces,
                       tgt["cam_intrinsics"].double().numpy(), white).max(axis=2) > 60
    iou = (seen & gt).sum() / max((seen | gt).sum(), 1)
    assert iou > 0.8, iou


def test_flip_moves_a_left_person_to_the_right(tmp_path: Path, bodies: BodyModels) -> None:
    rec = _record(tmp_path / "a.png", K640, [(150, 240, 6.0)], (480, 640))
    builder = SampleBuilder(bodies, CFG)
    _, plain = builder.build(rec, AugParams(), None, train=False)
    _, flipped = builder.build(rec, AugParams(flip=True), None, train=False)
    w = plain["img_size"][1].item()
    u_plain, u_flip = plain["j2ds"][0, 0, 0].item(), flipped["j2ds"][0, 0, 0].item()
    assert u_plain < w / 2 < u_flip
    assert u_flip == pytest.approx(w - u_plain, abs=2.0)
    assert flipped["boxes"][0, 0].item() == pytest.approx(w / CFG.input_size - plain["boxes"][0, 0].item(), abs=4e-3)
    # the pose is mirrored: left/right joints swapped and y, z axis-angle components negated
    np.testing.assert_allclose(flipped["poses"].numpy(), flip_pose(plain["poses"].double().numpy()), atol=1e-5)
    assert flipped["transl"][0, 0].item() == pytest.approx(-plain["transl"][0, 0].item(), abs=1e-5)
    # the person's left wrist lands where the right wrist was, mirrored
    lw, rw = 20, 21
    assert flipped["j2ds"][0, lw, 0].item() == pytest.approx(w - plain["j2ds"][0, rw, 0].item(), abs=3.0)


def test_flip_permutation_is_appendix_a() -> None:
    assert sorted(FLIP_PERM.tolist()) == list(range(24))
    assert (FLIP_PERM[FLIP_PERM] == np.arange(24)).all()
    for j in (0, 3, 6, 9, 12, 15):
        assert FLIP_PERM[j] == j
    assert FLIP_PERM[16] == 17 and FLIP_PERM[23] == 22 and FLIP_PERM[1] == 2


def test_intrinsics_update_follows_the_warp() -> None:
    """A pixel pushed through the OpenCV warp lands where the updated intrinsics project its ray."""
    h, w = 336, 448
    k = np.array([[500.0, 0, 300.0], [0, 500.0, 200.0], [0, 0, 1]])
    aug = AugParams(11.0, False, 1.4)
    k_aug = augment_intrinsics(k, 1.0, aug, (h, w))
    ray = np.array([0.12, -0.07, 1.0])
    uv = (k @ ray)[:2]
    mat = cv2.getRotationMatrix2D((w / 2, h / 2), aug.rot, aug.scale)
    uv_img = mat @ np.append(uv, 1.0)
    uv_gt = project((embed_3x3(rotation_2d(-aug.rot)) @ ray)[None, None], k_aug)[0, 0]
    np.testing.assert_allclose(uv_gt, uv_img, atol=1e-6)


def test_training_samples_are_deterministic_and_consistent(tmp_path: Path, bodies: BodyModels) -> None:
    rec = _record(tmp_path / "a.png", K640, [(200, 250, 5.0), (420, 230, 8.0), (320, 300, 12.0)], (480, 640))
    a = HMRDataset([rec], bodies, CFG, train=True, seed=3)
    b = HMRDataset([rec], bodies, CFG, train=True, seed=3)
    xs = [a[0] for _ in range(4)]
    ys = [b[0] for _ in range(4)]
    for (xa, ta), (xb, tb) in zip(xs, ys):
        assert torch.equal(xa, xb) and torch.equal(ta["j2ds"], tb["j2ds"])
        _check_consistency(ta)
    assert not torch.equal(xs[0][1]["j2ds"], xs[1][1]["j2ds"]) or not torch.equal(xs[0][0], xs[1][0])


def test_people_out_of_view_are_dropped_and_training_moves_on(tmp_path: Path, bodies: BodyModels) -> None:
    away = _record(tmp_path / "away.png", K640, [(-4000, 240, 5.0)], (480, 640))
    good = _record(tmp_path / "good.png", K640, [(320, 240, 5.0), (-5000, 200, 5.0)], (480, 640))
    _, tgt = HMRDataset([away], bodies, CFG, train=False)[0]
    assert tgt["pnum"] == 0 and tgt["verts"].shape[0] == 0 and tgt["boxes"].shape == (0, 4)
    assert tgt["scale_map"].sum() == 0
    _, tgt = HMRDataset([good], bodies, CFG, train=False)[0]
    assert tgt["pnum"] == 1
    _, tgt = HMRDataset([away, good], bodies, CFG, train=True, seed=0)[0]
    assert tgt["img_path"].endswith("good.png") and tgt["pnum"] >= 1
    with pytest.raises(SathmrError, match="no training image"):
        HMRDataset([away], bodies, CFG, train=True)[0]


def test_missing_image_is_a_clear_error(tmp_path: Path, bodies: BodyModels) -> None:
    rec = _record(tmp_path / "a.png", K640, [(320, 240, 5.0)], (480, 640))
    rec.img_path = tmp_path / "gone.png"
    with pytest.raises(SathmrError, match="image not found"):
        HMRDataset([rec], bodies, CFG)[0]


def test_per_person_intrinsics_are_used_for_projection(tmp_path: Path, bodies: BodyModels) -> None:
    rec = _record(tmp_path / "a.png", K640, [(200, 240, 5.0), (420, 240, 5.0)], (480, 640))
    k2 = K640.copy()
    k2[0, 0] = k2[1, 1] = 800.0
    rec.intrinsics = np.stack([K640, k2])
    _, tgt = SampleBuilder(bodies, CFG).build(rec, AugParams(5.0, True, 1.1), None, train=False)
    _check_consistency(tgt)
    f = tgt["focals"].numpy()
    assert f[1] / f[0] == pytest.approx(800 / 600, rel=1e-5)


# --------------------------------------------------------------------------- scale map
def test_subdivide_once_splits_every_triangle_in_four() -> None:
    verts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    new_v, new_f = subdivide_once(verts, faces)
    assert len(new_v) == 4 + len(unique_edges(faces)) == 9     # shared edge has one midpoint
    assert new_f.shape == (8, 3)
    tri = new_v[new_f]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    np.testing.assert_allclose(areas, 0.125)
    assert any(np.allclose(v, [0.5, 0.5, 0]) for v in new_v)
    batched, _ = subdivide_once(np.stack([verts, verts + 1]), faces)
    np.testing.assert_allclose(batched[1], new_v + 1)


def _square(cx: float, cy: float, half: float, z: float) -> np.ndarray:
    return np.array([[cx - half, cy - half, z], [cx + half, cy - half, z], [cx - half, cy + half, z],
                     [cx + half, cy + half, z]])


def test_scale_map_marks_covered_cells_and_nearer_people_win() -> None:
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    k = np.array([[100.0, 0, 0], [0, 100.0, 0], [0, 0, 1]])     # pixel = 100 * x / z
    # far person spans x,y in [0.5, 3.5] m at z=1 → pixels 50..350; near person 1.4..2.2 → 140..220
    far, near = _square(2.0, 2.0, 1.5, 1.0), _square(1.8, 1.8, 0.4, 1.0)
    boxes = np.array([[0.2, 0.2, 0.3, 0.4], [0.1, 0.1, 0.05, 0.05]])
    dof = np.array([10.0, 2.0])                                # far first
    for order in ([0, 1], [1, 0]):
        sm = build_scale_map(np.stack([far, near])[order], faces, k, boxes[order], dof[order],
                             (392, 420), (392, 448), 28)
        assert sm.shape == (14, 16, 2)
        s_far, s_near = np.linalg.norm([0.3, 0.4]), np.linalg.norm([0.05, 0.05])
        # corner vertices of the far square and their midpoints → its cells, e.g. (50,50) → cell (1,1)
        assert sm[1, 1, 0] == 1 and sm[1, 1, 1] == pytest.approx(s_far)
        assert sm[12, 12, 1] == pytest.approx(s_far)                     # (350, 350) → cell 12
        # the near square covers pixels 140..220: cells 5..7; nearer overwrites the far one there
        assert sm[5, 5, 1] == pytest.approx(s_near) and sm[7, 7, 1] == pytest.approx(s_near)
        assert sm[0, 0, 0] == 0 and sm[13, 15, 0] == 0
        assert set(np.unique(sm[..., 0])) <= {0.0, 1.0}


def test_scale_map_clamps_off_image_vertices_to_border_cells() -> None:
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    k = np.array([[100.0, 0, 0], [0, 100.0, 0], [0, 0, 1]])
    sq = _square(-5.0, 1.0, 0.2, 1.0)            # far to the left of the image
    sm = build_scale_map(sq[None], faces, k, np.array([[0.1, 0.1, 2.0, 0.0]]), np.array([1.0]),
                         (112, 100), (112, 112), 28)
    assert sm[:, 0, 0].sum() > 0 and sm[:, 1:, 0].sum() == 0
    assert sm[sm[..., 0] > 0][:, 1].max() == 1.0             # scale is clamped to 1
    # clamping uses ceil(w/28) - 1 = 3 of the unpadded width, never the padded column
    sm = build_scale_map(_square(50.0, 0.5, 0.2, 1.0)[None], faces, k, np.array([[0.1, 0.1, 0.1, 0.1]]),
                         np.array([1.0]), (112, 60), (112, 112), 28)
    assert sm[:, 2, 0].sum() > 0 and sm[:, 3, 0].sum() == 0


def test_pipeline_scale_map_covers_the_projected_mesh(tmp_path: Path, bodies: BodyModels) -> None:
    rec = _record(tmp_path / "a.png", K640, [(250, 240, 4.0), (330, 250, 9.0)], (480, 640))
    _, tgt = SampleBuilder(bodies, CFG).build(rec, AugParams(), None, train=False)
    sm = tgt["scale_map"].numpy()
    h, w = tgt["img_size"].tolist()
    for p in range(tgt["pnum"]):
        uv = project(tgt["verts"][p:p + 1].double().numpy(), tgt["person_intrinsics"][p].double().numpy())[0]
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        cells = np.floor(uv[inside] / 28).astype(int)
        assert (sm[cells[:, 1], cells[:, 0], 0] == 1).all()
    near = int(np.argmin(tgt["depths"][:, 1].numpy()))
    s_near = min(1.0, float(np.linalg.norm(tgt["boxes"][near, 2:].numpy())))
    uv = project(tgt["verts"][near:near + 1].double().numpy(), tgt["person_intrinsics"][near].double().numpy())[0]
    cells = np.floor(uv / 28).astype(int)
    np.testing.assert_allclose(sm[cells[:, 1], cells[:, 0], 1], s_near, rtol=1e-6)
    assert sm[..., 0].sum() < sm.shape[0] * sm.shape[1]


# --------------------------------------------------------------------------- augmentation pieces, batching
def test_occlusion_only_touches_pixels_inside_boxes() -> None:
    img = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[20.0, 30.0, 120.0, 150.0], [200.0, 10.0, 280.0, 90.0]])
    changed = np.zeros((200, 300), bool)
    for seed in range(20):
        changed |= (occlude(img, boxes, np.random.default_rng(seed)) != 0).any(axis=2)
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in boxes.astype(int):
        inside[y0:y1 + 1, x0:x1 + 1] = True
    assert changed.any() and not (changed & ~inside).any()


def test_color_jitter_can_lift_black_padding() -> None:
    img = np.zeros((20, 20, 3), np.uint8)
    img[:10] = 250
    outs = [color_jitter(img, np.random.default_rng(s)) for s in range(30)]
    assert any(o[15:].max() > 0 for o in outs)                # [quirk] contrast acts on the padding
    assert all(o.dtype == np.uint8 and o.shape == img.shape for o in outs)


def test_collate_and_stack_images(tmp_path: Path, bodies: BodyModels) -> None:
    r1 = _record(tmp_path / "a.png", K640, [(320, 240, 5.0)], (480, 640))
    k_portrait = np.array([[600.0, 0, 200], [0, 600.0, 300], [0, 0, 1]])
    r2 = _record(tmp_path / "b.png", k_portrait, [(200, 300, 5.0)], (600, 400))
    ds = HMRDataset([r1, r2], bodies, CFG)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, 336, 448), (3, 448, 336)]
    assert len(targets) == 2 and targets[1]["img_size"].tolist() == [448, int(400 * 448 / 600)]
    batch, hw = stack_images(images, targets)
    assert batch.shape == (2, 3, 448, 448)
    assert hw.tolist() == [[336, 448], [448, 298]]
    assert torch.equal(batch[0, :, :336], images[0]) and batch[0, :, 336:].abs().sum() == 0
    _, hw_plain = stack_images(images)
    assert hw_plain.tolist() == [[336, 448], [448, 336]]
