"""CUDA checks: run for real where a GPU is present, skip with the reason elsewhere."""

import pytest
import torch

from sathmr.config import get_config
from sathmr.model import build_model
from sathmr.model.tokens import TokenBudget

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU checks skipped")

OUTS = ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam")


@pytest.mark.gpu
@pytest.mark.parametrize("budget", [None, TokenBudget(sat_cells=64, context=256)])
def test_cuda_matches_cpu(budget):
    torch.manual_seed(0)
    model = build_model(get_config("tiny")).eval()
    with torch.no_grad():
        model.scale_head.layers[-1].weight.mul_(40)   # a mixed token set
    model.set_budget(budget)
    x = torch.randn(2, 3, 448, 448)
    hw = torch.tensor([[448, 448], [300, 448]])
    with torch.no_grad():
        cpu = model.net_outputs(x, hw)
        gpu = model.cuda().net_outputs(x.cuda(), hw.cuda())
    assert torch.equal(gpu["tok_counts"].cpu(), cpu["tok_counts"])
    for k in OUTS:
        assert torch.allclose(gpu[k].cpu(), cpu[k], atol=1e-3, rtol=1e-3), k
