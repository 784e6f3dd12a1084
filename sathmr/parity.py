"""Backend parity: the same images through two backends, compared output by output and person by person.

Three layers of comparison, because each catches different faults:
  * network outputs (all queries): numerical drift of the engine (max / mean |a - b|);
  * decoded raw outputs (SMPL joints, vertices, camera) of all queries: how the drift propagates;
  * task level: people above the threshold matched by the Hungarian algorithm on box IoU, then joint and
    vertex errors in mm and box IoU of the matches. That is what a user sees, and the pass/fail test.
Token bookkeeping (counts, the token set, overflow) is compared too: a flipped cell near a threshold
or a budget overflow explains a task-level difference.

Scale maps and token layouts are compared on the image's own cells only: a static backend runs on a
larger canvas, whose extra cells are padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
from scipy.optimize import linear_sum_assignment

from sathmr.api import Predictor, load_body_for
from sathmr.backends import BACKENDS, open_model
from sathmr.errors import SathmrError
from sathmr.io import iter_images, write_json
from sathmr.postprocess import box_iou
from sathmr.preprocess import Prepared

QUERY_OUTPUTS = ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam")
DECODED_OUTPUTS = ("pred_poses", "pred_transl", "pred_j3ds", "pred_j2ds", "pred_verts", "pred_depths")
MATCH_IOU = 0.5           # below this a pair is two different people, not one person with drift
BORDERLINE_CONF = 1e-3    # a person this close to the threshold may legitimately appear in one backend only


def diff_stats(a, b) -> dict[str, float]:
    """max and mean |a − b|, and ``rel`` = max |a − b| / max |a| (the difference relative to the output's
    own scale: what "≤ 1e-5 relative" means throughout)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = np.abs(a - b)
    if not d.size:
        return {"max": 0.0, "mean": 0.0, "rel": 0.0}
    return {"max": float(d.max()), "mean": float(d.mean()), "rel": float(d.max() / max(np.abs(a).max(), 1e-30))}


def xyxy(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) cxcywh → xyxy."""
    c, wh = boxes[..., :2], boxes[..., 2:]
    return np.concatenate((c - wh / 2, c + wh / 2), -1)


def token_set(net: dict) -> set[tuple[int, int, int]]:
    lvl, yx = net["tok_lvl"][0], net["tok_yx"][0]
    keep = lvl >= 0
    return {(int(lv), int(y), int(x)) for lv, (y, x) in zip(lvl[keep].tolist(), yx[keep].tolist())}


@dataclass
class ImageParity:
    name: str
    network: dict[str, dict[str, float]]
    decoded: dict[str, dict[str, float]]
    people_a: int
    people_b: int
    matched: int
    unmatched: int                  # people without a partner, not counting borderline ones
    borderline: int                 # unpartnered people whose confidence is within BORDERLINE_CONF of the threshold
    joint_mm: dict[str, float]      # over matched people: mean and max of the per-person mean joint error
    vertex_mm: dict[str, float]
    box_iou_min: float
    tokens_equal: bool              # same counts per level and the same token set
    token_set_diff: int             # tokens in one set only
    counts_a: list[int]
    counts_b: list[int]
    overflow_a: list[int]
    overflow_b: list[int]

    def passed(self, tol_mm: float) -> bool:
        return self.unmatched == 0 and self.joint_mm["max"] <= tol_mm and self.vertex_mm["max"] <= tol_mm


@dataclass
class ParityReport:
    a: str
    b: str
    threshold: float
    tol_mm: float
    images: list[ImageParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(im.passed(self.tol_mm) for im in self.images)

    def worst(self, section: str) -> dict[str, dict[str, float]]:
        """Per output: max of the per-image max, mean of the per-image means."""
        keys = {k for im in self.images for k in getattr(im, section)}
        def per(k: str, stat: str) -> list[float]:
            return [getattr(im, section)[k][stat] for im in self.images if k in getattr(im, section)]
        return {k: {"max": max(per(k, "max")), "mean": float(np.mean(per(k, "mean"))), "rel": max(per(k, "rel"))}
                for k in sorted(keys)}

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "threshold": self.threshold, "tol_mm": self.tol_mm, "passed": self.passed,
                "network": self.worst("network"), "decoded": self.worst("decoded"),
                "images": [asdict(im) for im in self.images]}

    def summary(self) -> str:
        lines = [f"parity {self.a} vs {self.b}: {len(self.images)} image(s), threshold {self.threshold:g}, "
                 f"tolerance {self.tol_mm:g} mm -> {'PASS' if self.passed else 'FAIL'}"]
        for sec in ("network", "decoded"):
            lines.append(f"  {sec} outputs (max / mean |a-b|, max relative to max |a|):")
            lines += [f"    {k:16s} {v['max']:.3e} / {v['mean']:.3e}  rel {v['rel']:.2e}" for k, v in self.worst(sec).items()]
        for im in self.images:
            flag = "ok" if im.passed(self.tol_mm) else "FAIL"
            lines.append(
                f"  {im.name}: people {im.people_a}/{im.people_b}, matched {im.matched}, unmatched {im.unmatched}"
                f" (+{im.borderline} borderline), joints {im.joint_mm['mean']:.4f}/{im.joint_mm['max']:.4f} mm, "
                f"verts {im.vertex_mm['mean']:.4f}/{im.vertex_mm['max']:.4f} mm, min IoU {im.box_iou_min:.5f}, "
                f"tokens {'equal' if im.tokens_equal else f'differ ({im.token_set_diff})'} {im.counts_a}/{im.counts_b}, "
                f"overflow {im.overflow_a}/{im.overflow_b} [{flag}]")
        return "\n".join(lines)


def compare_image(name: str, item: Prepared, a: Predictor, b: Predictor, threshold: float) -> ImageParity:
    """One image through both predictors (batch of one each), compared at every layer of output."""
    cfg = a.cfg
    oa, ob = a.run_batch([item], [name]), b.run_batch([item], [name])
    na, nb, da, db = oa.net, ob.net, oa.decoded, ob.decoded
    hc, wc = (s // cfg.cell_size for s in item.tensor.shape[1:])
    network = {k: diff_stats(na[k], nb[k]) for k in QUERY_OUTPUTS}
    network["scale_map"] = diff_stats(na["scale_map"][:, :hc, :wc], nb["scale_map"][:, :hc, :wc])
    decoded = {k: diff_stats(da[k], db[k]) for k in DECODED_OUTPUTS if k in da}

    ca, cb = da["pred_confs"][0, :, 0], db["pred_confs"][0, :, 0]
    qa, qb = np.flatnonzero(ca > threshold), np.flatnonzero(cb > threshold)
    iou = box_iou(xyxy(da["pred_boxes"][0, qa]).reshape(-1, 4), xyxy(db["pred_boxes"][0, qb]).reshape(-1, 4))
    rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
    good = iou[rows, cols] >= MATCH_IOU if iou.size else np.zeros(0, bool)
    rows, cols = rows[good], cols[good]
    mm = lambda x, y: np.linalg.norm(x.astype(np.float64) - y, axis=-1).mean(-1) * 1000  # noqa: E731
    per_joint = mm(da["pred_j3ds"][0, qa[rows]], db["pred_j3ds"][0, qb[cols]])
    per_vert = mm(da["pred_verts"][0, qa[rows]], db["pred_verts"][0, qb[cols]])
    lone = [ca[q] for i, q in enumerate(qa) if i not in set(rows)] + [cb[q] for i, q in enumerate(qb) if i not in set(cols)]
    borderline = sum(abs(c - threshold) < BORDERLINE_CONF for c in lone)
    stat = lambda x: {"mean": float(x.mean()) if x.size else 0.0, "max": float(x.max()) if x.size else 0.0}  # noqa: E731
    ta, tb = token_set(na), token_set(nb)
    counts_a, counts_b = na["tok_counts"][0].tolist(), nb["tok_counts"][0].tolist()
    return ImageParity(
        name=name, network=network, decoded=decoded, people_a=len(qa), people_b=len(qb), matched=len(rows),
        unmatched=len(lone) - borderline, borderline=borderline, joint_mm=stat(per_joint), vertex_mm=stat(per_vert),
        box_iou_min=float(iou[rows, cols].min()) if len(rows) else 1.0,
        tokens_equal=ta == tb and counts_a == counts_b, token_set_diff=len(ta ^ tb), counts_a=counts_a,
        counts_b=counts_b, overflow_a=na["tok_overflow"][0].tolist(), overflow_b=nb["tok_overflow"][0].tolist())


def compare_backends(a: Predictor, b: Predictor, items: list[Prepared], names: list[str],
                     threshold: float = 0.3, tol_mm: float = 1.0) -> ParityReport:
    if a.cfg != b.cfg:
        raise SathmrError(f"the backends run different configs ({a.cfg.name} vs {b.cfg.name}); nothing to compare")
    report = ParityReport(a.backend.name, b.backend.name, threshold, tol_mm)
    report.images = [compare_image(n, it, a, b, threshold) for it, n in zip(items, names)]
    return report


@click.command("parity")
@click.option("--a", "name_a", type=click.Choice(list(BACKENDS)), default="torch", show_default=True)
@click.option("--b", "name_b", type=click.Choice(list(BACKENDS)), default="ort", show_default=True)
@click.option("--model", "model_path", help="Exported model (folder or file) for an ort/trt side.")
@click.option("--checkpoint", help="Weights (path or name from `sathmr models`) of a torch side, and what an "
              "exported side must come from (default: weights/ or embedded).")
@click.option("--config", default=None, help="Model config of an official checkpoint.")
@click.option("--smpl-dir", type=click.Path(file_okay=False), help="SMPL folder (must match the exported model's).")
@click.option("--input", "-i", "inputs", required=True, type=click.Path(exists=True), help="Image or folder of images.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threshold", "-t", type=float, default=0.3, show_default=True, help="Detection threshold for the people comparison.")
@click.option("--tol-mm", type=float, default=1.0, show_default=True,
              help="Max per-person mean joint/vertex error (fp32 engines agree to ~1e-3 mm; use ~20 for fp16).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
def parity_command(name_a, name_b, model_path, checkpoint, config, smpl_dir, inputs, device, threshold, tol_mm, json_path):
    """Run the same images through two backends and compare outputs; exit 1 when over tolerance."""
    def side(name: str):   # a torch side runs the weights; an exported side runs --model, checked against them
        exported = BACKENDS[name][0]
        return open_model(model_path if exported else checkpoint, name, checkpoint=checkpoint if exported else None,
                          config=config, smpl_dir=smpl_dir, device=device)
    backends = [side(n) for n in (name_a, name_b)]
    body = load_body_for(backends, smpl_dir, device)
    pa, pb = (Predictor(be, body, (threshold,)) for be in backends)
    items, names = [], []
    for it in iter_images(inputs):
        items.append(pa.prepare(it.load()))
        names.append(it.name)
    report = compare_backends(pa, pb, items, names, threshold, tol_mm)
    click.echo(report.summary())
    if json_path:
        write_json(Path(json_path), report.to_json())
    if not report.passed:
        raise SystemExit(1)
