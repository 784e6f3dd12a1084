"""The model file decides the backend: suffix dispatch, --backend overrides, --checkpoint as an alias,
options a format would ignore refused, and `--model x.onnx` running on ONNX Runtime by itself."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sathmr.backends import load_backend, open_model
from sathmr.backends.formats import BACKENDS, EXPORT_FORMATS, FORMATS, choose_model, detect
from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.model.tokens import TokenBudget
from sathmr.serve.service import ModelSpec
from sathmr.zoo.weights import EMBEDDED


@pytest.fixture
def files(tmp_path):
    """Empty stand-ins: dispatch looks at names and folder contents only, never loads."""
    out = {}
    for name in ("a.pth", "b.safetensors", "m.onnx", "m.engine", "m.pt", "m.onnx.bak", "M.PTH"):
        (tmp_path / name).write_bytes(b"")
        out[name] = tmp_path / name
    for folder, suffix in (("onnx_dir", ".onnx"), ("trt_dir", ".engine")):
        (tmp_path / folder).mkdir()
        for graph in ("scale_map", "tokens"):
            (tmp_path / folder / f"{graph}{suffix}").write_bytes(b"")
        out[folder] = tmp_path / folder
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "scale_map.onnx").write_bytes(b"")
    out["half"] = tmp_path / "half"
    return out


def test_the_table_feeds_the_cli_choices():
    assert list(BACKENDS) == ["torch", "torch-static", "ort", "trt", "openvino"]
    assert EXPORT_FORMATS == ("onnx", "trt", "openvino")
    assert [BACKENDS[b][0] for b in BACKENDS] == [False, False, True, True, True]
    assert FORMATS["engine"].gpu and not FORMATS["onnx"].gpu and not FORMATS["openvino"].gpu


def test_exact_suffix_dispatch(files):
    assert [detect(files[n]).name for n in ("a.pth", "b.safetensors", "m.onnx", "m.engine", "onnx_dir", "trt_dir")] == \
        ["checkpoint", "checkpoint", "onnx", "engine", "onnx", "engine"]
    for name in ("m.pt", "m.onnx.bak", "M.PTH"):
        with pytest.raises(SathmrError, match="unknown model file type"):
            detect(files[name])
    with pytest.raises(SathmrError, match="not a two-stage export"):
        detect(files["half"])


def test_the_model_implies_the_backend_and_backend_overrides(files):
    c = choose_model(files["m.onnx"])
    assert (c.backend, c.model_path, c.checkpoint) == ("ort", files["m.onnx"], None)
    assert choose_model(files["trt_dir"]).backend == "trt"
    c = choose_model(files["a.pth"])
    assert (c.backend, c.checkpoint, c.model_path) == ("torch", files["a.pth"], None)
    assert choose_model(files["b.safetensors"], "torch-static").backend == "torch-static"
    c = choose_model(checkpoint=files["a.pth"])                       # --checkpoint alone: the alias
    assert (c.backend, c.checkpoint) == ("torch", files["a.pth"])
    c = choose_model(files["onnx_dir"], checkpoint=files["a.pth"])     # next to an export: what it came from
    assert (c.backend, c.model_path, c.checkpoint) == ("ort", files["onnx_dir"], files["a.pth"])
    assert choose_model("embedded").checkpoint == EMBEDDED
    d = choose_model()
    assert (d.backend, d.checkpoint, d.model_path) == ("torch", None, None)


def test_contradictions_are_refused(files):
    with pytest.raises(SathmrError, match="runs on: ort"):
        choose_model(files["m.onnx"], "torch")
    with pytest.raises(SathmrError, match="runs an ONNX export .* it runs on: torch, torch-static"):
        choose_model(files["a.pth"], "ort")
    with pytest.raises(SathmrError, match="--model"):
        choose_model(backend="ort", checkpoint=files["a.pth"])
    with pytest.raises(SathmrError, match="give one"):
        choose_model(files["a.pth"], checkpoint=files["b.safetensors"])
    with pytest.raises(SathmrError, match="checkpoint not found"):
        choose_model(files["a.pth"].with_name("nope.pth"))
    with pytest.raises(SathmrError, match="did you mean sat_644"):
        choose_model("sat_64")
    with pytest.raises(SathmrError, match="unknown backend"):
        choose_model(files["m.onnx"], "onnx")


def test_options_a_format_would_ignore_are_refused(files, tiny_ckpt):
    with pytest.raises(SathmrError, match="--threads: not an option for the torch backend"):
        open_model(tiny_ckpt, threads=2)
    with pytest.raises(SathmrError, match="--budget: not an option for the ort backend"):
        load_backend("ort", model_path=files["m.onnx"], budget=TokenBudget(8, 16))
    assert open_model(tiny_ckpt, "torch-static", budget=TokenBudget(8, 16)).name == "torch-static"


def test_model_alone_runs_an_export_on_onnx_runtime(tiny_export, tiny_ckpt, smpl_tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    image = tmp_path / "in" / "x.jpg"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    for model, backend in ((tiny_export.path, "ort"), (tiny_ckpt, "torch")):
        out = tmp_path / backend
        r = CliRunner().invoke(main, ["infer", "-i", str(image), "-o", str(out), "--model", str(model),
                                      "--smpl-dir", str(smpl_tiny), "--no-overlay"])
        assert r.exit_code == 0, r.output
        assert json.loads((out / "thresh_0.3" / "x.json").read_text())["backend"] == backend
    r = CliRunner().invoke(main, ["infer", "-i", str(image), "-o", str(tmp_path / "bad"), "--model",
                                  str(tiny_export.path), "--backend", "torch"])
    assert r.exit_code == 2 and "runs on: ort" in r.output


def test_serve_loads_what_the_model_implies(tiny_export, smpl_tiny):
    pytest.importorskip("onnxruntime")
    predictor, info = ModelSpec(model_path=str(tiny_export.path), smpl_dir=str(smpl_tiny)).load(0.3)
    assert predictor.backend.name == "ort" and info["path"] == str(tiny_export.path)
