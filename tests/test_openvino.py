"""The OpenVINO export and backend: IR conversion, metadata, fp32 parity with PyTorch, int8 of stages B/C.

Tolerances as for ONNX Runtime (tests/test_export.py): fp32 network outputs within 1e-5 of their own
scale, identical token sets, 0.05 mm after SMPL. int8 (int8 weights in stages B/C, activations quantised
at run time): the token set is identical by construction (stage A is the fp32 graph, byte for byte) and
joints stay within INT8_MM of fp32 — measured 0.1-0.3 mm on this tiny model with random spread heads,
2-4 mm on the full-size sat_644 (benchmarks/openvino_vs_ort.py prints it).

Without openvino installed every test that needs it is skipped with the reason; the one-line refusal
itself is tested either way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sathmr.backends import OpenVinoBackend, TorchBackend, open_model
from sathmr.backends.formats import choose_model, detect
from sathmr.backends.ir import RT_INFO_KEY, ir_props
from sathmr.backends.meta import read_meta
from sathmr.backends.openvino_backend import compile_config, ov_device
from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.export.openvino import compressed_products, stage_bc_products
from sathmr.inputs.images import read_image
from sathmr.parity import compare_backends
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import collate, prepare

TOL_REL = 1e-5
TOL_MM = 0.05
INT8_MM = 5.0
NO_OPENVINO = "openvino is not installed (pip install 'sathmr[openvino]')"


@pytest.fixture(scope="module")
def ov():
    return pytest.importorskip("openvino", reason=NO_OPENVINO)


def export_ir(source, out, *opts) -> Path:
    """`sathmr export --format openvino --onnx SOURCE`: the IR of an existing fp32 export (the session's)."""
    r = CliRunner().invoke(main, ["export", "--format", "openvino", *opts, "--onnx", str(source), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}: config tiny, two-stage, {'int8' if opts else 'fp32'}" in r.output, r.output
    return out


@pytest.fixture(scope="module")
def ir_fp32(ov, tiny_export, tmp_path_factory):
    return export_ir(tiny_export.path, tmp_path_factory.mktemp("ov") / "tiny_ov")


@pytest.fixture(scope="module")
def ir_int8(ov, tiny_export, tmp_path_factory):
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'sathmr[openvino]')")
    return export_ir(tiny_export.path, tmp_path_factory.mktemp("ov8") / "tiny_ov8", "--int8")


@pytest.fixture(scope="module")
def items(real_images, tiny_random):
    cfg = tiny_random.cfg
    rng = np.random.default_rng(0)
    named = {p.stem: read_image(p) for p in real_images} | {"portrait": rng.integers(0, 255, (900, 500, 3), np.uint8)}
    return {name: prepare(img, cfg.input_size, cfg.pad_multiple) for name, img in named.items()}


@pytest.fixture(scope="module")
def torch_p(tiny_random, body_tiny):
    return Predictor(TorchBackend(tiny_random), body_tiny)


def compare(torch_p, path, items, body, tol_mm):
    be = OpenVinoBackend.from_file(path, threads=2)
    return be, compare_backends(torch_p, Predictor(be, body), list(items.values()), list(items), tol_mm=tol_mm)


# ---------------------------------------------------------------------------------------------------
def test_ir_keeps_the_metadata_dynamic_axes_and_fp32_weights(ov, ir_fp32, tiny_export):
    assert sorted(f.name for f in ir_fp32.iterdir()) == ["scale_map.bin", "scale_map.xml", "tokens.bin", "tokens.xml"]
    meta, onnx_meta = read_meta(ir_fp32), tiny_export.meta
    assert meta.precision == "fp32" and meta.layout == "two-stage" and meta.target == onnx_meta.target
    assert (meta.cfg, meta.checkpoint_sha256, meta.body_fingerprint) == (onnx_meta.cfg, onnx_meta.checkpoint_sha256,
                                                                         onnx_meta.body_fingerprint)
    assert meta.extra["openvino"] == ov.__version__.split("-")[0]
    for graph in ("scale_map", "tokens"):
        model = ov.Core().read_model(str(ir_fp32 / f"{graph}.xml"))
        keys = list(model.get_rt_info().keys())
        assert RT_INFO_KEY in keys and "framework" not in keys        # one copy of the metadata, ours
        assert json.loads(model.get_rt_info([RT_INFO_KEY]).astype(str))["sathmr.graph"] == graph
        shapes = {i.get_any_name(): i.get_partial_shape() for i in model.inputs}
        assert shapes["images"][0].is_dynamic and shapes["images"][2].is_dynamic and shapes["images"][3].is_dynamic
        if graph == "tokens":
            assert shapes["sat_idx"][1].is_dynamic and shapes["ctx_idx"][1].is_dynamic
        consts = {op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"}
        assert "f16" not in consts and "bf16" not in consts, consts       # save_model's fp16 default is off
    assert detect(ir_fp32).name == "openvino"


def test_fp32_equals_torch_on_photos_and_a_portrait(torch_p, ir_fp32, items, body_tiny):
    """The same tokens, the same people, every output within 1e-5 of its scale; compiled at f32 (never the
    bf16 OpenVINO picks by itself on AMX CPUs)."""
    be, report = compare(torch_p, ir_fp32, items, body_tiny, TOL_MM)
    assert be.info["inference_precision"] == "f32" and be.info["precision"] == "fp32"
    assert report.passed, report.summary()
    for im in report.images:
        assert im.tokens_equal and im.matched == im.people_a == im.people_b, report.summary()
        assert all(v["rel"] <= TOL_REL for v in im.network.values()), (im.name, im.network)
    assert sum(im.people_a for im in report.images) > 0


def test_batch_of_two_differently_sized_images(torch_p, ir_fp32, items, body_tiny):
    p = Predictor(OpenVinoBackend.from_file(ir_fp32), body_tiny)
    batch = [items["portrait"], next(iter(items.values()))]
    a, b = torch_p.run_batch(batch, ["p", "x"]).net, p.run_batch(batch, ["p", "x"]).net
    for k in ("tok_counts", "tok_lvl", "tok_yx"):
        assert torch.equal(a[k], b[k]), k
    for k in ("pred_boxes", "pred_pose6d", "pred_cam"):
        assert float((a[k] - b[k]).abs().max() / a[k].abs().max()) <= TOL_REL, k


def test_int8_compresses_stage_bc_only_same_tokens_within_bound(ov, torch_p, ir_fp32, ir_int8, tiny_export, items,
                                                                body_tiny):
    core = ov.Core()
    assert read_meta(ir_int8).precision == "int8"
    assert not compressed_products(core.read_model(str(ir_int8 / "scale_map.xml")))         # stage A: fp32
    assert compressed_products(core.read_model(str(ir_int8 / "tokens.xml"))) == \
        stage_bc_products(tiny_export.files["tokens"])                                        # what ORT's int8 quantises
    be, report = compare(torch_p, ir_int8, items, body_tiny, INT8_MM)
    assert be.info["precision"] == "int8" and be.info["inference_precision"] == "f32"
    assert report.passed, report.summary()
    joints = [im.joint_mm["max"] for im in report.images if im.matched]
    assert all(im.tokens_equal for im in report.images) and joints and 0 < max(joints) < INT8_MM, report.summary()


def test_open_model_picks_openvino_from_the_folder(ir_fp32, tiny_ckpt):
    be = open_model(ir_fp32, checkpoint=tiny_ckpt, threads=1, performance_hint="throughput")
    assert isinstance(be, OpenVinoBackend) and be.info["threads"] == 1 and be.info["performance_hint"] == "throughput"
    with pytest.raises(SathmrError, match="runs on: openvino"):
        choose_model(ir_fp32, "ort")
    with pytest.raises(SathmrError, match="--compile: not an option"):
        open_model(ir_fp32, compile=True)
    with pytest.raises(SathmrError, match="is a fp32 export"):
        open_model(ir_fp32, precision="int8")


@pytest.mark.slow       # a second ONNX export of the tiny model (~25 s on 2 cores)
def test_export_from_weights_converts_the_portable_graphs(ir_fp32, tiny_ckpt, smpl_tiny, tiny_random, items, tmp_path):
    """`sathmr export --format openvino -m WEIGHTS`: its own portable ONNX export, converted; the same network."""
    out = tmp_path / "from_weights"
    r = CliRunner().invoke(main, ["export", "--format", "openvino", "-m", str(tiny_ckpt), "--smpl-dir", str(smpl_tiny),
                                  "-o", str(out)])
    assert r.exit_code == 0 and f"wrote {out}: config tiny, two-stage, fp32, portable" in r.output, r.output
    assert read_meta(out).checkpoint_sha256 == read_meta(ir_fp32).checkpoint_sha256
    images, hw = collate([items["portrait"]])
    a, b = OpenVinoBackend.from_file(out).run(images, hw), OpenVinoBackend.from_file(ir_fp32).run(images, hw)
    assert torch.equal(a["tok_lvl"], b["tok_lvl"])
    assert float((a["pred_pose6d"] - b["pred_pose6d"]).abs().max() / b["pred_pose6d"].abs().max()) <= TOL_REL


def test_infer_and_parity_cli(ir_fp32, tiny_ckpt, smpl_tiny, real_images, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["infer", "--model", str(ir_fp32), "--smpl-dir", str(smpl_tiny), "-i", str(real_images[0]),
                             "-o", str(tmp_path / "out"), "--no-overlay", "-t", "0.2"])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "out" / "thresh_0.2" / f"{real_images[0].stem}.json").read_text())
    assert out["backend"] == "openvino" and out["num_people"] > 0
    r = runner.invoke(main, ["parity", "--backend", "torch,openvino", "--model", str(ir_fp32), "--checkpoint",
                             str(tiny_ckpt), "--smpl-dir", str(smpl_tiny), "-i", str(real_images[0])])
    assert r.exit_code == 0 and "torch (fp32) vs openvino (fp32)" in r.output and "PASS" in r.output, r.output


def test_damaged_and_mixed_folders_are_refused(ir_fp32, ir_int8, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in ("scale_map.xml", "scale_map.bin"):
        (mixed / f).write_bytes((ir_fp32 / f).read_bytes())
    for f in ("tokens.xml", "tokens.bin"):
        (mixed / f).write_bytes((ir_int8 / f).read_bytes())
    with pytest.raises(SathmrError, match="different exports"):
        OpenVinoBackend.from_file(mixed)
    (mixed / "tokens.bin").unlink()
    with pytest.raises(SathmrError, match="tokens.bin are missing"):
        OpenVinoBackend.from_file(mixed)
    foreign = tmp_path / "foreign.xml"
    foreign.write_text('<?xml version="1.0"?><net name="x" version="11"><rt_info/></net>')
    with pytest.raises(SathmrError, match="no sathmr metadata"):
        ir_props(foreign)
    foreign.write_text("<net")
    with pytest.raises(SathmrError, match="not a readable OpenVINO IR"):
        ir_props(foreign)


def test_options_devices_and_precision_are_checked():
    assert compile_config("CPU", "fp32", 2, None) == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                      "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0", "INFERENCE_NUM_THREADS": "2"}
    assert compile_config("GPU", "int8", None, "throughput")["INFERENCE_PRECISION_HINT"] == "f32"
    assert int(compile_config("CPU", "int8", None, None)["DYNAMIC_QUANTIZATION_GROUP_SIZE"]) > 0
    with pytest.raises(SathmrError, match="choose from latency, throughput"):
        compile_config("CPU", "fp32", None, "fast")
    assert ov_device("gpu:1", ["CPU", "GPU.0", "GPU.1"]) == "GPU.1" and ov_device("cpu", ["CPU"]) == "CPU"
    with pytest.raises(SathmrError, match="no such device here"):
        ov_device("GPU", ["CPU"])
    with pytest.raises(SathmrError, match="supports cpu, gpu"):
        ov_device("cuda", ["CPU"])


def test_export_options_openvino_would_ignore_are_refused(tmp_path):
    runner = CliRunner()
    for opts, msg in ((["--static-budget"], "no --static-budget"), (["--precision", "fp16"], "exports fp32, int8"),
                      (["--fp16"], "exports fp32, int8"), (["--portable"], "--portable: only with --format onnx"),
                      (["--max-tokens", "9"], "only with --format trt")):
        r = runner.invoke(main, ["export", "--format", "openvino", "-o", str(tmp_path / "x"), *opts])
        assert r.exit_code != 0 and msg in r.output, (opts, r.output)
    assert not (tmp_path / "x").exists()


def test_absent_openvino_is_refused_in_one_line(monkeypatch, tmp_path, tiny_export):
    monkeypatch.setitem(sys.modules, "openvino", None)      # import openvino now raises ImportError
    with pytest.raises(SathmrError) as exc:
        OpenVinoBackend.from_file(tmp_path)
    assert "pip install 'sathmr[openvino]'" in str(exc.value) and "\n" not in str(exc.value)
    r = CliRunner().invoke(main, ["export", "--format", "openvino", "--onnx", str(tiny_export.path), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0 and "pip install 'sathmr[openvino]'" in r.output and not (tmp_path / "o").exists(), r.output
