"""The parity tool itself (it must detect what it claims to) and the full-size ORT vs PyTorch check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sathmr.backends.base import Backend
from sathmr.backends.ort_backend import OrtBackend
from sathmr.backends.torch_backend import TorchBackend
from sathmr.body import load_body_model
from sathmr.cli import main
from sathmr.config import get_config
from sathmr.export.budgets import default_budget
from sathmr.export.onnx import ExportMeta, export_onnx
from sathmr.model import build_model
from sathmr.model.checkpoint import save_checkpoint
from sathmr.parity import box_iou, compare_backends, spread_heads
from sathmr.preprocess import collate, prepare, read_image
from sathmr.weights import synthetic_smpl_dir

TINY = get_config("tiny")
IMAGE = Path("/work/shared/data/images/sathmr_demo_img1.jpeg")


class Shifted(Backend):
    """Another backend's outputs with a known edit: the parity numbers must reveal exactly it."""

    def __init__(self, inner: Backend, edit):
        self.inner, self.edit = inner, edit
        self.cfg, self.canvas_hw, self.name, self.info = inner.cfg, inner.canvas_hw, "shifted", {}

    def run(self, images, img_hw):
        out = {k: v.clone() for k, v in self.inner.run(images, img_hw).items()}
        self.edit(out)
        return out


@pytest.fixture(scope="module")
def body():
    return load_body_model(synthetic_smpl_dir("tiny"))


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    return TorchBackend(spread_heads(build_model(TINY).eval()))


@pytest.fixture(scope="module")
def item():
    return prepare(read_image(IMAGE), TINY.input_size, TINY.pad_multiple)


def test_box_iou():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 1.0], [0.0, 0.25]])


def test_identical_backends_report_zero(ref, body, item):
    rep = compare_backends(ref, ref, body, [item], ["x"], tol_mm=1e-9)
    im = rep.images[0]
    assert rep.passed and im.matched == im.people_a > 0 and im.tokens_equal
    assert all(v["max"] == 0 for v in im.network.values()) and im.joint_mm["max"] == 0


def test_translation_shift_is_measured_in_mm(ref, body, item):
    """cam_x + d moves every person by d / s metres in x (spec §3.4): the joint error must say so."""
    d = 0.01
    rep = compare_backends(ref, Shifted(ref, lambda o: o["pred_cam"][..., 0].add_(d)), body, [item], ["x"], tol_mm=1.0)
    im = rep.images[0]
    with torch.inference_mode():
        out = ref.run(*collate([item]))
    s = 2 * out["pred_cam"][0, :, 2].sigmoid() + 1e-6
    keep = out["pred_confs"][0, :, 0] > 0.3
    expected_mm = (d / s[keep]).double() * 1000
    assert im.matched == int(keep.sum())
    assert im.joint_mm["max"] == pytest.approx(float(expected_mm.max()), rel=1e-4)
    assert im.vertex_mm["mean"] == pytest.approx(float(expected_mm.mean()), rel=1e-4)
    assert rep.passed == (float(expected_mm.max()) <= 1.0)
    strict = compare_backends(ref, Shifted(ref, lambda o: o["pred_cam"][..., 0].add_(d)), body, [item], ["x"], tol_mm=0.1)
    assert not strict.passed


def test_missing_person_fails(ref, body, item):
    def drop(o):
        q = int(o["pred_confs"][0, :, 0].argmax())
        o["pred_confs"][0, q, 0] = 0.0
    rep = compare_backends(ref, Shifted(ref, drop), body, [item], ["x"], tol_mm=100.0)
    im = rep.images[0]
    assert im.people_b == im.people_a - 1 and im.unmatched == 1 and not rep.passed


def test_moved_box_lowers_iou_or_unmatches(ref, body, item):
    def move(o):
        o["pred_boxes"][..., 0] += 0.01
    im = compare_backends(ref, Shifted(ref, move), body, [item], ["x"]).images[0]
    assert im.box_iou_min < 0.999


def test_parity_cli_torch_vs_static(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(spread_heads(build_model(TINY).eval()), tmp_path / "t.safetensors")
    out = tmp_path / "p.json"
    args = ["parity", "--a", "torch", "--b", "torch-static", "--checkpoint", str(ckpt),
            "--smpl-dir", str(synthetic_smpl_dir("tiny")), "-i", str(IMAGE), "--json", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["passed"] and rep["a"] == "torch" and rep["b"] == "torch-static"
    assert rep["images"][0]["tokens_equal"] and rep["network"]["pred_boxes"]["max"] < 1e-4
    r = CliRunner().invoke(main, ["parity", "--a", "torch", "--b", "ort", "--checkpoint", str(ckpt), "-i", str(IMAGE)])
    assert r.exit_code == 2 and "--model" in r.output


@pytest.mark.slow
def test_full_size_ort_matches_torch(tmp_path):
    """sat_644 with random (spread) weights on one real image: the exported graph equals the dynamic model."""
    cfg = get_config("sat_644")
    torch.manual_seed(0)
    model = spread_heads(build_model(cfg).eval())
    meta = ExportMeta(cfg=cfg, budget=default_budget(cfg), canvas_hw=(cfg.input_size,) * 2, batch=1)
    ort_be = OrtBackend.from_file(export_onnx(model, tmp_path / "full.onnx", meta), threads=2)
    body = load_body_model(synthetic_smpl_dir("tiny"))
    item = prepare(read_image(IMAGE), cfg.input_size, cfg.pad_multiple)
    rep = compare_backends(TorchBackend(model), ort_be, body, [item], [IMAGE.stem], tol_mm=0.05)
    im = rep.images[0]
    assert rep.passed, rep.summary()
    assert im.tokens_equal and im.overflow_b == [0, 0] and im.counts_a[0] > 0 and im.counts_a[1] > 0
    assert all(v["max"] < 1e-3 for v in im.network.values()), rep.summary()
