"""SAT-HMR training losses (spec §5.5): per-layer set losses on Hungarian-matched pairs, the scale-map
losses, and the final-layer denoising losses. Everything is computed in fp32 because BCE on
probabilities is not autocast-safe."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sathmr.train.dn import DNQueries
from sathmr.train.matcher import FOCAL_ALPHA, FOCAL_GAMMA, HungarianMatcher, box_cxcywh_to_xyxy, generalized_box_iou

# train_all.yaml weights; aux copies (`k.i`) and DN copies (`k_dn`) reuse them.
LOSS_WEIGHTS: dict[str, float] = {
    "confs": 4.0, "boxes": 2.0, "giou": 2.0, "poses": 5.0, "betas": 3.0,
    "j3ds": 8.0, "j2ds": 40.0, "depths": 0.5, "map_confs": 4.0, "map_scales": 4.0,
}
LAYER_KEYS = ("confs", "boxes", "giou", "poses", "betas", "j3ds", "j2ds", "depths")
THREE_D_KEYS = ("poses", "betas", "j3ds", "depths")
BETAS_WEIGHTS = (2.56, 1.28, 0.64, 0.64, 0.32, 0.32, 0.32, 0.32, 0.32, 0.32)
NUM_LOSS_JOINTS = 45
DEPTH_EPS = 1e-8

CountReducer = Callable[[Tensor], Tensor]


def identity_reducer(counts: Tensor) -> Tensor:
    return counts


def accelerate_reducer(accelerator) -> CountReducer:
    """Cross-process mean of the GT counts (sum / world size), as the official normalisers do."""
    return lambda counts: accelerator.reduce(counts, reduction="mean")


def build_weight_dict(num_aux: int) -> dict[str, float]:
    """Every key the official weight table holds. ``{k}_dn.{i}`` entries exist there too but are never
    produced (spec §5.6 quirk); they are listed so the table is complete."""
    weights = dict(LOSS_WEIGHTS)
    for k in LAYER_KEYS:
        weights[f"{k}_dn"] = LOSS_WEIGHTS[k]
        for i in range(num_aux):
            weights[f"{k}.{i}"] = LOSS_WEIGHTS[k]
            weights[f"{k}_dn.{i}"] = LOSS_WEIGHTS[k]
    return weights


def focal_loss(prob: Tensor, target: Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> Tensor:
    """RetinaNet focal loss on **probabilities** (the heads already applied σ), averaged over elements."""
    prob = prob.float()
    target = target.float()
    ce = F.binary_cross_entropy(prob, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean()


def _is_3d_valid(target: Mapping[str, Tensor]) -> bool:
    v = target.get("3d_valid", True)
    return bool(v.item()) if isinstance(v, Tensor) else bool(v)


def _has(target: Mapping[str, Tensor], key: str) -> bool:
    """Whether a target supervises ``key``; 3D keys count only on 3D-valid samples (2D datasets carry
    pseudo-GT that must not be regressed)."""
    if key == "giou":
        key = "boxes"
    if key == "depths":
        return _is_3d_valid(target) and "depths" in target and "focals" in target
    if key in THREE_D_KEYS:
        return _is_3d_valid(target) and key in target
    return key in target


Indices = Sequence[tuple[Tensor, Tensor]]


class SetCriterion(nn.Module):
    """All SAT-HMR losses.

    ``forward(out, targets, dn)`` returns ``(total, losses)`` where ``losses`` holds the *unweighted* value
    of every produced key and ``total = Σ weight_k · loss_k``. Layer dicts must already be decoded
    (``pred_poses``, ``pred_j3ds``, ``pred_j2ds``, ``pred_depths`` next to the raw head outputs).

    ``reduce_counts`` averages the GT counts across processes (default: identity, single process); use
    :func:`accelerate_reducer` under accelerate.
    """

    def __init__(self, canvas: int = 1288, matcher: HungarianMatcher | None = None,
                 weight_dict: Mapping[str, float] | None = None, reduce_counts: CountReducer = identity_reducer) -> None:
        super().__init__()
        self.canvas = float(canvas)
        self.matcher = matcher or HungarianMatcher(canvas=canvas)
        self.weight_dict = dict(weight_dict) if weight_dict is not None else None
        self.reduce_counts = reduce_counts
        self.register_buffer("betas_weight", torch.tensor(BETAS_WEIGHTS), persistent=False)

    # Normalisers -------------------------------------------------------------------------------
    def normalisers(self, targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> dict[str, float]:
        """Per-key N: GT persons carrying the annotation (cross-process mean, ≥ 1); ``confs`` is 1 and the
        map losses count positive GT cells."""
        keys = [k for k in LAYER_KEYS if k != "confs"]
        counts = [sum(int(t["boxes"].shape[0]) for t in targets if _has(t, k)) for k in keys]
        counts.append(sum(float((t["scale_map"][..., 0] > 0).sum()) for t in targets if "scale_map" in t))
        reduced = self.reduce_counts(torch.tensor(counts, dtype=torch.float32, device=device))
        reduced = reduced.clamp(min=1).tolist()
        norms = dict(zip(keys, reduced[:-1]))
        norms["confs"] = 1.0
        norms["map_scales"] = reduced[-1]
        return norms

    # Per-layer losses --------------------------------------------------------------------------
    def layer_losses(self, layer: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                     indices: Indices, norms: Mapping[str, float], scale: float = 1.0) -> dict[str, Tensor]:
        """The eight set losses of one layer for the given matching; every normaliser is multiplied by
        ``scale`` (the DN group count for DN losses)."""
        confs = layer["pred_confs"].float()
        labels = torch.zeros_like(confs)
        for b, (src, _) in enumerate(indices):
            labels[b, src.to(confs.device)] = 1
        losses = {"confs": focal_loss(confs, labels) / (norms["confs"] * scale)}

        def pairs(pred_key: str, tgt_key: str, key: str) -> tuple[Tensor, Tensor, list[int]]:
            src_rows, tgt_rows, kept = [], [], []
            pred = layer[pred_key].float()
            for b, (t, (src, tgt)) in enumerate(zip(targets, indices)):
                if _has(t, key) and len(src):
                    src_rows.append(pred[b, src.to(pred.device)])
                    tgt_rows.append(t[tgt_key][tgt.to(t[tgt_key].device)].float().to(pred.device))
                    kept.append(b)
            if not src_rows:
                return pred.new_zeros((0,) + pred.shape[2:]), pred.new_zeros((0,) + pred.shape[2:]), kept
            return torch.cat(src_rows), torch.cat(tgt_rows), kept

        def reduce_l1(diff: Tensor, key: str, anchor: Tensor) -> Tensor:
            if diff.shape[0] == 0:
                return anchor.sum() * 0.0     # keeps the graph connected (DDP) with a true zero
            return diff.flatten(1).mean(-1).sum() / (norms[key] * scale)

        src, tgt, _ = pairs("pred_boxes", "boxes", "boxes")      # boxes: full L1 norm, not a mean
        losses["boxes"] = reduce_l1((src - tgt).abs().sum(-1, keepdim=True), "boxes", layer["pred_boxes"])
        giou = 1 - generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
        losses["giou"] = reduce_l1(giou[:, None], "giou", layer["pred_boxes"])

        src, tgt, _ = pairs("pred_poses", "poses", "poses")
        losses["poses"] = reduce_l1((src - tgt).abs(), "poses", layer["pred_poses"])

        src, tgt, _ = pairs("pred_betas", "betas", "betas")
        losses["betas"] = reduce_l1((src - tgt).abs() * self.betas_weight.to(src.device), "betas", layer["pred_betas"])

        src, tgt, _ = pairs("pred_j3ds", "j3ds", "j3ds")
        src, tgt = src[:, :NUM_LOSS_JOINTS], tgt[:, :NUM_LOSS_JOINTS]
        losses["j3ds"] = reduce_l1(((src - src[:, :1]) - (tgt - tgt[:, :1])).abs(), "j3ds", layer["pred_j3ds"])

        src, tgt, kept = pairs("pred_j2ds", "j2ds", "j2ds")
        src, tgt = src[:, :NUM_LOSS_JOINTS], tgt[:, :NUM_LOSS_JOINTS]
        mask = self._gather_target(targets, indices, kept, "j2ds_mask", default_like=tgt)[:, :NUM_LOSS_JOINTS]
        losses["j2ds"] = reduce_l1((src - tgt).abs() / self.canvas * mask, "j2ds", layer["pred_j2ds"])

        src, tgt, kept = pairs("pred_depths", "depths", "depths")
        focals = self._gather_target(targets, indices, kept, "focals", default_like=None).reshape(-1).to(src.device)
        if src.shape[0]:
            pred_depth = focals * src[:, 1]          # focal-normalised depth rescaled to the GT camera
            inv = (1.0 / (pred_depth + DEPTH_EPS) - 1.0 / (tgt[:, 0] + DEPTH_EPS)).abs()
            losses["depths"] = inv.sum() / (norms["depths"] * scale)
        else:
            losses["depths"] = layer["pred_depths"].float().sum() * 0.0
        return losses

    @staticmethod
    def _gather_target(targets: Sequence[Mapping[str, Tensor]], indices: Indices, kept: list[int], key: str,
                       default_like: Tensor | None) -> Tensor:
        rows = []
        for b in kept:
            t, (_, tgt) = targets[b], indices[b]
            if key in t:
                rows.append(t[key][tgt.to(t[key].device)].float())
            elif default_like is not None:
                rows.append(torch.ones((len(tgt),) + default_like.shape[1:], device=default_like.device))
            else:
                raise KeyError(f"target is missing '{key}'")
        if not rows:
            shape = (0,) + (default_like.shape[1:] if default_like is not None else ())
            device = default_like.device if default_like is not None else None
            return torch.zeros(shape, device=device)
        out = torch.cat(rows)
        return out.to(default_like.device) if default_like is not None else out

    # Scale map ---------------------------------------------------------------------------------
    def map_losses(self, scale_map: Tensor, cell_mask: Tensor | None, targets: Sequence[Mapping[str, Tensor]],
                   norms: Mapping[str, float]) -> dict[str, Tensor]:
        """Focal loss on cell confidence over every in-image cell, L1 on scale over GT-positive cells."""
        pred = scale_map.float()
        bsz, hc, wc, _ = pred.shape
        gt = pred.new_zeros(bsz, hc, wc, 2)
        for b, t in enumerate(targets):
            m = t["scale_map"].float().to(pred.device)
            if m.shape[0] > hc or m.shape[1] > wc:
                raise ValueError(f"GT scale map {tuple(m.shape[:2])} is larger than the predicted map {(hc, wc)}")
            gt[b, : m.shape[0], : m.shape[1]] = m
        inside = torch.ones(bsz, hc, wc, dtype=torch.bool, device=pred.device) if cell_mask is None \
            else cell_mask.to(pred.device).bool()
        labels = gt[..., 0][inside]
        positive = labels > 0
        return {
            "map_confs": focal_loss(pred[..., 0][inside], labels),
            "map_scales": (pred[..., 1][inside] - gt[..., 1][inside]).abs()[positive].sum() / norms["map_scales"],
        }

    # Entry point -------------------------------------------------------------------------------
    def forward(self, out: Mapping, targets: Sequence[Mapping[str, Tensor]],
                dn: DNQueries | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        layers = out["layers"]
        device = layers[-1]["pred_boxes"].device
        with torch.autocast(device_type=device.type, enabled=False):
            norms = self.normalisers(targets, device)
            losses = self.layer_losses(layers[-1], targets, self.matcher(layers[-1], targets), norms)
            if "scale_map" in out:
                losses.update(self.map_losses(out["scale_map"], out.get("cell_mask"), targets, norms))
            for i, layer in enumerate(layers[:-1]):
                aux = self.layer_losses(layer, targets, self.matcher(layer, targets), norms)
                losses.update({f"{k}.{i}": v for k, v in aux.items()})
            if dn is not None and out.get("dn_layers"):
                # Final layer only: the official aux-DN block is skipped by a stale loop variable.
                pos = dn.positive_indices([int(t["boxes"].shape[0]) for t in targets])
                dn_l = self.layer_losses(out["dn_layers"][-1], targets, pos, norms, scale=float(dn.num_groups))
                losses.update({f"{k}_dn": v for k, v in dn_l.items()})
            weights = self.weight_dict or build_weight_dict(len(layers) - 1)
            missing = set(losses) - set(weights)
            if missing:
                raise KeyError(f"no weight for loss keys {sorted(missing)}")
            total = sum(weights[k] * v for k, v in losses.items())
        return total, losses
