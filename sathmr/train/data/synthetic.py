"""Synthetic multi-person scenes with exact SMPL ground truth, written in the BEDLAM on-disk format.

Each scene places 1..max_people posed mannequins (any SMPL-layout body model; by default the synthetic
one from :func:`sathmr.body.generate_synthetic`) at random image positions, depths, shapes and poses in
front of a procedural background, and renders them with the z-buffered mesh renderer. The scenes are
meant to look the way people do in photographs, so that a small network can learn them:

- poses come from realistic pose families (standing, walking, arms raised, ... with per-joint noise;
  :mod:`sathmr.train.data.poses`), not from independent uniform joints;
- the mannequin shows which way it faces: its front in the person's colour with a bright face and chest
  patch, its back darker (a silhouette seen from behind is the mirror image of the one seen from the
  front, so without a cue the heading is ambiguous); half of the people roughly face the camera, the
  others take any heading;
- 1–4 people whose apparent height is 20–90 % of the long side, placed so that no two overlap much.

The GT is stored in the world frame with a random camera, so reading it back exercises the same world →
camera path as real BEDLAM data. Scene i depends only on (seed, i): generation is deterministic and
prefix-stable. The same scenes can be written in the AGORA layout, with a fraction of the people flagged
as kids (a flag only, drawn from its own random stream: the bodies and images do not change; AGORA too
fits its kids with the adult model), for the kid metrics of the AGORA protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from sathmr.body import generate_synthetic
from sathmr.common.errors import SathmrError
from sathmr.outputs.render import render_meshes
from sathmr.runtime.postprocess import box_iou
from sathmr.train.data.annots_io import save_annots
from sathmr.train.data.defaults import HEIGHT_RANGE, LAYOUT_SPLITS, MAX_PEOPLE, SPLITS
from sathmr.train.data.geometry import matrix_to_rotvec, rotvec_to_matrix
from sathmr.train.data.pipeline import BodyModels
from sathmr.train.data.poses import POSE_PRIORS
from sathmr.train.data.readers import LAYOUTS

KID_STREAM = 1              # kid flags of scene i come from default_rng([seed, i, KID_STREAM])
ASPECTS = ((4, 3), (16, 9), (1, 1), (3, 4), (9, 16), (3, 2))
BODY_HEIGHT_M = 1.7
BACK_SHADE = 0.35           # the back of a mannequin is its colour times this
PATCH_COLOR = 255           # the face and chest patch on its front (white; person colours stay below it)
COLOR_RANGE = (40, 200)     # per-channel person colours
FACING_CAMERA = 0.5         # fraction of people whose heading is within ±FACING_SPREAD of the camera
FACING_SPREAD = np.pi / 4
MAX_OVERLAP = 0.25          # box IoU allowed between two people of a scene (re-drawn up to PLACE_TRIES)
PLACE_TRIES = 20

def camera_facing_orient(rng: np.random.Generator, facing: float = FACING_CAMERA) -> np.ndarray:
    """Upright in the camera frame (y down): SMPL up → image up, a little lean, and a heading that
    is near the camera for a ``facing`` fraction of people (as in photographs), anything otherwise."""
    upright = rotvec_to_matrix(np.array([np.pi, 0.0, 0.0]))[0]
    spread = FACING_SPREAD if rng.random() < facing else np.pi
    heading = rotvec_to_matrix(np.array([0.0, rng.uniform(-spread, spread), 0.0]))[0]
    lean = rotvec_to_matrix(rng.uniform(-0.15, 0.15, 3))[0]
    return matrix_to_rotvec(upright @ heading @ lean)[0]


# --------------------------------------------------------------------------- backgrounds
def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = (xx * np.cos(ang) + yy * np.sin(ang))
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    return (1 - t)[..., None] * _random_color(rng) + t[..., None] * _random_color(rng)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cells = int(rng.integers(2, 12))
    coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    return smooth + rng.normal(0, rng.uniform(2, 25), (h, w, 3))


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    ang, period = rng.uniform(0, np.pi), rng.uniform(6, 80)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / period)
    return (1 - t)[..., None] * _random_color(rng) + t[..., None] * _random_color(rng)


def _checker(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    size = rng.uniform(8, 90)
    ang = rng.uniform(0, np.pi / 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xx * np.cos(ang) - yy * np.sin(ang), xx * np.sin(ang) + yy * np.cos(ang)
    t = ((np.floor(u / size) + np.floor(v / size)) % 2)[..., None]
    return (1 - t) * _random_color(rng) + t * _random_color(rng)


def _shapes(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(3, 20))):
        color = tuple(float(c) for c in _random_color(rng))
        kind = rng.integers(3)
        if kind == 0:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, centre, int(rng.integers(4, max(h, w) // 6)), color, -1, cv2.LINE_AA)
        elif kind == 1:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.rectangle(img, p0, p1, color, -1)
        else:
            pts = np.stack([rng.integers(0, w, 5), rng.integers(0, h, 5)], 1).astype(np.int32)
            cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
    return img


BACKGROUNDS = (_gradient, _noise, _stripes, _checker)


def procedural_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """BGR uint8 background: a gradient/noise/stripe/checker base, maybe blended, maybe with shapes."""
    img = BACKGROUNDS[rng.integers(len(BACKGROUNDS))](rng, h, w)
    if rng.random() < 0.4:
        alpha = rng.uniform(0.2, 0.6)
        img = (1 - alpha) * img + alpha * BACKGROUNDS[rng.integers(len(BACKGROUNDS))](rng, h, w)
    img = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.6:
        img = _shapes(rng, img)
    return img


# --------------------------------------------------------------------------- scenes
def front_faces(body_model, faces: np.ndarray) -> np.ndarray:
    """(F,) bool: faces whose outward normal points forward (+z) in the rest pose."""
    with torch.no_grad():
        rest, _ = body_model(torch.zeros(1, 3), torch.zeros(1, 69), torch.zeros(1, 10))
    tri = rest[0].double().numpy()[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if np.einsum("fi,fi->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) < 0:   # inward winding
        normals = -normals
    return normals[:, 2] > 0


def front_patch(body_model, faces: np.ndarray) -> np.ndarray:
    """(F,) bool: the face (front of the head) and the chest, the faces painted :data:`PATCH_COLOR`.

    Chosen in the rest pose from the body model's own joints (the head above the neck; the chest
    between the spine and the collar bones, inside the shoulders), so any SMPL-layout model works.
    """
    with torch.no_grad():
        rest, joints = body_model(torch.zeros(1, 3), torch.zeros(1, 69), torch.zeros(1, 10))
    centre = rest[0].double().numpy()[faces].mean(axis=1)
    j = joints[0].double().numpy()
    neck, head, spine2, l_collar, l_shoulder = j[12], j[15], j[6], j[13], j[16]
    face = centre[:, 1] > (neck[1] + head[1]) / 2
    chest = ((centre[:, 1] > spine2[1]) & (centre[:, 1] < l_collar[1])
             & (np.abs(centre[:, 0]) < 0.65 * l_shoulder[0]))
    return front_faces(body_model, faces) & (face | chest)


def two_tone(colors: np.ndarray, front: np.ndarray, patch: np.ndarray | None = None) -> np.ndarray:
    """(n,3) person colours → (n,F,3) face colours: the colour in front, BACK_SHADE of it behind,
    and :data:`PATCH_COLOR` on the ``patch`` faces (the front cue)."""
    back = np.rint(colors * BACK_SHADE).astype(np.uint8)
    out = np.where(front[None, :, None], colors[:, None], back[:, None])
    if patch is not None:
        out[:, patch] = PATCH_COLOR
    return out


@dataclass
class Scene:
    image: np.ndarray           # BGR uint8
    annotation: dict            # BEDLAM-format annotation of this image
    verts: np.ndarray           # (n,V,3) camera-frame vertices that were rendered (for checks)


def _random_camera(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """World → camera extrinsics (so the stored GT really goes through the world frame)."""
    rot = rotvec_to_matrix(np.array([rng.uniform(-0.4, 0.4), rng.uniform(-np.pi, np.pi), rng.uniform(-0.2, 0.2)]))[0]
    return rot, rng.uniform(-3.0, 3.0, 3)


def _image_box(verts_c: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(4,) x0 y0 x1 y1 pixel box of camera-frame vertices."""
    uv = verts_c[:, :2] / verts_c[:, 2:3] * k[[0, 1], [0, 1]] + k[:2, 2]
    return np.concatenate([uv.min(0), uv.max(0)])


def _place(rng: np.random.Generator, verts: np.ndarray, rest_pelvis: np.ndarray, depth: np.ndarray,
           k: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(n,3) camera-frame translations: pelvis anywhere in the image, re-drawn (up to PLACE_TRIES
    times) while the person's box overlaps an earlier one by more than MAX_OVERLAP IoU."""
    h, w = hw
    focal = k[0, 0]
    transl, boxes = [], []
    for i in range(len(verts)):
        for _ in range(PLACE_TRIES):
            uv = rng.uniform([0.05 * w, 0.05 * h], [0.95 * w, 0.95 * h])
            pelvis = np.append((uv - k[:2, 2]) * depth[i] / focal, depth[i])
            box = _image_box(verts[i] + pelvis - rest_pelvis[i], k)
            if not boxes or box_iou(box[None], np.stack(boxes)).max() <= MAX_OVERLAP:
                break
        transl.append(pelvis - rest_pelvis[i])
        boxes.append(box)
    return np.stack(transl)


def make_scene(rng: np.random.Generator, bodies: BodyModels, size: int, max_people: int = MAX_PEOPLE,
               height_range: tuple[float, float] = HEIGHT_RANGE, pose_prior: str = "families") -> Scene:
    """One scene; a narrower ``height_range`` (e.g. large people only) serves as an easier curriculum
    stage, ``pose_prior="uniform"`` as a harder one (independent joints, see :mod:`.poses`)."""
    aw, ah = ASPECTS[rng.integers(len(ASPECTS))]
    w, h = (size, int(size * ah / aw)) if aw >= ah else (int(size * aw / ah), size)
    fov = np.deg2rad(rng.uniform(45.0, 75.0))
    focal = (max(h, w) / 2.0) / np.tan(fov / 2.0)
    k = np.array([[focal, 0.0, w / 2.0], [0.0, focal, h / 2.0], [0.0, 0.0, 1.0]])
    n = int(rng.integers(1, max_people + 1))

    betas = np.clip(rng.normal(0.0, 1.0, (n, 10)), -2.5, 2.5)
    body_pose = np.stack([POSE_PRIORS[pose_prior](rng) for _ in range(n)])
    orient_c = np.stack([camera_facing_orient(rng) for _ in range(n)])
    # apparent height log-uniform in height_range (a fraction of the long side)
    frac = np.exp(rng.uniform(np.log(height_range[0]), np.log(height_range[1]), n))
    depth = focal * BODY_HEIGHT_M / (frac * max(h, w))

    bm = bodies.get("neutral")
    with torch.no_grad():
        verts, joints = bm(torch.as_tensor(orient_c, dtype=torch.float32),
                           torch.as_tensor(body_pose, dtype=torch.float32),
                           torch.as_tensor(betas, dtype=torch.float32))
    verts, rest_pelvis = verts.double().numpy(), joints[:, 0].double().numpy()
    transl_c = _place(rng, verts, rest_pelvis, depth, k, (h, w))
    verts_c = verts + transl_c[:, None]

    faces = bodies.faces
    colors = two_tone(rng.uniform(*COLOR_RANGE, (n, 3)).astype(np.uint8), front_faces(bm, faces),
                      front_patch(bm, faces))
    image = render_meshes(procedural_background(rng, h, w), list(verts_c), faces, k, colors)

    cam_rot, cam_trans = _random_camera(rng)
    orient_w = matrix_to_rotvec(cam_rot.T @ rotvec_to_matrix(orient_c))
    transl_w = (transl_c + rest_pelvis - cam_trans) @ cam_rot - rest_pelvis   # R^T (t_c + J0 − T) − J0
    annotation = {
        "cam_int": k,
        "cam_rot": [cam_rot.copy() for _ in range(n)],
        "cam_trans": [cam_trans.copy() for _ in range(n)],
        "shape": [b for b in betas],
        "pose_world": [np.concatenate([orient_w[i], body_pose[i]]) for i in range(n)],
        "trans_world": [t for t in transl_w],
    }
    return Scene(image, annotation, verts_c)


def to_agora(annotation: dict, kid: np.ndarray) -> dict:
    """A scene's BEDLAM-format annotation in AGORA's (§6): every person valid, one intrinsics matrix."""
    pose = annotation["pose_world"]
    return {"isValid": [True] * len(pose), "cam_intrinsics": annotation["cam_int"],
            "cam_rot": annotation["cam_rot"], "cam_trans": annotation["cam_trans"],
            "smpl_gt": [{"betas": b, "global_orient": p[:3], "body_pose": p[3:], "transl": t}
                        for b, p, t in zip(annotation["shape"], pose, annotation["trans_world"])],
            "kid": [bool(k) for k in kid]}


def generate_dataset(out: str | Path, n: int, seed: int = 0, smpl_dir: str | Path | None = None,
                     size: int = 448, split: str = "train", max_people: int = MAX_PEOPLE, first: int = 0,
                     height_range: tuple[float, float] = HEIGHT_RANGE, pose_prior: str = "families",
                     layout: str = "bedlam", kids: float = 0.0) -> Path:
    """Write scenes ``first .. first+n-1`` under ``<out>/<layout>/`` for
    ``open_dataset(out, layout, LAYOUT_SPLITS[layout][split])``.

    Without ``smpl_dir`` a synthetic SMPL folder is generated in ``<out>/smpl`` (or reused). With
    ``layout="agora"`` each person is flagged kid with probability ``kids``. Returns the annotation file
    written; an existing one for the same split is replaced.
    """
    if split not in SPLITS:
        raise SathmrError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if layout not in LAYOUT_SPLITS:
        raise SathmrError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUT_SPLITS)}")
    if not 0.0 <= kids <= 1.0 or (kids and layout != "agora"):
        raise SathmrError(f"--kids {kids:g}: need a fraction in [0, 1], with --layout agora (BEDLAM has no kid flags)")
    if n < 1 or max_people < 1 or size < 56:
        raise SathmrError("need --n >= 1, --max-people >= 1 and --size >= 56")
    if pose_prior not in POSE_PRIORS:
        raise SathmrError(f"unknown pose prior {pose_prior!r}; choose from {', '.join(POSE_PRIORS)}")
    if not 0 < height_range[0] <= height_range[1]:
        raise SathmrError(f"need 0 < --min-height <= --max-height, got {height_range[0]}, {height_range[1]}")
    out = Path(out)
    if smpl_dir is None:
        smpl_dir = out / "smpl"
        if not smpl_dir.is_dir():
            generate_synthetic(smpl_dir, size="tiny")
    bodies = BodyModels(smpl_dir)
    where, split_name = LAYOUTS[layout], LAYOUT_SPLITS[layout][split]
    image_dir = out / where.folder / where.images[split_name]
    image_dir.mkdir(parents=True, exist_ok=True)
    annots: dict[str, dict] = {}
    for i in range(first, first + n):
        scene = make_scene(np.random.default_rng([seed, i]), bodies, size, max_people, height_range, pose_prior)
        name = f"synth_s{seed}_{i:06d}.png"
        if not cv2.imwrite(str(image_dir / name), scene.image):
            raise SathmrError(f"cannot write {image_dir / name}")
        if layout == "agora":
            kid = np.random.default_rng([seed, i, KID_STREAM]).random(len(scene.verts)) < kids
            annots[name] = to_agora(scene.annotation, kid)
        else:
            annots[name] = scene.annotation
    annot_path = out / where.folder / where.annots[split_name]
    save_annots(annot_path, annots)
    return annot_path
