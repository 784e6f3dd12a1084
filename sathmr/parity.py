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

``--precision`` compares side b at each given precision against side a (fp32): one report per precision
and one table (:func:`precision_table`) — identical token counts, people matched and their box IoU,
joint and confidence differences — the accuracy a reduced precision costs, next to its speed in
`sathmr bench`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from sathmr.backends.formats import BACKENDS, model_options
from sathmr.backends.precision import precision_options
from sathmr.common.errors import SathmrError
from sathmr.common.options import Command, config_options, device_option, input_option, threshold_option

if TYPE_CHECKING:        # torch loads when a comparison runs, not for `sathmr parity --help`
    from sathmr.backends import Backend
    from sathmr.runtime.predictor import Predictor
    from sathmr.runtime.preprocess import Prepared

QUERY_OUTPUTS = ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam")
DECODED_OUTPUTS = ("pred_poses", "pred_transl", "pred_j3ds", "pred_j2ds", "pred_verts", "pred_depths")
MATCH_IOU = 0.5           # below this a pair is two different people, not one person with drift
BORDERLINE_CONF = 1e-3    # a person this close to the threshold may legitimately appear in one backend only
TOL_MM = {"fp32": 1.0, "reduced": 20.0}   # default --tol-mm: fp32 engines agree to ~1e-3 mm, reduced ones to mm


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
    box_iou_mean: float
    conf_diff: dict[str, float]     # over matched people: mean and max |confidence a - confidence b|
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
    precision_a: str = "fp32"
    precision_b: str = "fp32"

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

    def accuracy(self) -> dict:
        """The task-level accuracy of b against a over every image: one row of :func:`precision_table`."""
        ims = self.images
        matched = [im for im in ims if im.matched]
        return {"a": self.a, "precision_a": self.precision_a, "b": self.b, "precision_b": self.precision_b,
                "images": len(ims), "tokens_identical": all(im.tokens_equal for im in ims),
                "people_a": sum(im.people_a for im in ims), "people_b": sum(im.people_b for im in ims),
                "matched": sum(im.matched for im in ims), "unmatched": sum(im.unmatched for im in ims),
                "box_iou_min": min((im.box_iou_min for im in ims), default=1.0),
                "box_iou_mean": _weighted([(im.box_iou_mean, im.matched) for im in matched], 1.0),
                "joint_mm_mean": _weighted([(im.joint_mm["mean"], im.matched) for im in matched], 0.0),
                "joint_mm_max": max((im.joint_mm["max"] for im in ims), default=0.0),
                "conf_diff_mean": _weighted([(im.conf_diff["mean"], im.matched) for im in matched], 0.0),
                "conf_diff_max": max((im.conf_diff["max"] for im in ims), default=0.0)}

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "precision_a": self.precision_a, "precision_b": self.precision_b,
                "threshold": self.threshold, "tol_mm": self.tol_mm, "passed": self.passed, "accuracy": self.accuracy(),
                "network": self.worst("network"), "decoded": self.worst("decoded"),
                "images": [asdict(im) for im in self.images]}

    def summary(self) -> str:
        lines = [f"parity {self.a} ({self.precision_a}) vs {self.b} ({self.precision_b}): {len(self.images)} image(s), "
                 f"threshold {self.threshold:g}, "
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
                f"conf |diff| max {im.conf_diff['max']:.2e}, "
                f"tokens {'equal' if im.tokens_equal else f'differ ({im.token_set_diff})'} {im.counts_a}/{im.counts_b}, "
                f"overflow {im.overflow_a}/{im.overflow_b} [{flag}]")
        return "\n".join(lines)


def _weighted(pairs: list[tuple[float, int]], empty: float) -> float:
    """Mean of per-image means weighted by their number of people (``empty`` without people)."""
    n = sum(w for _, w in pairs)
    return float(sum(v * w for v, w in pairs) / n) if n else empty


def compare_image(name: str, item: Prepared, a: Predictor, b: Predictor, threshold: float) -> ImageParity:
    """One image through both predictors (batch of one each), compared at every layer of output."""
    oa, ob = a.run_batch([item], [name]), b.run_batch([item], [name])
    hc, wc = (s // a.cfg.cell_size for s in item.tensor.shape[1:])
    return compare_outputs(name, (hc, wc), (oa.net, oa.decoded), (ob.net, ob.decoded), threshold)


def compare_outputs(name: str, cells: tuple[int, int], a: tuple[dict, dict], b: tuple[dict, dict],
                    threshold: float) -> ImageParity:
    """Two backends' (network, decoded) outputs of one image (batch of one) compared at every layer;
    ``cells``: the image's own (Hc, Wc) level-1 grid (a static canvas has more cells, all padding)."""
    (na, da), (nb, db) = a, b
    hc, wc = cells
    network = {k: diff_stats(na[k], nb[k]) for k in QUERY_OUTPUTS}
    network["scale_map"] = diff_stats(na["scale_map"][:, :hc, :wc], nb["scale_map"][:, :hc, :wc])
    decoded = {k: diff_stats(da[k], db[k]) for k in DECODED_OUTPUTS if k in da}

    ca, cb = da["pred_confs"][0, :, 0], db["pred_confs"][0, :, 0]
    qa, qb = np.flatnonzero(ca > threshold), np.flatnonzero(cb > threshold)
    from scipy.optimize import linear_sum_assignment

    from sathmr.runtime.postprocess import box_iou

    iou = box_iou(xyxy(da["pred_boxes"][0, qa]).reshape(-1, 4), xyxy(db["pred_boxes"][0, qb]).reshape(-1, 4))
    rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
    good = iou[rows, cols] >= MATCH_IOU if iou.size else np.zeros(0, bool)
    rows, cols = rows[good], cols[good]
    mm = lambda x, y: np.linalg.norm(x.astype(np.float64) - y, axis=-1).mean(-1) * 1000  # noqa: E731
    per_joint = mm(da["pred_j3ds"][0, qa[rows]], db["pred_j3ds"][0, qb[cols]])
    per_vert = mm(da["pred_verts"][0, qa[rows]], db["pred_verts"][0, qb[cols]])
    lone = [ca[q] for i, q in enumerate(qa) if i not in set(rows)] + [cb[q] for i, q in enumerate(qb) if i not in set(cols)]
    borderline = int(sum(abs(c - threshold) < BORDERLINE_CONF for c in lone))
    stat = lambda x: {"mean": float(x.mean()) if x.size else 0.0, "max": float(x.max()) if x.size else 0.0}  # noqa: E731
    ious = iou[rows, cols] if len(rows) else np.ones(0)
    ta, tb = token_set(na), token_set(nb)
    counts_a, counts_b = na["tok_counts"][0].tolist(), nb["tok_counts"][0].tolist()
    return ImageParity(
        name=name, network=network, decoded=decoded, people_a=len(qa), people_b=len(qb), matched=len(rows),
        unmatched=len(lone) - borderline, borderline=borderline, joint_mm=stat(per_joint), vertex_mm=stat(per_vert),
        box_iou_min=float(ious.min()) if ious.size else 1.0, box_iou_mean=float(ious.mean()) if ious.size else 1.0,
        conf_diff=stat(np.abs(ca[qa[rows]].astype(np.float64) - cb[qb[cols]])),
        tokens_equal=ta == tb and counts_a == counts_b, token_set_diff=len(ta ^ tb), counts_a=counts_a,
        counts_b=counts_b, overflow_a=na["tok_overflow"][0].tolist(), overflow_b=nb["tok_overflow"][0].tolist())


def compare_backends(a: Predictor, b: Predictor, items: list[Prepared], names: list[str],
                     threshold: float = 0.3, tol_mm: float = 1.0) -> ParityReport:
    if a.cfg != b.cfg:
        raise SathmrError(f"the backends run different configs ({a.cfg.name} vs {b.cfg.name}); nothing to compare")
    report = ParityReport(a.backend.name, b.backend.name, threshold, tol_mm,
                          precision_a=precision_of(a.backend), precision_b=precision_of(b.backend))
    report.images = [compare_image(n, it, a, b, threshold) for it, n in zip(items, names)]
    return report


def precision_of(backend: Backend) -> str:
    """What precision a backend runs at (its info; the PyTorch ones say whether bf16 is emulated)."""
    return str(backend.info.get("precision", "fp32"))


PRECISION_HEADER = ["b", "precision", "tokens identical", "people a/b", "matched", "box IoU min/mean",
                    "joints mean/max mm", "conf diff mean/max"]


def precision_row(acc: dict) -> list[str]:
    return [acc["b"], acc["precision_b"], "yes" if acc["tokens_identical"] else "NO",
            f"{acc['people_a']}/{acc['people_b']}", f"{acc['matched']} (+{acc['unmatched']} unmatched)",
            f"{acc['box_iou_min']:.4f}/{acc['box_iou_mean']:.4f}",
            f"{acc['joint_mm_mean']:.3f}/{acc['joint_mm_max']:.3f}", f"{acc['conf_diff_mean']:.2e}/{acc['conf_diff_max']:.2e}"]


def precision_table(reports: list[ParityReport]) -> str:
    """One row per compared side b (a backend at a precision) against the same side a."""
    rows = [precision_row(r.accuracy()) for r in reports]
    widths = [max(len(str(x)) for x in col) for col in zip(PRECISION_HEADER, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    a = reports[0]
    return "\n".join([f"accuracy against {a.a} ({a.precision_a}), threshold {a.threshold:g}:", line(PRECISION_HEADER),
                      "  ".join("-" * w for w in widths), *map(line, rows)])


@click.command("parity", cls=Command)
@model_options(several=True, backend_default="torch,ort")
@click.option("--a", "name_a", type=click.Choice(list(BACKENDS)), default=None, hidden=True)    # old spelling
@click.option("--b", "name_b", type=click.Choice(list(BACKENDS)), default=None, hidden=True)    # old spelling
@precision_options("list", compile=False)
@config_options
@input_option(type=click.Path(exists=True), help="Image or folder of images.")
@device_option()
@threshold_option(help="Detection threshold for the people comparison.")
@click.option("--tol-mm", type=float, default=None,
              help=f"Max per-person mean joint/vertex error (default {TOL_MM['fp32']:g} between fp32 sides, which agree "
                   f"to ~1e-3 mm; {TOL_MM['reduced']:g} when a side runs a reduced precision).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
def parity_command(model_paths, backend_text, name_a, name_b, checkpoint, precision_text, config, smpl_dir, inputs,
                   device, threshold, tol_mm, json_path):
    """Run the same images through two backends (--backend A,B: side a, side b) on the same model and
    compare outputs; side b runs at each --precision against side a in fp32. Exit 1 when over tolerance."""
    from sathmr.backends import load_backend, weights_behind
    from sathmr.backends.formats import choose_models
    from sathmr.backends.precision import parse_precisions, precision_kwargs
    from sathmr.inputs.items import iter_images
    from sathmr.outputs.writers import write_json
    from sathmr.runtime.predictor import Predictor, load_body_for

    sides = [n.strip() for n in backend_text.split(",") if n.strip()]
    if name_a or name_b:
        click.echo("note: --a/--b are now --backend A,B; the old names go in a later release", err=True)
        sides = [name_a or sides[0], name_b or sides[1]]
    if len(sides) != 2:
        raise SathmrError(f"--backend {backend_text}: parity compares two backends, e.g. --backend torch,ort")
    name_a, name_b = sides
    precisions = parse_precisions(precision_text)
    choices = choose_models(model_paths, sides, checkpoint)
    weights = weights_behind(choices)

    def side(name: str, precision: str | None):   # a torch side runs the weights; an exported one its --model, checked
        choice = choices[name]
        if choice.format.name != "checkpoint" and choice.model_path is None:
            raise SathmrError(f"--backend {name} runs {choice.format.what}: pass one with --model (`sathmr export`)")
        return load_backend(name, checkpoint=weights, model_path=choice.model_path, config=config, smpl_dir=smpl_dir,
                            device=device, **precision_kwargs(precision, allow_emulated=True, backend=name))
    be_a = side(name_a, None)
    click.echo(f"a: {be_a.info.get('note') or be_a.info.get('path')}", err=True)
    pa = body = None
    items, names, reports = [], [], []
    for precision in precisions:
        be_b = side(name_b, precision)
        if body is None:
            click.echo(f"b: {be_b.info.get('note') or be_b.info.get('path')}", err=True)
            body = load_body_for([be_a, be_b], smpl_dir, device)
            pa = Predictor(be_a, body, (threshold,))
            for it in iter_images(inputs):
                items.append(pa.prepare(it.load()))
                names.append(it.name)
        else:
            be_b.check_body_model(body)
        reduced = any(precision_of(be) != "fp32" for be in (be_a, be_b))
        tol = tol_mm if tol_mm is not None else TOL_MM["reduced" if reduced else "fp32"]
        reports.append(compare_backends(pa, Predictor(be_b, body, (threshold,)), items, names, threshold, tol))
        click.echo(reports[-1].summary())
        del be_b
    click.echo(precision_table(reports))
    if json_path:
        write_json(Path(json_path), reports[0].to_json() if len(reports) == 1 else
                   {"passed": all(r.passed for r in reports), "reports": [r.to_json() for r in reports]})
    if not all(r.passed for r in reports):
        raise SystemExit(1)
