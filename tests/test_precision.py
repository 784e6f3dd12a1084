"""Reduced precision that keeps the token set: bf16/fp16 PyTorch, int8 ONNX Runtime, the refusals, the
accuracy tables.

bf16 runs on any CPU (emulated without AVX512-BF16/AMX, just slowly — fine for the tiny model), so the
numerics are tested everywhere; what a given CPU *refuses* is tested with its flags replaced
(``cpu_flags``), so the refusal and the native path are both checked on every machine.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from sathmr.backends import OrtBackend, TorchBackend
from sathmr.backends.meta import read_artifact
from sathmr.backends.precision import plan_precision
from sathmr.cli import main
from sathmr.common import hardware
from sathmr.common.errors import SathmrError
from sathmr.export.mlp_conv import mlps_as_matmuls
from sathmr.export.onnx import quantize_export
from sathmr.export.quantize import MEMORY_PROJECTIONS, module_path, module_scopes, quantised_nodes
from sathmr.inputs.images import read_image
from sathmr.model.sathmr import NET_OUTPUTS
from sathmr.parity import compare_backends
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import collate, prepare

from helpers import graph_op_types

QUERY = ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam")
TOKENS = ("scale_map", "tok_yx", "tok_lvl", "tok_counts", "tok_overflow")
NO_BF16 = ["avx", "avx2", "fma"]                              # this project's CI machine (AMD EPYC)
AMX = ["avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given flags (what the precision checks read)."""
    def set_flags(flags):
        monkeypatch.setattr(hardware, "cpu_info", lambda: {"cpu": "test CPU", "cpu_flags": list(flags)})
    return set_flags


@pytest.fixture(scope="module")
def batch(real_images, tiny_random):
    cfg = tiny_random.cfg
    items = [prepare(read_image(p), cfg.input_size, cfg.pad_multiple) for p in real_images]
    return collate(items)          # two differently sized photos in one padded batch


@pytest.fixture(scope="module")
def fp32_bf16(tiny_random, batch):
    with torch.inference_mode():
        return tiny_random.net_outputs(*batch), tiny_random.net_outputs(*batch, reduced=torch.bfloat16)


def test_bf16_keeps_the_fp32_token_set(tiny_random, batch, fp32_bf16):
    """Stage A and the selection run fp32: the scale map is bit-identical and so is every token, while the
    queries really come from bf16 (they differ, slightly). A whole-model autocast — the naive switch —
    changes the scale map, which is what the fp32 scope protects the selection from."""
    ref, bf16 = fp32_bf16
    counts = ref["tok_counts"]
    assert (counts > 0).all(), "the case must have tokens at every level"
    for k in TOKENS:
        assert torch.equal(ref[k], bf16[k]), k
    for k in QUERY:
        assert bf16[k].dtype == torch.float32, k          # SMPL and post-processing get fp32
        diff = (ref[k] - bf16[k]).abs().max().item()
        assert 0 < diff < 0.05 * max(ref[k].abs().max().item(), 1.0), (k, diff)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        naive = tiny_random.net_outputs(*batch)
    assert not torch.equal(naive["scale_map"].float(), ref["scale_map"])


def test_bf16_people_match_fp32(tiny_random, body_tiny, real_images, cpu_flags):
    """Task level on the photos: the same tokens, every person matched, millimetre joint differences."""
    cpu_flags(AMX)
    cfg = tiny_random.cfg
    items = [prepare(read_image(p), cfg.input_size, cfg.pad_multiple) for p in real_images]
    a = Predictor(TorchBackend(tiny_random), body_tiny)
    b = Predictor(TorchBackend(tiny_random, precision="bf16"), body_tiny)
    rep = compare_backends(a, b, items, [p.stem for p in real_images], tol_mm=20.0)
    acc = rep.accuracy()
    assert acc["precision_b"] == "bf16" and acc["tokens_identical"]
    assert acc["people_a"] > 0 and acc["matched"] == acc["people_a"] and acc["unmatched"] == 0
    assert 0 < acc["joint_mm_mean"] < 20 and acc["box_iou_min"] > 0.9
    assert 0 < acc["conf_diff_max"] < 0.05


def test_precision_refused_or_flagged_by_hardware(cpu_flags):
    cpu_flags(NO_BF16)
    with pytest.raises(SathmrError, match="AVX512-BF16 nor AMX-BF16.*--precision fp32"):
        plan_precision("bf16", "cpu")
    with pytest.warns(UserWarning, match="EMULATED"):
        plan = plan_precision("bf16", "cpu", allow_emulated=True)
    assert plan.label == "bf16 (emulated)" and plan.dtype == torch.bfloat16
    with pytest.raises(SathmrError, match="fp16 on the CPU"):
        plan_precision("fp16", "cpu", allow_emulated=True)     # never, not even for an accuracy check
    with pytest.raises(SathmrError, match="sathmr export --precision int8"):
        plan_precision("int8", "cpu")
    cpu_flags(AMX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # native: no warning at all
        plan = plan_precision("bf16", "cpu")
    assert plan.label == "bf16" and plan.emulated is None
    assert plan_precision("fp32", "cpu").dtype is None          # fp32: no autocast context at all


def test_backend_reports_its_precision(tiny_random, batch, fp32_bf16, cpu_flags):
    cpu_flags(AMX)
    be = TorchBackend(tiny_random, precision="bf16", info={"note": "weights: x"})
    assert be.info["precision"] == "bf16" and "precision bf16" in be.info["note"] and "stage A" in be.info["note"]
    out = be.run(*batch)
    for k in NET_OUTPUTS:
        assert torch.equal(out[k], fp32_bf16[1][k]), k
    assert TorchBackend(tiny_random).info["precision"] == "fp32"


def test_cli_refuses_what_the_hardware_cannot_do(embedded, real_images, tmp_path, cpu_flags, tiny_export):
    cpu_flags(NO_BF16)
    runner = CliRunner()
    base = ["infer", "-i", str(real_images[0]), "-o", str(tmp_path / "out"), "--no-overlay"]
    for extra, needle in ((["--precision", "bf16"], "AVX512-BF16"), (["--precision", "fp16"], "fp16 on the CPU"),
                          (["--precision", "int8"], "sathmr export --precision int8"),
                          (["--model", str(tiny_export.path), "--compile"], "--compile: not an option for the ort"),
                          (["--model", str(tiny_export.path), "--precision", "int8"], "is a fp32 export")):
        r = runner.invoke(main, base + extra)
        assert r.exit_code == 2, (extra, r.output)
        assert needle in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "out" / "thresh_0.3").exists()


def test_compile_wraps_the_network(tiny_random, batch, monkeypatch):
    """--compile hands the network to torch.compile with dynamic shapes and times the first call.
    (Real compilation takes minutes on a 2-core CPU: its gain and time are measured by the benchmark.)"""
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return lambda *a, **k: fn(*a, **k)
    monkeypatch.setattr(torch, "compile", fake_compile)
    be = TorchBackend(tiny_random, compile=True, info={"note": "weights: x"})
    assert calls == [{"dynamic": True}] and be.info["compile"] and "torch.compile" in be.info["note"]
    out = be.run(*batch)
    assert be.compile_seconds is not None and be.info["compile_s"] >= 0
    with torch.inference_mode():
        ref = tiny_random.net_outputs(*batch)
    assert all(torch.equal(out[k], ref[k]) for k in NET_OUTPUTS)


# --------------------------------------------------------------------------------------------- int8
@pytest.fixture(scope="module")
def int8_export(tiny_export, tmp_path_factory):
    return quantize_export(tiny_export.path, tmp_path_factory.mktemp("int8") / "tiny_int8")


def test_int8_quantises_stages_b_and_c(tiny_export, int8_export):
    """Stage A (the scale_map graph), the decoder's query side and the heads stay float; every weight of
    stages B/C and of the decoder's projections of the memory tokens is int8."""
    assert int8_export.meta.precision == "int8" and read_artifact(tiny_export.path).meta.precision == "fp32"
    tokens = graph_op_types(int8_export.files["tokens"])
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= tokens
    # the ORT contrib operators stay; decoder and head products stay float MatMuls
    assert {"MultiHeadAttention", "LayerNormalization"} <= tokens and "MatMul" in tokens
    fp32 = onnx.load(str(tiny_export.files["tokens"]), load_external_data=False)
    int8 = onnx.load(str(int8_export.files["tokens"]), load_external_data=False)
    cfg = tiny_export.meta.cfg
    assert mlps_as_matmuls(fp32) == cfg.depth     # fp32 runs the MLPs as 1x1 convolutions (export.mlp_conv)
    bc = quantised_nodes(fp32)
    # q, k, v (three products in fp32 exports, ort_fusions.qkv_into_attention), proj, fc1, fc2 of every block
    # (stage B: 0..split-1, C: the rest) + feature_proj; the decoder never projects the memory in an exported
    # graph (its cross-attention is folded onto the queries' side)
    assert len(bc) == 6 * cfg.depth + 1
    assert not any(s.endswith(MEMORY_PROJECTIONS) for n in fp32.graph.node for s in module_scopes(n))
    assert sum(n.op_type == "MatMulInteger" for n in int8.graph.node) == len(bc)
    float_mm = [n for n in int8.graph.node if n.op_type == "MatMul"]
    float_modules = {module_path(n).partition(".")[2].split(".")[0] for n in float_mm}
    assert {"decoder", "pose_head", "cam_head"} <= float_modules and "encoder" not in float_modules
    assert not any(s.endswith(MEMORY_PROJECTIONS) for n in float_mm for s in module_scopes(n))
    assert any(s.endswith(".ca_qcontent_proj") for n in float_mm for s in module_scopes(n))   # the query side
    assert graph_op_types(int8_export.files["scale_map"]) == graph_op_types(tiny_export.files["scale_map"])
    assert "MatMulInteger" not in graph_op_types(int8_export.files["scale_map"])
    # the quantised weights take a quarter of their float32 bytes (the decoder and heads keep theirs)
    weights = {n.input[1] for n in fp32.graph.node if n.name in set(bc)}
    bc_bytes = sum(4 * int(np.prod(t.dims)) for t in fp32.graph.initializer if t.name in weights)
    saved = tiny_export.files["tokens"].stat().st_size - int8_export.files["tokens"].stat().st_size
    assert saved > 0.7 * bc_bytes, (saved, bc_bytes)
    props = {p.key: p.value for p in onnx.load(str(int8_export.files["tokens"]), load_external_data=False).metadata_props}
    assert props["sathmr.precision"] == "int8" and not any(k.startswith("onnx.") for k in props)


def test_int8_loads_reports_its_precision_and_keeps_the_tokens(int8_export, tiny_random, body_tiny, real_images):
    be = OrtBackend.from_file(int8_export.path, threads=2)
    assert be.info["precision"] == "int8" and "int8" in be.info["note"]
    cfg = tiny_random.cfg
    items = [prepare(read_image(p), cfg.input_size, cfg.pad_multiple) for p in real_images]
    rep = compare_backends(Predictor(TorchBackend(tiny_random), body_tiny), Predictor(be, body_tiny), items,
                           [p.stem for p in real_images], tol_mm=20.0)
    acc = rep.accuracy()
    assert acc["precision_b"] == "int8" and acc["tokens_identical"]     # stage A fp32: same scale map, same tokens
    assert rep.worst("network")["scale_map"]["rel"] < 1e-5
    assert acc["matched"] == acc["people_a"] > 0 and 0 < acc["joint_mm_mean"] < 20
    with pytest.raises(SathmrError, match="int8 export"):
        OrtBackend.from_file(int8_export.path, precision="fp32")
    OrtBackend.from_file(int8_export.path, precision="int8")             # confirming it is fine


def test_infer_prints_and_writes_the_precision(int8_export, smpl_tiny, real_images, tmp_path):
    """`sathmr infer` on an int8 export: the model line names its precision, and so does every JSON."""
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["infer", "--model", str(int8_export.path), "--smpl-dir", str(smpl_tiny),
                                  "-i", str(real_images[0]), "-o", str(out), "--no-overlay"])
    assert r.exit_code == 0, r.output
    assert "two-stage, int8)" in r.output
    answer = json.loads(next((out / "thresh_0.3").glob("*.json")).read_text())
    assert answer["precision"] == "int8" and answer["backend"] == "ort"


def test_int8_export_options_refused(tiny_ckpt, smpl_tiny, tmp_path, tiny_export):
    runner = CliRunner()
    base = ["export", "-o", str(tmp_path / "x"), "--checkpoint", str(tiny_ckpt), "--smpl-dir", str(smpl_tiny), "--int8"]
    for extra, needle in ((["--format", "trt"], "TensorRT"), (["--fp16"], "exclude"), (["--static-budget"], "stage A")):
        r = runner.invoke(main, base + extra)
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, (extra, r.output)
    assert not (tmp_path / "x").exists()
    with pytest.raises(SathmrError, match="fp32 two-stage"):
        quantize_export(quantize_export(tiny_export.path, tmp_path / "q").path, tmp_path / "qq")


# --------------------------------------------------------------------------------------------- tables
def test_parity_precision_table(tiny_ckpt, smpl_tiny, real_images, tmp_path, cpu_flags):
    """`sathmr parity --precision fp32,bf16`: one report per precision and one table; bf16 runs emulated
    on a CPU without it (accuracy figures are what count here) and says so."""
    cpu_flags(NO_BF16)
    out = tmp_path / "p.json"
    r = CliRunner().invoke(main, ["parity", "--backend", "torch,torch", "--precision", "fp32,bf16",
                                  "--checkpoint", str(tiny_ckpt), "--smpl-dir", str(smpl_tiny),
                                  "-i", str(real_images[0]), "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    fp32, bf16 = (x["accuracy"] for x in rep["reports"])
    assert rep["passed"] and fp32["precision_b"] == "fp32" and bf16["precision_b"] == "bf16 (emulated)"
    assert fp32["joint_mm_max"] == 0.0 and fp32["conf_diff_max"] == 0.0 and fp32["tokens_identical"]
    assert bf16["tokens_identical"] and bf16["matched"] == bf16["people_a"] > 0 and bf16["joint_mm_mean"] > 0
    assert rep["reports"][1]["tol_mm"] == 20.0 and rep["reports"][0]["tol_mm"] == 1.0
    assert "accuracy against torch (fp32)" in r.output and "bf16 (emulated)" in r.output
