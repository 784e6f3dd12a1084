"""What each figure of ``sathmr eval`` measures: protocol, threshold, joint or vertex set (spec §7), in words
for its summary table and JSON, so that a figure can be set beside the paper's table."""

from __future__ import annotations

from sathmr.train.metrics import IOU_THRESH


def describe_metrics(protocol: str, threshold: float, body_verts: int | None = None) -> dict[str, str]:
    """One line per metric key saying its protocol, threshold and joint or vertex set, so that a figure
    can be set beside the paper's table. ``body_verts``: the size of the MVE vertex subset (None: all)."""
    name = "AGORA" if protocol == "agora" else "3DPW"
    match = f"{name} protocol, τ {threshold:g}, 2D matching on 24 SMPL joints (IoU ≥ {IOU_THRESH:g})"
    if protocol == "agora":
        verts = (f"{body_verts} body_verts_smpl.npy vertices" if body_verts is not None else
                 "ALL vertices (no body_verts_smpl.npy; the original uses that subset)")
        out = {"precision": match, "recall": match, "f1": match,
               "mpjpe": f"mm, {name}, 24 SMPL joints, hip-midpoint aligned",
               "mve": f"mm, {name}, {verts}, hip-midpoint aligned"}
    else:
        joints = "14 H36M joints = R·(V − t) + t, pelvis aligned"
        out = {"precision": f"{match}; not reported by the original", "recall": match,
               "f1": f"{match}; not reported by the original",
               "mpjpe": f"mm, {name}, {joints}", "pa_mpjpe": f"mm, {name}, {joints}, then Procrustes",
               "mve": f"mm, {name}, all vertices, H36M-pelvis aligned",
               "pa_mve": f"mm, {name}, all vertices, Procrustes"}
    out.update({"nmje": "MPJPE / F1, both rounded", "nmve": "MVE / F1, both rounded",
                "num_matched": "people matched (the errors' denominator)"})
    if protocol == "agora":
        out.update({f"kid_{k}": f"{v}; kids only" for k, v in out.items()})
        for key in ("kid_precision", "kid_f1", "kid_nmje", "kid_nmve"):
            out[key] += ", yet every false positive counts (as the original)"
        out["kid_num_gt"] = "ground-truth people flagged kid"
    return out
