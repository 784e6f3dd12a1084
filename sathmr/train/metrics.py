"""Evaluation protocols of SAT-HMR (spec §7): AGORA-style greedy matching, detection scores, AGORA/BEDLAM
MPJPE/MVE/NMJE/NMVE (and their kid-only versions), 3DPW MPJPE/PA-MPJPE/MVE/PA-MVE, and the AGORA
test-submission writer (what each figure measures: :mod:`sathmr.train.metric_definitions`).

Everything here is numpy on CPU; per-person errors are pooled over the whole dataset (not per image).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from sathmr.common.errors import SathmrError
from sathmr.common.files import atomic_write

MATCH_JOINTS = 24
IOU_THRESH = 0.1
H36M_EVAL_JOINTS = (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16)
AGORA_GT_WIDTH = 3840           # AGORA's GT frame; the 1280×720 release is evaluated there


def to_numpy(x) -> np.ndarray:
    """Accept numpy arrays, lists or torch tensors (detached, moved to CPU) as float64 arrays."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def load_array(path: str | Path, what: str) -> np.ndarray:
    """Load a plain ``.npy`` table (vertex subset, joint regressor) without ever unpickling."""
    p = Path(path)
    if not p.is_file():
        raise SathmrError(f"{what} file not found: {p}")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SathmrError(f"cannot read {what} from {p}: {exc}") from None


# Matching ------------------------------------------------------------------------------------
def joint_box_iou(p1: np.ndarray, p2: np.ndarray) -> float:
    """IoU of the bounding boxes of two 2D joint sets, inclusive "+1 pixel" convention (AGORA)."""
    (x1a, y1a), (x2a, y2a) = p1.min(0), p1.max(0)
    (x1b, y1b), (x2b, y2b) = p2.min(0), p2.max(0)
    if not (x1a < x2a and y1a < y2a and x1b < x2b and y1b < y2b):
        raise ValueError("degenerate joint set: its bounding box has zero width or height")
    inter = max(0.0, min(x2a, x2b) - max(x1a, x1b) + 1) * max(0.0, min(y2a, y2b) - max(y1a, y1b) + 1)
    area_a = (x2a - x1a + 1) * (y2a - y1a + 1)
    area_b = (x2b - x1b + 1) * (y2b - y1b + 1)
    return float(inter / (area_a + area_b - inter))


@dataclass
class MatchResult:
    matches: list[tuple[int, int]] = field(default_factory=list)   # (pred, gt)
    false_positives: list[int] = field(default_factory=list)
    misses: list[int] = field(default_factory=list)


def match_people(pred_j2ds, gt_j2ds, iou_thresh: float = IOU_THRESH) -> MatchResult:
    """AGORA greedy matching on the first 24 2D joints.

    Pair error is the *spectral* norm of the 24×2 difference matrix (``np.linalg.norm(D, 2)``). Pairs are
    popped from the smallest error up; a pair is kept when both members are free and the joint-box IoU is
    ≥ ``iou_thresh``. Popping a pair with IoU below the gate ends the round and bumps a counter that only
    bounds the number of rounds.
    """
    pred = to_numpy(pred_j2ds)[:, :MATCH_JOINTS, :2]
    gt = to_numpy(gt_j2ds)[:, :MATCH_JOINTS, :2]
    n_pred, n_gt = len(pred), len(gt)
    errors = np.full((n_pred, n_gt), np.inf)
    for i in range(n_pred):
        for j in range(n_gt):
            errors[i, j] = np.linalg.norm(pred[i] - gt[j], 2)
    pred_used = np.zeros(n_pred, dtype=bool)
    gt_used = np.zeros(n_gt, dtype=bool)
    result = MatchResult()
    fp_counter = 0
    exhausted = False
    while not exhausted and not gt_used.all() and pred_used.sum() + fp_counter < n_pred:
        while True:
            if np.isinf(errors).all():          # every pair popped (the official loop would spin here)
                exhausted = True
                break
            i, j = np.unravel_index(np.argmin(errors), errors.shape)
            errors[i, j] = np.inf
            iou = joint_box_iou(pred[i], gt[j])
            if not pred_used[i] and not gt_used[j] and iou >= iou_thresh:
                pred_used[i] = gt_used[j] = True
                result.matches.append((int(i), int(j)))
                break
            if iou < iou_thresh:
                fp_counter += 1
                break
    result.false_positives = [int(i) for i in np.flatnonzero(~pred_used)]
    result.misses = [int(j) for j in np.flatnonzero(~gt_used)]
    return result


def detection_scores(num_gt: int, misses: int, false_positives: int) -> dict[str, float]:
    """Precision, recall and F1, each rounded to 2 decimals (0 where undefined)."""
    tp, fp, fn = num_gt - misses, false_positives, misses

    def ratio(num: float, den: float) -> float:
        return round(num / den, 2) if den > 0 else 0.0

    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(tp, tp + 0.5 * (fp + fn))}


# 3D errors -----------------------------------------------------------------------------------
def hip_align(points: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Translate so that the midpoint of the hips (SMPL joints 1 and 2) is the origin."""
    return points - (joints[1] + joints[2]) / 2


def regress_h36m(regressor: np.ndarray, verts: np.ndarray, transl: np.ndarray) -> np.ndarray:
    """(17,3) H36M joints as the original regresses them: from the vertices *without* the SMPL translation,
    which is added back afterwards, J = R·(V − t) + t [must match §7.4]. This equals R·V only when every
    row of R sums to 1; otherwise the camera-frame R·V would leak (1 − row sum)·t, metres of depth, into
    the joints."""
    return regressor @ (verts - transl) + transl


def mean_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=-1).mean())


def procrustes_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Similarity (uniform scale, rotation, translation) that best maps ``src`` (N,3) onto ``dst``
    (Umeyama, with the reflection correction), applied to ``src``."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xs.T @ xd                              # 3×3 cross-covariance
    u, _, vt = np.linalg.svd(cov)
    z = np.eye(3)
    z[-1, -1] = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ z @ u.T
    scale = np.trace(rot @ cov) / (xs ** 2).sum()
    return scale * xs @ rot.T + mu_d


@dataclass
class EvalSums:
    """Matching counts and per-person errors of one image, or pooled over images in the order merged
    (the order fixes the floating-point sum, so shards merged in dataset order score as one process)."""
    num_gt: int = 0
    misses: int = 0
    false_positives: int = 0
    errors: dict[str, list[float]] = field(default_factory=dict)   # kid-only errors under "kid_<key>"
    has_kid: bool = False       # some image had AGORA kid flags: the result adds the kid metrics
    kid_gt: int = 0
    kid_misses: int = 0

    def add_error(self, key: str, value: float) -> None:
        self.errors.setdefault(key, []).append(value)

    def merge(self, other: EvalSums) -> None:
        self.num_gt += other.num_gt
        self.misses += other.misses
        self.false_positives += other.false_positives
        self.has_kid |= other.has_kid
        self.kid_gt += other.kid_gt
        self.kid_misses += other.kid_misses
        for key, values in other.errors.items():
            self.errors.setdefault(key, []).extend(values)


class EvalAccumulator:
    """Sums matching counts and per-person errors over a dataset.

    ``protocol="agora"`` (AGORA/BEDLAM): hip-midpoint alignment, 24 SMPL joints, MVE on the ``body_verts``
    subset (all vertices when None), and kid-only metrics when the GT carries kid flags.
    ``protocol="3dpw"``: H36M joints regressed with ``h36m_regressor`` (17×V, see :func:`regress_h36m`),
    pelvis alignment, 14 joints, plus PA-MPJPE / PA-MVE.
    ``body_verts`` and ``h36m_regressor`` may be arrays or ``.npy`` paths.
    """

    def __init__(self, protocol: str = "agora", body_verts=None, h36m_regressor=None,
                 iou_thresh: float = IOU_THRESH) -> None:
        if protocol not in ("agora", "3dpw"):
            raise SathmrError(f"unknown evaluation protocol {protocol!r}; choose 'agora' or '3dpw'")
        if isinstance(body_verts, (str, Path)):
            body_verts = load_array(body_verts, "body vertex subset")
        if isinstance(h36m_regressor, (str, Path)):
            h36m_regressor = load_array(h36m_regressor, "H36M joint regressor")
        if protocol == "3dpw" and h36m_regressor is None:
            raise SathmrError("the 3DPW protocol needs the H36M joint regressor (J_regressor_h36m_correct.npy)")
        self.protocol = protocol
        self.body_verts = None if body_verts is None else np.asarray(body_verts, dtype=np.int64)
        self.h36m = None if h36m_regressor is None else np.asarray(h36m_regressor, dtype=np.float64)
        self.iou_thresh = iou_thresh
        self.sums = EvalSums()

    def add(self, pred: Mapping, gt: Mapping) -> MatchResult:
        """Add one image. Both dicts hold ``j2ds`` (k,≥24,2) canvas px, ``j3ds`` (k,≥24,3) and ``verts``
        (k,V,3) in the camera frame (metres); ``j3ds`` is not needed for 3DPW, which uses ``transl`` (k,3),
        the SMPL translation contained in ``verts`` (zeros when absent). ``gt`` may hold ``kid``: AGORA's
        per-person flags, indexed by GT position (the list may be longer than the GT, see the pipeline)."""
        sums, match = self.score_image(pred, gt)
        self.sums.merge(sums)
        return match

    def score_image(self, pred: Mapping, gt: Mapping) -> tuple[EvalSums, MatchResult]:
        """One image's contribution, without adding it (see :meth:`add` for the inputs)."""
        n_gt = len(gt["j2ds"])
        n_pred = len(pred["j2ds"])
        if n_gt and n_pred:
            match = match_people(pred["j2ds"], gt["j2ds"], self.iou_thresh)
        else:
            match = MatchResult(false_positives=list(range(n_pred)), misses=list(range(n_gt)))
        sums = EvalSums(n_gt, len(match.misses), len(match.false_positives))
        kid = self._kid_flags(gt, n_gt)
        if kid is not None:
            sums.has_kid, sums.kid_gt = True, int(kid.sum())
            sums.kid_misses = int(kid[match.misses].sum())
        for i, j in match.matches:
            for key, value in self._person_errors(pred, gt, i, j).items():
                sums.add_error(key, value)
                if kid is not None and kid[j]:
                    sums.add_error(f"kid_{key}", value)
        return sums, match

    def _kid_flags(self, gt: Mapping, n_gt: int) -> np.ndarray | None:
        """(n_gt,) bool kid flags of the GT people (AGORA protocol only, as the original), or None."""
        if self.protocol != "agora" or gt.get("kid") is None:
            return None
        flags = to_numpy(gt["kid"]).reshape(-1).astype(bool)
        if len(flags) < n_gt:
            raise SathmrError(f"{len(flags)} kid flags for {n_gt} ground-truth people")
        return flags[:n_gt]

    def _person_errors(self, pred: Mapping, gt: Mapping, i: int, j: int) -> dict[str, float]:
        pv, gv = to_numpy(pred["verts"][i]), to_numpy(gt["verts"][j])
        if self.protocol == "agora":
            pj, gj = to_numpy(pred["j3ds"][i])[:MATCH_JOINTS], to_numpy(gt["j3ds"][j])[:MATCH_JOINTS]
            if self.body_verts is not None:
                pv, gv = pv[self.body_verts], gv[self.body_verts]
            return {"mpjpe": mean_l2(hip_align(pj, pj), hip_align(gj, gj)),
                    "mve": mean_l2(hip_align(pv, pj), hip_align(gv, gj))}
        pj = regress_h36m(self.h36m, pv, self._transl(pred, i))
        gj = regress_h36m(self.h36m, gv, self._transl(gt, j))
        pv, gv = pv - pj[0], gv - gj[0]
        pj, gj = (pj - pj[0])[list(H36M_EVAL_JOINTS)], (gj - gj[0])[list(H36M_EVAL_JOINTS)]
        return {"mpjpe": mean_l2(pj, gj), "pa_mpjpe": mean_l2(procrustes_align(pj, gj), gj),
                "mve": mean_l2(pv, gv), "pa_mve": mean_l2(procrustes_align(pv, gv), gv)}

    @staticmethod
    def _transl(side: Mapping, k: int) -> np.ndarray:
        return to_numpy(side["transl"][k]).reshape(3) if side.get("transl") is not None else np.zeros(3)

    def result(self) -> dict[str, float]:
        """Scores over everything added: counts rounded to 2 decimals, errors in mm rounded to 0.1, and
        NMJE/NMVE from the *rounded* MPJPE/MVE and F1 (NaN errors when nothing matched, inf when F1 = 0).

        With kid flags, ``kid_*`` repeats them on the kids, as the original's ``evaluate_agora`` does:
        kid misses are the missed kids, but kid precision and F1 count *every* false positive."""
        s = self.sums
        keys = ("mpjpe", "mve") if self.protocol == "agora" else ("mpjpe", "pa_mpjpe", "mve", "pa_mve")
        out = _scores(s.num_gt, s.misses, s.false_positives, s.errors, keys)
        if s.has_kid:
            kid = _scores(s.kid_gt, s.kid_misses, s.false_positives,
                          {k[4:]: v for k, v in s.errors.items() if k.startswith("kid_")}, keys)
            out.update({f"kid_{k}": v for k, v in kid.items()})
            out["kid_num_gt"] = s.kid_gt
        return out


def _scores(num_gt: int, misses: int, false_positives: int, errors: Mapping[str, list[float]],
            keys: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = detection_scores(num_gt, misses, false_positives)
    for key in keys:
        vals = errors.get(key, [])
        out[key] = round(float(np.mean(vals)) * 1000, 1) if vals else float("nan")
    for norm_key, key in (("nmje", "mpjpe"), ("nmve", "mve")):
        out[norm_key] = round(out[key] / out["f1"], 1) if out["f1"] > 0 else float("inf")
    out["num_matched"] = len(errors.get("mpjpe", []))
    return out


# AGORA test submission -----------------------------------------------------------------------
_NUMPY2_ARRAY = b"cnumpy._core.multiarray\n_reconstruct\n"
_NUMPY1_ARRAY = b"cnumpy.core.multiarray\n_reconstruct\n"


def portable_pickle(obj) -> bytes:
    """Pickle numpy arrays the way numpy 1.x does, so that the server loads them whatever its numpy.

    NumPy 2 names its array constructor ``numpy._core.multiarray._reconstruct``, which numpy < 1.26
    cannot import; ``numpy.core.multiarray._reconstruct`` (what the original's pickles name) loads under
    both. Protocol 3 writes that name once, as plain text (GLOBAL; later arrays refer to the memo), before
    the first array's data, so its first occurrence is the opcode and is renamed in place.
    """
    return pickle.dumps(obj, protocol=3).replace(_NUMPY2_ARRAY, _NUMPY1_ARRAY, 1)


def write_agora_submission(predictions: Iterable[Mapping], out: str | Path, canvas: int = 1288,
                           gt_width: int = AGORA_GT_WIDTH, timestamp: str | None = None) -> Path:
    """Write the zip AGORA's evaluation server takes, in the layout of the original's ``test_agora``
    (spec §7.5); returns its path: ``out`` itself when it ends in ``.zip``, else
    ``out/pred_<YYYYmmdd_HHMMSS>.zip`` (the original's name).

    Each prediction is one image: ``img_name`` (str), ``j2ds`` (k,≥24,2) canvas pixels, ``poses`` (k,72)
    axis-angle and ``betas`` (k,10) of the kept queries in query order. The zip holds one pickle per
    person, ``predictions/<name up to its first dot>_personId_<k>.pkl``: ``joints`` (24,2) rescaled from
    the canvas to AGORA's 3840-wide GT frame in float32 as the original computes it, and ``params`` with
    zero ``transl`` (1,3), ``betas`` (1,10), ``global_orient`` (1,1,3), ``body_pose`` (1,23,3). The zip
    is built in memory and renamed into place (no half zip, no loose pickle folder: the server needs
    neither).
    """
    out = Path(out)
    stamp = timestamp or datetime.now().strftime("%Y%m%d_%H%M%S")
    zip_path = out if out.suffix.lower() == ".zip" else out / f"pred_{stamp}.zip"
    factor = np.float32(gt_width / canvas)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for item in predictions:
            stem = Path(str(item["img_name"])).name.split(".")[0]
            j2ds = np.asarray(to_numpy(item["j2ds"]), dtype=np.float32)
            n = len(j2ds)
            poses = np.asarray(to_numpy(item["poses"]), dtype=np.float32)
            betas = np.asarray(to_numpy(item["betas"]), dtype=np.float32)
            if poses.size != n * 72 or len(betas) != n:
                raise SathmrError(f"submission for {stem}: {n} people but poses {poses.shape}, betas {betas.shape}")
            poses, betas = poses.reshape(n, 24, 3), betas.reshape(n, betas.shape[-1])
            for k in range(n):
                record = {
                    "joints": j2ds[k, :MATCH_JOINTS, :2] * factor,
                    "params": {"transl": np.zeros((1, 3)), "betas": betas[k : k + 1, :10],
                               "global_orient": poses[k : k + 1, :1], "body_pose": poses[k : k + 1, 1:]},
                }
                zf.writestr(f"predictions/{stem}_personId_{k}.pkl", portable_pickle(record))
    try:
        atomic_write(zip_path, buf.getvalue())
    except OSError as exc:
        raise SathmrError(f"cannot write the AGORA submission {zip_path}: {exc}") from None
    return zip_path
