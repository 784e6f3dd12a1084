"""SetCriterion: focal loss by hand, zero on perfect predictions, normalisers, DN and aux keys."""

import math

import pytest
import torch
from torch import nn

from sathmr.train.dn import build_dn_queries
from sathmr.train.losses import LAYER_KEYS, LOSS_WEIGHTS, SetCriterion, build_weight_dict, focal_loss

S = 1288
Q = 5
HC, WC = 3, 4


def make_targets(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def one(n: int, valid3d: bool, map_hw: tuple[int, int]) -> dict:
        j3ds = torch.randn(n, 45, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 5.0])
        smap = torch.zeros(*map_hw, 2)
        smap[0, 0] = torch.tensor([1.0, 0.4])
        smap[1, 1] = torch.tensor([1.0, 0.7])
        return {
            "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.4 + 0.3, torch.rand(n, 2, generator=g) * 0.1 + 0.1], 1),
            "poses": torch.randn(n, 72, generator=g) * 0.2,
            "betas": torch.randn(n, 10, generator=g),
            "j3ds": j3ds,
            "j2ds": torch.rand(n, 45, 2, generator=g) * 600 + 200,
            "j2ds_mask": torch.ones(n, 45, 2, dtype=torch.bool),
            "depths": torch.stack([j3ds[:, 0, 2], j3ds[:, 0, 2] / 1000.0], 1),
            "focals": torch.full((n,), 1000.0),
            "3d_valid": torch.tensor(valid3d),
            "scale_map": smap,
        }

    return [one(2, True, (HC, WC)), one(1, False, (HC, 2))]


SLOTS = [[3, 1], [0]]   # query slot of each GT


def perfect_layer(targets: list[dict], slots=SLOTS, q: int = Q) -> dict:
    """Decoded layer dict whose matched queries reproduce the GT exactly and whose others are far off."""
    b = len(targets)
    layer = {
        "pred_confs": torch.zeros(b, q, 1),
        "pred_boxes": torch.full((b, q, 4), 0.05),
        "pred_poses": torch.zeros(b, q, 72),
        "pred_betas": torch.zeros(b, q, 10),
        "pred_j3ds": torch.zeros(b, q, 45, 3),
        "pred_j2ds": torch.zeros(b, q, 45, 2),
        "pred_depths": torch.ones(b, q, 2),
        "pred_cam": torch.zeros(b, q, 3),
    }
    for i, t in enumerate(targets):
        for j, s in enumerate(slots[i]):
            layer["pred_confs"][i, s] = 1.0
            layer["pred_boxes"][i, s] = t["boxes"][j]
            layer["pred_poses"][i, s] = t["poses"][j]
            layer["pred_betas"][i, s] = t["betas"][j]
            layer["pred_j3ds"][i, s] = t["j3ds"][j] + 0.5          # root-relative: a shift costs nothing
            layer["pred_j2ds"][i, s] = t["j2ds"][j]
            layer["pred_depths"][i, s] = torch.tensor([123.0, t["depths"][j, 0] / t["focals"][j]])
    return layer


def perfect_out(targets: list[dict], num_layers: int = 3) -> dict:
    smap = torch.zeros(2, HC, WC, 2)
    smap[0] = targets[0]["scale_map"]
    smap[1, :, :2] = targets[1]["scale_map"]
    smap[1, :, 2:, 1] = 0.9                                    # outside image 1: ignored
    smap[1, :, 2:, 0] = 0.7
    cell_mask = torch.ones(2, HC, WC, dtype=torch.bool)
    cell_mask[1, :, 2:] = False
    return {"layers": [perfect_layer(targets) for _ in range(num_layers)], "scale_map": smap, "cell_mask": cell_mask}


def test_focal_loss_by_hand():
    p = torch.tensor([0.9, 0.2])
    y = torch.tensor([1.0, 0.0])
    a = 0.25 * 0.1 ** 2 * -math.log(0.9)
    b = 0.75 * 0.2 ** 2 * -math.log(0.8)
    assert focal_loss(p, y).item() == pytest.approx((a + b) / 2, rel=1e-5)
    assert focal_loss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])).item() == 0.0


def test_zero_on_perfect_predictions_and_keys():
    targets = make_targets()
    crit = SetCriterion(canvas=S)
    total, losses = crit(perfect_out(targets), targets)
    expected = set(LOSS_WEIGHTS) | {f"{k}.{i}" for k in LAYER_KEYS for i in range(2)}
    assert set(losses) == expected
    for k, v in losses.items():
        # GIoU keeps the official +1e-6 in its denominators, so a perfect box costs ~1e-6 / area
        assert v.item() == pytest.approx(0.0, abs=1e-3 if k.startswith("giou") else 1e-6), k
    assert total.item() == pytest.approx(0.0, abs=1e-2)


def test_aux_layers_are_matched_independently():
    targets = make_targets()
    out = perfect_out(targets)
    out["layers"][0] = perfect_layer(targets, slots=[[0, 4], [2]])
    _, losses = SetCriterion(canvas=S)(out, targets)
    assert all(abs(v.item()) < (1e-3 if k.startswith("giou") else 1e-6) for k, v in losses.items())


@pytest.mark.parametrize("key,field,delta", [
    ("boxes", "pred_boxes", 0.01), ("poses", "pred_poses", 0.1), ("betas", "pred_betas", 0.1),
    ("j2ds", "pred_j2ds", 5.0), ("depths", "pred_depths", 1e-3),
])
def test_each_loss_positive_when_perturbed(key, field, delta):
    targets = make_targets()
    out = perfect_out(targets, num_layers=1)
    out["layers"][0][field][0, 3] += delta
    _, losses = SetCriterion(canvas=S)(out, targets)
    assert losses[key].item() > 0
    untouched = {"poses", "betas", "j3ds", "j2ds", "depths"} - {key}
    assert all(losses[k].item() == pytest.approx(0, abs=1e-7) for k in untouched)


def test_normalisers_by_hand():
    targets = make_targets()               # N = 3 persons, N3D = 2 (image 1 is not 3D-valid)
    out = perfect_out(targets, num_layers=1)
    layer = out["layers"][0]
    layer["pred_poses"][0, 3] += 0.1                  # person 0 of image 0
    layer["pred_poses"][1, 0] += 5.0                  # 3D-invalid image: never regressed
    layer["pred_betas"][0, 3, 0] += 1.0               # shape weight 2.56 on beta 0
    layer["pred_j3ds"][0, 3, 7, 0] += 0.1             # one non-root joint
    layer["pred_j2ds"][0, 3, :, 0] += S * 0.01        # x of all 45 joints
    layer["pred_boxes"][0, 3, 0] += 0.01
    layer["pred_depths"][0, 3, 1] = 2 * targets[0]["depths"][0, 0] / 1000.0
    _, losses = SetCriterion(canvas=S)(out, targets)
    assert losses["poses"].item() == pytest.approx(0.1 / 2, rel=1e-5)
    assert losses["betas"].item() == pytest.approx(2.56 / 10 / 2, rel=1e-5)
    assert losses["j3ds"].item() == pytest.approx(0.1 / 135 / 2, rel=1e-4)
    assert losses["j2ds"].item() == pytest.approx(0.01 * 45 / 90 / 3, rel=1e-4)
    assert losses["boxes"].item() == pytest.approx(0.01 / 3, rel=1e-4)
    d = targets[0]["depths"][0, 0].item()
    assert losses["depths"].item() == pytest.approx(abs(1 / (2 * d) - 1 / d) / 2, rel=1e-4)
    # confs: normaliser 1, mean over all B×Q slots (here all exact -> 0); map_scales over 4 positive cells
    assert losses["confs"].item() == 0.0


def test_confs_is_mean_over_all_slots_and_map_losses():
    targets = make_targets()
    out = perfect_out(targets, num_layers=1)
    out["layers"][0]["pred_confs"][0, 0] = 0.5        # an unmatched slot with p = 0.5
    out["scale_map"][0, 0, 0, 1] = 0.5                # GT 0.4 on a positive cell
    out["scale_map"][0, 2, 3] = torch.tensor([0.5, 0.9])  # negative cell: conf counts, scale does not
    _, losses = SetCriterion(canvas=S)(out, targets)
    assert losses["confs"].item() == pytest.approx(0.75 * 0.25 * math.log(2) / (2 * Q), rel=1e-5)
    n_cells = HC * WC + HC * 2                        # in-image cells only
    assert losses["map_confs"].item() == pytest.approx(0.75 * 0.25 * math.log(2) / n_cells, rel=1e-5)
    assert losses["map_scales"].item() == pytest.approx(0.1 / 4, rel=1e-4)


def test_count_reducer_hook_and_clamp():
    targets = make_targets()
    out = perfect_out(targets, num_layers=1)
    out["layers"][0]["pred_boxes"][0, 3, 0] += 0.01
    _, base = SetCriterion(canvas=S)(out, targets)
    _, doubled = SetCriterion(canvas=S, reduce_counts=lambda c: c * 2)(out, targets)
    assert doubled["boxes"].item() == pytest.approx(base["boxes"].item() / 2, rel=1e-5)
    _, tiny = SetCriterion(canvas=S, reduce_counts=lambda c: c * 0.01)(out, targets)
    assert tiny["boxes"].item() == pytest.approx(0.01, rel=1e-4)   # N clamped to 1


def test_total_is_weighted_sum_and_fp32():
    targets = make_targets()
    out = perfect_out(targets)
    for layer in out["layers"]:
        layer["pred_poses"] = (layer["pred_poses"] + 0.05).to(torch.bfloat16)
        layer["pred_confs"][0, 0] = 0.3
    total, losses = SetCriterion(canvas=S)(out, targets)
    weights = build_weight_dict(2)
    assert total.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert total.item() == pytest.approx(sum(weights[k] * v.item() for k, v in losses.items()), rel=1e-5)
    assert losses["poses.1"].item() > 0


def dn_out(targets, dn, num_layers=2):
    """DN layers whose positive slots reproduce their GT exactly (every other slot is far off, conf 0)."""
    slots = [[2 * dn.max_gt * g + j for g in range(dn.num_groups) for j in range(len(t["boxes"]))] for t in targets]
    repeated = [{k: (v.repeat(dn.num_groups, *([1] * (v.dim() - 1))) if v.dim() else v) for k, v in t.items()}
                for t in targets]
    return [perfect_layer(repeated, slots=slots, q=dn.pad_size) for _ in range(num_layers)]


def test_dn_losses_final_layer_only_and_normaliser():
    targets = make_targets()
    enc = nn.Linear(82, 8)
    dn = build_dn_queries(targets, enc, Q, dn_number=3, generator=torch.Generator().manual_seed(0))
    out = perfect_out(targets)
    out["dn_layers"] = dn_out(targets, dn, num_layers=3)
    _, losses = SetCriterion(canvas=S)(out, targets, dn=dn)
    dn_keys = {k for k in losses if "_dn" in k}
    assert dn_keys == {f"{k}_dn" for k in LAYER_KEYS}            # no `{k}_dn.{i}` (official quirk)
    assert all(abs(losses[k].item()) < (1e-3 if k.startswith("giou") else 1e-6) for k in dn_keys), \
        {k: losses[k].item() for k in dn_keys}

    # Offset person 0's pose in every group: Σ = G·0.1, normaliser N3D·G = 2G -> 0.05
    final = {k: v.clone() for k, v in out["dn_layers"][-1].items()}
    for g in range(dn.num_groups):
        final["pred_poses"][0, 2 * dn.max_gt * g] += 0.1
    final["pred_confs"][0, 2 * dn.max_gt] = 0.5                 # a positive slot at p = 0.5
    out["dn_layers"] = out["dn_layers"][:-1] + [final]
    _, losses = SetCriterion(canvas=S)(out, targets, dn=dn)
    assert losses["poses_dn"].item() == pytest.approx(0.05, rel=1e-5)
    fl = 0.25 * 0.25 * math.log(2) / (2 * dn.pad_size)
    assert losses["confs_dn"].item() == pytest.approx(fl / dn.num_groups, rel=1e-5)


def test_backward_reaches_predictions():
    targets = make_targets()
    out = perfect_out(targets, num_layers=2)
    leaf = out["layers"][-1]["pred_poses"].clone().requires_grad_(True)
    out["layers"][-1]["pred_poses"] = leaf + 0.01
    total, _ = SetCriterion(canvas=S)(out, targets)
    total.backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
