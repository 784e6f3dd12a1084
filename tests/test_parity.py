"""The parity tool itself (it must detect what it claims to) and the full-size ORT vs PyTorch check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sathmr.backends import OrtBackend, TorchBackend
from sathmr.body import load_body_model
from sathmr.cli import main
from sathmr.export.onnx import export_network
from sathmr.inputs.images import read_image
from sathmr.model import build_model
from sathmr.model.checkpoint import save_checkpoint
from sathmr.model.config import get_config
from sathmr.parity import compare_backends
from sathmr.runtime.postprocess import box_iou
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import collate, prepare
from sathmr.zoo.random_weights import random_network, spread_heads
from sathmr.zoo.weights import synthetic_smpl_dir

from helpers import Shifted

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    return TorchBackend(spread_heads(build_model(TINY).eval()))


@pytest.fixture(scope="module")
def item(real_images):
    return prepare(read_image(real_images[0]), TINY.input_size, TINY.pad_multiple)


def parity(a, b, body, item, **kw):
    return compare_backends(Predictor(a, body), Predictor(b, body), [item], ["x"], **kw)


def test_box_iou():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 1.0], [0.0, 0.25]])


def test_translation_shift_is_measured_in_mm(ref, body_tiny, item):
    """cam_x + d moves every person by d / s metres in x (spec §3.4): the joint error must say so."""
    d = 0.01
    rep = parity(ref, Shifted(ref, lambda o: o["pred_cam"][..., 0].add_(d)), body_tiny, item, tol_mm=1.0)
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
    strict = parity(ref, Shifted(ref, lambda o: o["pred_cam"][..., 0].add_(d)), body_tiny, item, tol_mm=0.1)
    assert not strict.passed


def test_missing_person_fails(ref, body_tiny, item):
    def drop(o):
        q = int(o["pred_confs"][0, :, 0].argmax())
        o["pred_confs"][0, q, 0] = 0.0
    rep = parity(ref, Shifted(ref, drop), body_tiny, item, tol_mm=100.0)
    im = rep.images[0]
    assert im.people_b == im.people_a - 1 and im.unmatched == 1 and not rep.passed


def test_moved_box_lowers_iou_or_unmatches(ref, body_tiny, item):
    def move(o):
        o["pred_boxes"][..., 0] += 0.01
    im = parity(ref, Shifted(ref, move), body_tiny, item).images[0]
    assert im.box_iou_min < 0.999


def test_parity_cli_torch_vs_static(tmp_path, real_images, smpl_tiny):
    torch.manual_seed(0)
    ckpt = save_checkpoint(spread_heads(build_model(TINY).eval()), tmp_path / "t.safetensors")
    out = tmp_path / "p.json"
    args = ["parity", "--backend", "torch,torch-static", "--checkpoint", str(ckpt),
            "--smpl-dir", str(smpl_tiny), "-i", str(real_images[0]), "--json", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["passed"] and rep["a"] == "torch" and rep["b"] == "torch-static"
    assert rep["images"][0]["tokens_equal"] and rep["network"]["pred_boxes"]["max"] < 1e-4
    r = CliRunner().invoke(main, ["parity", "--a", "torch", "--b", "ort", "--checkpoint", str(ckpt), "-i", str(real_images[0])])
    assert r.exit_code == 2 and "--model" in r.output


@pytest.mark.slow
def test_full_size_ort_matches_torch(tmp_path, real_images):
    """sat_644 in the official layout with random weights whose heads are spread (every token level
    occurs): the default two-stage export equals the dynamic model on both photos — every output within
    1e-5 of its scale, the same token set, the same people."""
    smpl = synthetic_smpl_dir("full")
    model, body = random_network("sat_644", smpl), load_body_model(smpl)
    art, _ = export_network(model, body, tmp_path / "sat_644_onnx")
    items = [prepare(read_image(p), 1288, 56) for p in real_images]
    rep = compare_backends(Predictor(TorchBackend(model), body), Predictor(OrtBackend.from_file(art.path, threads=2), body),
                           items, [p.stem for p in real_images], tol_mm=0.05)
    assert rep.passed, rep.summary()
    for im in rep.images:
        assert im.tokens_equal and im.overflow_b == [0, 0], rep.summary()
        assert min(im.counts_a) > 0, im.counts_a
        assert all(v["rel"] <= 1e-5 for v in im.network.values()), rep.summary()
