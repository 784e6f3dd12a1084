"""The default (two-stage) ONNX export: graph properties, metadata, and ONNX Runtime against PyTorch.

Tolerances. The graphs are the model's fp32 arithmetic in another summation order (ORT kernels, masked
attention even where PyTorch drops an all-valid mask), so every network output agrees to ~1e-6 of its
own scale; the bound is 1e-5 relative (max |a − b| / max |a|, spec §10.3), and the token sets must be
identical. After SMPL that is ~1e-3 mm; 0.05 mm leaves a wide margin while one wrong token (a missing
mask, a misplaced position code) moves joints by millimetres.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from sathmr.backends import OrtBackend, TorchBackend, load_backend
from sathmr.backends.meta import FORMAT_TAG, GRAPHS, read_artifact
from sathmr.backends.ort_backend import providers_for
from sathmr.bench.scaling import forced_layout
from sathmr.body import load_body_model
from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.common.files import file_sha256
from sathmr.export.onnx import export_graph
from sathmr.export.trt import profile_shapes
from sathmr.inputs.images import read_image
from sathmr.model.checkpoint import save_checkpoint
from sathmr.parity import compare_backends
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import collate, prepare
from sathmr.zoo.random_weights import random_network

from helpers import graph_op_types

TOL_REL = 1e-5
TOL_MM = 0.05
DATA_DEPENDENT = {"NonZero", "TopK", "Unique", "Loop", "If", "Scan", "NonMaxSuppression"}


def synthetic_images() -> dict[str, np.ndarray]:
    """Landscape, portrait, square and tiny inputs: every padding layout."""
    rng = np.random.default_rng(0)
    blur = lambda a: (a.astype(np.float32).cumsum(0).cumsum(1) % 256).astype(np.uint8)  # noqa: E731 - structured, not white noise
    return {"landscape": blur(rng.integers(0, 4, (300, 640, 3))), "portrait": rng.integers(0, 255, (900, 500, 3), np.uint8),
            "square": blur(rng.integers(0, 3, (512, 512, 3))), "small": rng.integers(0, 255, (60, 90, 3), np.uint8)}


@pytest.fixture(scope="module")
def ort_be(tiny_export):
    return OrtBackend.from_file(tiny_export.path, threads=2)


@pytest.fixture(scope="module")
def predictors(tiny_random, ort_be, body_tiny):
    return Predictor(TorchBackend(tiny_random), body_tiny), Predictor(ort_be, body_tiny)


@pytest.fixture(scope="module")
def items(real_images, tiny_random):
    cfg = tiny_random.cfg
    named = {p.stem: read_image(p) for p in real_images} | synthetic_images()
    return {name: prepare(img, cfg.input_size, cfg.pad_multiple) for name, img in named.items()}


# ---------------------------------------------------------------------------------------------------
def test_graphs_have_dynamic_axes_no_data_dependent_ops_and_metadata(tiny_export, tiny_ckpt, body_tiny):
    art = tiny_export
    assert art.path.is_dir() and sorted(f.name for f in art.files.values()) == ["scale_map.onnx", "tokens.onnx"]
    for graph, f in art.files.items():
        onnx.checker.check_model(str(f))
        proto = onnx.load(str(f), load_external_data=False)
        # the one If of the ONNX Runtime target: a masked attention skips its mask when every key is valid;
        # both branches are one MultiHeadAttention of the same shape (the portable graph has none)
        for node in proto.graph.node:
            if node.op_type == "If":
                branches = {a.name: a.g for a in node.attribute}
                assert {k: [n.op_type for n in b.node] for k, b in branches.items()} == \
                    {"then_branch": ["MultiHeadAttention"], "else_branch": ["MultiHeadAttention"]}, graph
                plain, masked = (list(branches[k].node[0].input) for k in ("then_branch", "else_branch"))
                assert len(masked) == 5 and masked[4], graph                   # the key-padding mask
                assert plain == masked[:len(plain)] and len(plain) < 5, graph   # every key valid: no mask
        assert any(n.op_type == "If" for n in proto.graph.node), graph
        # fp32: each ViT block's attention reads q, k and v from their own products and adds the qkv bias
        attentions = [a.g.node[0] for n in proto.graph.node if n.op_type == "If" for a in n.attribute]
        qkv_bias = {t.name for t in proto.graph.initializer if t.name.endswith("attn.qkv.bias")}
        assert qkv_bias and qkv_bias <= {i for n in attentions for i in n.input}, graph
        producer = {o: n for n in proto.graph.node for o in n.output}
        fed = [n for n in attentions if n.input[3] in qkv_bias]
        assert all(producer[i].op_type == "MatMul" for n in fed for i in n.input[:3]), graph
        assert not any(t.name.endswith("attn.qkv.weight") for t in proto.graph.initializer), graph   # split in three
        assert not any(n.op_type == "SkipLayerNormalization" for n in proto.graph.node), graph   # fp32: the CPU's form
        assert not graph_op_types(f) - {"If"} & DATA_DEPENDENT, graph
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
        assert tuple(dims) == GRAPHS[graph][0]
        assert dims["images"] == ["batch", 3, "56*h56", "56*w56"]
        if graph == "tokens":
            assert dims["t1"][:3] == ["batch", "2*h56", "2*w56"]
            assert dims["sat_idx"] == ["batch", "sat_cells"] and dims["ctx_idx"] == ["batch", "ctx_tokens"]
    meta = art.meta
    assert meta.layout == "two-stage" and meta.budget is None and meta.batch is None and meta.precision == "fp32"
    assert meta.checkpoint_sha256 == file_sha256(tiny_ckpt) and meta.body_fingerprint == body_tiny.fingerprint
    assert meta.axes()["sat_cells"] == (1, (448 // 28) ** 2)
    assert not list(art.path.parent.glob(".tiny_onnx*")), "temporary export files left behind"


def test_ort_equals_torch_on_photos_portrait_and_landscape(predictors, items):
    """Every output within 1e-5 of its scale, the same tokens, the same people — on the real photos and
    on landscape, portrait, square and tiny inputs; every token level occurs somewhere."""
    report = compare_backends(*predictors, list(items.values()), list(items), threshold=0.3, tol_mm=TOL_MM)
    assert report.passed, report.summary()
    for im in report.images:
        assert im.tokens_equal and im.overflow_b == [0, 0], report.summary()
        assert im.matched == im.people_a == im.people_b
        assert all(v["rel"] <= TOL_REL for v in im.network.values()), (im.name, im.network)
    counts = np.array([im.counts_a for im in report.images])
    assert (counts.max(0) > 0).all(), counts
    assert sum(im.people_a for im in report.images) > 0


def test_batch_of_two_differently_sized_images(predictors, items):
    """A padded batch (landscape + portrait) equals PyTorch's batch and ORT's own single-image runs."""
    torch_p, ort_p = predictors
    batch = [items["landscape"], items["portrait"]]
    a, b = torch_p.run_batch(batch, ["l", "p"]), ort_p.run_batch(batch, ["l", "p"])
    assert a.net["pred_boxes"].shape[0] == 2
    for k in ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam"):
        ref = a.net[k]
        assert float((ref - b.net[k]).abs().max() / ref.abs().max()) <= TOL_REL, k
    for k in ("tok_counts", "tok_lvl", "tok_yx"):
        assert torch.equal(a.net[k], b.net[k]), k
    for i, item in enumerate(batch):
        one = ort_p.run_batch([item], ["x"]).net
        assert torch.equal(one["tok_counts"][0], b.net["tok_counts"][i])
        torch.testing.assert_close(one["pred_pose6d"][0], b.net["pred_pose6d"][i], rtol=1e-5, atol=1e-5)


def test_more_sat_cells_than_any_static_budget(tiny_random, ort_be, items):
    """Every cell small (4 level-0 tokens each, 4x the cells of the old default budget of 3/8): the token
    axes simply grow; nothing is demoted and the outputs equal PyTorch's."""
    x, hw = collate([items["square"]])
    hc, wc = x.shape[2] // 28, x.shape[3] // 28
    forced = forced_layout(hc, wc, (hc // 2) * (wc // 2), 0)
    with torch.inference_mode():
        ref = tiny_random(x, hw, scale_map_override=forced)
    got = ort_be.two_stage.run(x, hw, scale_map_override=forced)
    assert got["tok_counts"][0].tolist() == ref["tokens"]["tok_counts"][0].tolist() == [4 * hc * wc, 0, 0]
    assert got["tok_overflow"].sum() == 0
    for k in ("pred_boxes", "pred_pose6d", "pred_cam"):
        r = ref["layers"][-1][k]
        assert float((r - got[k]).abs().max() / r.abs().max()) <= TOL_REL, k


def test_trt_profiles_fit_the_graphs(tiny_export, ort_be):
    """The TensorRT optimisation profiles' min/opt/max shapes are shapes the graphs accept (run on ORT
    at min and opt; max is the full canvas)."""
    meta = tiny_export.meta
    for graph in meta.graphs:
        shapes = profile_shapes(meta, graph, max_batch=4)
        assert set(shapes) == set(GRAPHS[graph][0])
        for pick in (0, 1):
            feeds = {}
            for name, s in shapes.items():
                shape = s[pick]
                if name in ("sat_idx", "ctx_idx"):
                    feeds[name] = np.zeros(shape, np.int64)
                elif name.endswith("_valid"):
                    feeds[name] = np.ones(shape, bool)
                elif name == "img_hw":
                    feeds[name] = np.tile(np.array(shapes["images"][pick][2:], np.int64), (shape[0], 1))
                else:
                    feeds[name] = np.zeros(shape, np.float32)
            outs = ort_be.sessions[graph].run(None, feeds)
            assert all(np.isfinite(o).all() for o in outs), (graph, pick)
        hi = shapes["images"][2]
        assert hi[2] == hi[3] == meta.cfg.input_size and hi[0] == 4


# ---------------------------------------------------------------------------------------------------
def test_metadata_mismatch_fails_clearly(tiny_export, tiny_ckpt, smpl_tiny, real_images, tmp_path):
    path = tiny_export.path
    with pytest.raises(SathmrError, match="config 'tiny', not 'sat_644'"):
        OrtBackend.from_file(path, config="sat_644")
    other = save_checkpoint(random_network("tiny", smpl_tiny, seed=5), tmp_path / "other.safetensors")
    with pytest.raises(SathmrError, match="different checkpoint"):
        OrtBackend.from_file(path, checkpoint=other)
    OrtBackend.from_file(path, config="tiny", checkpoint=tiny_ckpt)   # the right ones pass
    # a body model whose arrays differ: refused by the backend and by the CLI path
    wrong = tmp_path / "smpl"
    shutil.copytree(smpl_tiny, wrong)
    (wrong / "SMPL_NEUTRAL.pkl").unlink(missing_ok=True)   # the loader prefers .pkl; edit the .npz copy
    f = wrong / "SMPL_NEUTRAL.npz"
    arrays = dict(np.load(f, allow_pickle=False))
    arrays["v_template"] = arrays["v_template"] * 1.01
    np.savez(f, **arrays)
    with pytest.raises(SathmrError, match="different body model"):
        OrtBackend.from_file(path).check_body_model(load_body_model(wrong))
    r = CliRunner().invoke(main, ["infer", "--backend", "ort", "--model", str(path), "--smpl-dir", str(wrong),
                                  "-i", str(real_images[0]), "-o", str(tmp_path / "out"), "--no-overlay"])
    assert r.exit_code == 2 and "different body model" in r.output


def test_damaged_mixed_and_old_exports_are_refused(tiny_export, tmp_path):
    src = tiny_export.path

    def copy(name):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    def set_prop(path, key, value):
        proto = onnx.load(str(path))
        for p in proto.metadata_props:
            if p.key == key:
                p.value = value
        onnx.save(proto, str(path))
    # one graph missing
    d = copy("missing")
    (d / "tokens.onnx").unlink()
    with pytest.raises(SathmrError, match="tokens.onnx missing"):
        OrtBackend.from_file(d)
    # a graph from another export (same model, other export id)
    d = copy("mixed")
    set_prop(d / "tokens.onnx", "sathmr.export_id", "another-export")
    with pytest.raises(SathmrError, match="different exports"):
        OrtBackend.from_file(d)
    # an export of an older sathmr, one without our metadata, junk, a graph file given alone
    d = copy("old")
    set_prop(d / "scale_map.onnx", "sathmr.format", "sathmr-onnx-1")
    with pytest.raises(SathmrError, match=f"expected {FORMAT_TAG}.*re-export"):
        OrtBackend.from_file(d)
    d = copy("plain")
    proto = onnx.load(str(d / "scale_map.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(d / "scale_map.onnx"))
    with pytest.raises(SathmrError, match="format none"):
        OrtBackend.from_file(d)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SathmrError, match="cannot read ONNX"):
        OrtBackend.from_file(junk)
    with pytest.raises(SathmrError, match="pass its folder"):
        OrtBackend.from_file(src / "tokens.onnx")
    with pytest.raises(SathmrError, match="not found"):
        OrtBackend.from_file(tmp_path / "nothing_here")
    assert read_artifact(src).meta == tiny_export.meta   # the original is untouched


def test_cuda_refused_without_provider(tiny_export):
    with pytest.raises(SathmrError, match="no CUDAExecutionProvider"):
        providers_for("cuda", ["CPUExecutionProvider"])
    with pytest.raises(SathmrError, match="cpu, cuda"):
        providers_for("tpu", ["CPUExecutionProvider"])
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the refusal is covered by providers_for above")
    with pytest.raises(SathmrError, match="CUDAExecutionProvider"):
        load_backend("ort", model_path=tiny_export.path, device="cuda")


def test_trt_needs_portable_graphs_and_says_what_to_install(tiny_export, tmp_path):
    r = CliRunner().invoke(main, ["export", "--format", "trt", "--onnx", str(tiny_export.path), "-o", str(tmp_path / "e")])
    assert r.exit_code == 2 and "--portable" in r.output and "TensorRT cannot parse" in r.output
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed; tests/test_gpu.py covers the engines")
    except ImportError:
        pass
    with pytest.raises(SathmrError, match=r"sathmr\[gpu\]"):
        load_backend("trt", model_path=tmp_path / "engines")


@pytest.mark.slow        # a second export (portable): ~5 s
def test_portable_graph_has_standard_ops_only(tiny_random, tiny_export, items, tmp_path):
    """--portable (what TensorRT builds from) leaves ONNX Runtime's fused operators out and computes the
    same stage A as the default graph (checked on the scale-map graph, the cheaper one to export)."""
    import onnxruntime as ort
    meta = replace(tiny_export.meta, target="portable")
    path = export_graph(tiny_random, "scale_map", meta, tmp_path / "scale_map.onnx")
    domains = {n.domain for n in onnx.load(str(path), load_external_data=False).graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert not graph_op_types(path) & DATA_DEPENDENT           # what TensorRT builds from: no If either
    proto = onnx.load(str(tiny_export.files["scale_map"]), load_external_data=False)
    fused = {n.domain for node in proto.graph.node for a in node.attribute if a.type == a.GRAPH for n in a.g.node}
    assert "com.microsoft" in fused                                 # the default's attentions (in its If)
    x, hw = collate([items["portrait"]])
    feeds = {"images": x.numpy(), "img_hw": hw.numpy()}
    a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(str(tiny_export.files["scale_map"]), providers=["CPUExecutionProvider"]).run(None, feeds)
    for u, v in zip(a, b):
        assert np.abs(u - v).max() <= TOL_REL * np.abs(u).max()


def test_export_rejects_options_it_would_ignore(tiny_ckpt, smpl_tiny, tmp_path):
    runner = CliRunner()
    base = ["export", "--checkpoint", str(tiny_ckpt), "--smpl-dir", str(smpl_tiny), "-o", str(tmp_path / "x")]
    for opts, msg in ((["--budget-sat", "10"], "--budget-sat: only with --static-budget"),
                      (["--canvas", "448x448"], "--canvas: only with --static-budget"),
                      (["--workspace-gb", "2"], "--workspace-gb: only with --format trt"),
                      (["--static-budget", "--canvas", "400x448"], "multiples of 56"),
                      (["--static-budget", "--canvas", "224x224"], "long side"),
                      (["--static-budget", "--budget-sat", "100000"], "--budget-sat"),
                      (["--static-budget", "--canvas", "abc"], "HxW")):
        r = runner.invoke(main, base + opts)
        assert r.exit_code == 2 and msg in r.output, (opts, r.output)
    assert not (tmp_path / "x").exists()


def test_infer_ort_writes_the_torch_outputs(tiny_export, tiny_ckpt, smpl_tiny, real_images, tmp_path):
    """`sathmr infer --backend ort --model FOLDER` writes the people, JSON and raw arrays of `--backend torch`."""
    runner = CliRunner()
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(real_images[0], src / real_images[0].name)
    import cv2
    cv2.imwrite(str(src / "portrait.png"), synthetic_images()["portrait"])
    for be, extra in (("torch", ["--checkpoint", str(tiny_ckpt)]), ("ort", ["--model", str(tiny_export.path)])):
        r = runner.invoke(main, ["infer", "--backend", be, *extra, "--smpl-dir", str(smpl_tiny), "-i", str(src),
                                 "-o", str(tmp_path / be), "--no-overlay", "--save-raw", "-t", "0.2"])
        assert r.exit_code == 0, r.output
    for name in ("portrait", real_images[0].stem):
        a = json.loads((tmp_path / "torch" / "thresh_0.2" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "ort" / "thresh_0.2" / f"{name}.json").read_text())
        assert a["backend"] == "torch" and b["backend"] == "ort"
        assert a["tokens"] == b["tokens"] and a["num_people"] == b["num_people"] > 0
        for pa, pb in zip(a["people"], b["people"]):
            assert pa["query"] == pb["query"]
            np.testing.assert_allclose(pa["joints3d"], pb["joints3d"], atol=TOL_MM / 1000)
            np.testing.assert_allclose(pa["box_xyxy"], pb["box_xyxy"], atol=1e-2)
        ra = np.load(tmp_path / "torch" / "raw" / f"{name}.npz")
        rb = np.load(tmp_path / "ort" / "raw" / f"{name}.npz")
        assert set(ra.files) == set(rb.files)
        for k in ra.files:
            assert ra[k].shape == rb[k].shape, k
            if k in ("tok_yx", "tok_lvl", "input", "img_size"):    # the same tokens, in the same order
                assert np.array_equal(ra[k], rb[k]), k
            else:
                np.testing.assert_allclose(ra[k], rb[k], atol=2e-3 if k == "pred_j2ds" else 1e-4, err_msg=k)
