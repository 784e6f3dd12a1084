"""CUDA checks: run for real where a GPU is present, skip with the reason elsewhere."""

import pytest
import torch

from sathmr.backends import TorchBackend
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


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_reduced_precision_keeps_the_tokens(precision):
    """Stage A and the selection stay fp32 on CUDA too: the same tokens; stages B/C reduced, outputs close."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16 tensor cores")
    torch.manual_seed(0)
    model = build_model(get_config("tiny")).eval()
    with torch.no_grad():
        model.scale_head.layers[-1].weight.mul_(40)   # a mixed token set
    x = torch.randn(2, 3, 448, 448)
    hw = torch.tensor([[448, 448], [300, 448]])
    ref = TorchBackend(model, device="cuda").run(x, hw)
    out = TorchBackend(model, device="cuda", precision=precision).run(x, hw)
    for k in ("scale_map", "tok_counts", "tok_yx", "tok_lvl"):
        assert torch.equal(out[k], ref[k]), k
    for k in OUTS:
        assert out[k].dtype == torch.float32 and torch.allclose(out[k], ref[k], atol=5e-2, rtol=5e-2), k
