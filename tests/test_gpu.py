"""CUDA checks: they run for real where a GPU (and ONNX Runtime's CUDA provider, TensorRT) is present, and
skip with the reason elsewhere."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sathmr.backends import OrtBackend, TorchBackend, load_backend
from sathmr.common.errors import SathmrError
from sathmr.export.onnx import export_network
from sathmr.export.trt import build_engines
from sathmr.inputs.images import read_image
from sathmr.model import build_model
from sathmr.model.config import get_config
from sathmr.model.tokens import TokenBudget
from sathmr.parity import compare_backends
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import prepare

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU checks skipped")]

OUTS = ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam")


def ort_has_cuda() -> bool:
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers()


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


def _photos(real_images, cfg):
    return [prepare(read_image(p), cfg.input_size, cfg.pad_multiple) for p in real_images]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or not ort_has_cuda(),
                    reason="ONNX Runtime has no CUDAExecutionProvider here (pip install 'sathmr[gpu]')")
def test_ort_cuda_two_stage_keeps_stage_a_on_the_device(tiny_export, tiny_random, body_tiny, real_images):
    """I/O binding between the two graphs on the GPU: the same tokens and people as PyTorch."""
    ort_cuda = OrtBackend.from_file(tiny_export.path, device="cuda")
    assert "CUDAExecutionProvider" in ort_cuda.info["providers"]
    rep = compare_backends(Predictor(TorchBackend(tiny_random), body_tiny), Predictor(ort_cuda, body_tiny),
                           _photos(real_images, tiny_random.cfg), [p.stem for p in real_images], tol_mm=0.5)
    assert rep.passed, rep.summary()
    assert all(im.tokens_equal for im in rep.images)


@pytest.mark.trt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (pip install 'sathmr[gpu]')")
@pytest.mark.parametrize("fp16", [False, True])
def test_trt_two_stage_engines_match_torch(tiny_random, body_tiny, real_images, tmp_path, fp16):
    """Strongly typed engines built from the portable two-stage export (fp16: the fp16 export, LayerNorm
    and softmax cast to fp32) with dynamic profiles; fp16 keeps the token set (stage A is fp32) and moves
    joints by millimetres at most. Outputs are reused buffers, warmup runs both engines."""
    onnx_art, _ = export_network(tiny_random, body_tiny, tmp_path / "onnx", portable=True,
                                 precision="fp16" if fp16 else "fp32")
    engines = build_engines(onnx_art.path, tmp_path / "trt", fp16=fp16, max_batch=2)
    trt_be = load_backend("trt", model_path=engines.path, device="cuda")
    assert trt_be.meta.precision == ("fp16" if fp16 else "fp32")
    trt_be.warmup()
    assert all(e.outputs for e in trt_be.engines.values())
    rep = compare_backends(Predictor(TorchBackend(tiny_random), body_tiny), Predictor(trt_be, body_tiny),
                           _photos(real_images, tiny_random.cfg), [p.stem for p in real_images],
                           tol_mm=20.0 if fp16 else 0.5)
    assert rep.passed, rep.summary()
    assert all(im.tokens_equal for im in rep.images)
    if not fp16:
        assert all(v["rel"] <= 1e-3 for im in rep.images for v in im.network.values())
    # a padded batch of two differently sized images
    items = _photos(real_images, tiny_random.cfg)
    a = Predictor(TorchBackend(tiny_random), body_tiny).run_batch(items, ["a", "b"]).net
    b = Predictor(trt_be, body_tiny).run_batch(items, ["a", "b"]).net
    assert torch.equal(a["tok_counts"], b["tok_counts"])
    np.testing.assert_allclose(a["pred_boxes"], b["pred_boxes"], atol=2e-2 if fp16 else 1e-3)


@pytest.mark.trt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (pip install 'sathmr[gpu]')")
def test_trt_refuses_shapes_outside_its_profile(tiny_random, body_tiny, tmp_path):
    """A batch above the profile runs in chunks; token counts above --max-tokens fail in one line."""
    onnx_art, _ = export_network(tiny_random, body_tiny, tmp_path / "onnx", portable=True)
    engines = build_engines(onnx_art.path, tmp_path / "trt", max_batch=1, max_tokens=16)
    trt_be = load_backend("trt", model_path=engines.path, device="cuda")
    x = torch.randn(3, 3, 448, 448)     # needs far more than 8 context tokens per image
    hw = torch.tensor([[448, 448]] * 3)
    with pytest.raises(SathmrError, match="outside the engine's profile"):
        trt_be.run(x, hw)
