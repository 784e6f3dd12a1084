"""Static ONNX export: graph properties, metadata, the ORT backend and the documented overflow rule.

Tolerances. The exported graph is the same fp32 arithmetic as the dynamic model, in a different
summation order (ORT kernels, padded/masked attention), so network outputs agree to ~1e-6 (spec
§10.3: ≈1e-5 relative). After SMPL that is ~1e-3 mm; the 0.05 mm bound leaves a 50x margin while a
single wrong token (a missing mask, a misplaced position code) moves joints by millimetres.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import real_image_paths
from helpers import graph_op_types
from helpers import output_shapes as static_output_shapes
from sathmr.api import Predictor
from sathmr.backends import load_backend
from sathmr.backends.ort_backend import OrtBackend, providers_for
from sathmr.backends.torch_backend import TorchBackend
from sathmr.bench.setup import spread_heads
from sathmr.body import load_body_model
from sathmr.cli import main
from sathmr.config import get_config
from sathmr.errors import SathmrError
from sathmr.export.meta import ExportMeta, file_sha256, read_meta
from sathmr.export.onnx import export_from_checkpoint, export_onnx
from sathmr.model import build_model
from sathmr.model.checkpoint import save_checkpoint
from sathmr.model.tokens import TokenBudget, default_budget
from sathmr.parity import compare_backends
from sathmr.preprocess import collate, prepare, read_image
from sathmr.weights import synthetic_smpl_dir

TINY = get_config("tiny")
REAL = real_image_paths()
TOL_MM = 0.05
TOL_NET = 1e-4


def synthetic_images() -> dict[str, np.ndarray]:
    """Landscape, portrait, square and tiny inputs: every padding layout of the static canvas."""
    rng = np.random.default_rng(0)
    blur = lambda a: (a.astype(np.float32).cumsum(0).cumsum(1) % 256).astype(np.uint8)  # noqa: E731 - structured, not white noise
    return {"landscape": blur(rng.integers(0, 4, (300, 640, 3))), "portrait": rng.integers(0, 255, (900, 500, 3), np.uint8),
            "square": blur(rng.integers(0, 3, (512, 512, 3))), "small": rng.integers(0, 255, (60, 90, 3), np.uint8)}


@pytest.fixture(scope="module")
def smpl_dir() -> Path:
    return synthetic_smpl_dir("tiny")


@pytest.fixture(scope="module")
def body(smpl_dir):
    return load_body_model(smpl_dir)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return spread_heads(build_model(TINY).eval())


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model, tmp_path_factory) -> Path:
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_ckpt, smpl_dir, tmp_path_factory) -> tuple[Path, ExportMeta]:
    return export_from_checkpoint(tmp_path_factory.mktemp("onnx") / "tiny.onnx", checkpoint=tiny_ckpt, smpl_dir=smpl_dir)


def prepared_all():
    items = [prepare(read_image(p), TINY.input_size, TINY.pad_multiple) for p in REAL]
    names = [p.stem for p in REAL]
    for name, img in synthetic_images().items():
        items.append(prepare(img, TINY.input_size, TINY.pad_multiple))
        names.append(name)
    return items, names


# ---------------------------------------------------------------------------------------------------
def test_graph_is_static_and_carries_metadata(tiny_onnx, tiny_ckpt, body):
    path, meta = tiny_onnx
    onnx.checker.check_model(str(path))
    # no data-dependent shapes: no NonZero / boolean compaction, every output dimension fixed
    assert "NonZero" not in graph_op_types(path)
    shapes = static_output_shapes(path)
    assert list(shapes) == ["pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam", "scale_map",
                            "tok_yx", "tok_lvl", "tok_counts", "tok_overflow"]
    assert all(isinstance(d, int) and d > 0 for dims in shapes.values() for d in dims), shapes
    b = default_budget(TINY)
    assert shapes["tok_lvl"] == [1, 4 * b.sat_cells + b.context]
    back = read_meta(path)
    assert back == meta
    assert back.cfg == TINY and back.canvas_hw == (448, 448) and back.batch == 1 and back.budget == b
    assert back.checkpoint_sha256 == file_sha256(tiny_ckpt)
    assert back.body_fingerprint == body.fingerprint
    assert not list(path.parent.glob(".tiny.onnx*")), "temporary export files left behind"


def test_ort_matches_torch_dynamic(tiny_onnx, tiny_model, body):
    """Real and synthetic images, landscape and portrait: same tokens, same people, within fp32 noise."""
    ort_be = OrtBackend.from_file(tiny_onnx[0], threads=2)
    torch_be = TorchBackend(tiny_model)
    items, names = prepared_all()
    report = compare_backends(Predictor(torch_be, body), Predictor(ort_be, body), items, names, threshold=0.3,
                              tol_mm=TOL_MM)
    assert report.passed, report.summary()
    for im in report.images:
        assert im.tokens_equal and im.overflow_b == [0, 0], report.summary()
        assert im.matched == im.people_a == im.people_b > 0
        assert all(v["max"] < TOL_NET for v in im.network.values()), im.network
        assert im.box_iou_min > 0.999
    # the test exercises all three token levels somewhere, else it proves little
    counts = np.array([im.counts_a for im in report.images])
    assert (counts.max(0) > 0).all(), counts


def test_forced_overflow_demotes_largest_scale(tiny_model, tiny_onnx, tmp_path, smpl_dir):
    """A SAT budget below the image's need: the smallest-scale cells keep level 0, the rest go to level 1."""
    ks = 4
    meta = ExportMeta(cfg=TINY, budget=TokenBudget(ks, default_budget(TINY).context), canvas_hw=(448, 448), batch=1)
    be = OrtBackend.from_file(export_onnx(tiny_model, tmp_path / "small_budget.onnx", meta))
    item = prepare(read_image(REAL[0]), TINY.input_size, TINY.pad_multiple)
    with torch.inference_mode():
        dyn = TorchBackend(tiny_model).run(*collate([item]))
    out = be.run(*collate([item], be.canvas_hw))
    n0, n1, n2 = dyn["tok_counts"][0].tolist()
    need = n0 // 4
    assert need > ks, "the image must need more SAT cells than the budget"
    assert out["tok_overflow"][0].tolist() == [need - ks, 0]
    assert out["tok_counts"][0].tolist() == [4 * ks, n1 + need - ks, n2]
    # which cells kept level 0: the ks smallest predicted scales among the dynamic SAT cells
    smap = dyn["scale_map"][0]
    lvl0 = out["tok_lvl"][0] == 0
    kept = {(int(y) // 2, int(x) // 2) for y, x in out["tok_yx"][0][lvl0].tolist()}
    dyn_cells = {(int(y) // 2, int(x) // 2) for y, x in dyn["tok_yx"][0][dyn["tok_lvl"][0] == 0].tolist()}
    assert len(kept) == ks and kept <= dyn_cells
    demoted = dyn_cells - kept
    assert max(smap[c][1] for c in kept) <= min(smap[c][1] for c in demoted)
    # every demoted cell is now a level-1 token
    lvl1 = {tuple(map(int, yx)) for yx in out["tok_yx"][0][out["tok_lvl"][0] == 1].tolist()}
    assert demoted <= lvl1
    # and the predictor surfaces the flag (what `infer` writes into its JSON)
    res = Predictor(be, load_body_model(smpl_dir)).run_batch([item], ["x"]).results[0]
    assert res.tokens.sat_overflow == need - ks and res.tokens.level0 == 4 * ks


def test_fixed_batch_pads_and_dynamic_batch(tiny_ckpt, smpl_dir, tiny_onnx, tmp_path):
    """--batch 2 graph on 3 images (one padded chunk) and the default dynamic-batch graph equal the batch-1 graph."""
    runner = CliRunner()
    outs = {}
    for name, opts in (("b2", ["--batch", "2"]), ("dyn", [])):   # dynamic is the CLI default
        path = tmp_path / f"{name}.onnx"
        r = runner.invoke(main, ["export", "--checkpoint", str(tiny_ckpt), "--smpl-dir", str(smpl_dir),
                                 "-o", str(path), *opts])
        assert r.exit_code == 0, r.output
        outs[name] = OrtBackend.from_file(path)
    assert outs["b2"].fixed_batch == 2 and outs["dyn"].fixed_batch is None
    assert static_output_shapes(tmp_path / "dyn.onnx")["pred_boxes"][0] not in (1, 2, 3)   # symbolic
    one = OrtBackend.from_file(tiny_onnx[0])
    items, _ = prepared_all()
    images, img_hw = collate(items[:3], one.canvas_hw)
    ref = [one.run(images[i:i + 1], img_hw[i:i + 1]) for i in range(3)]
    for be in outs.values():
        got = be.run(images, img_hw)
        assert got["pred_boxes"].shape[0] == 3
        for i in range(3):
            for k in ("pred_boxes", "pred_pose6d", "pred_cam", "tok_counts"):
                torch.testing.assert_close(got[k][i:i + 1], ref[i][k], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
def test_metadata_mismatch_fails_clearly(tiny_onnx, tiny_ckpt, smpl_dir, tmp_path, tiny_model):
    path, _ = tiny_onnx
    with pytest.raises(SathmrError, match="config 'tiny', not 'sat_644'"):
        OrtBackend.from_file(path, config="sat_644")
    other = save_checkpoint(spread_heads(build_model(TINY), seed=5), tmp_path / "other.safetensors")
    with pytest.raises(SathmrError, match="different checkpoint"):
        OrtBackend.from_file(path, checkpoint=other)
    OrtBackend.from_file(path, config="tiny", checkpoint=tiny_ckpt)   # the right ones pass
    # a body model whose arrays differ
    wrong = tmp_path / "smpl"
    shutil.copytree(smpl_dir, wrong)
    (wrong / "SMPL_NEUTRAL.pkl").unlink(missing_ok=True)   # the loader prefers .pkl; edit the .npz copy
    f = wrong / "SMPL_NEUTRAL.npz"
    arrays = dict(np.load(f, allow_pickle=False))
    arrays["v_template"] = arrays["v_template"] * 1.01
    np.savez(f, **arrays)
    be = OrtBackend.from_file(path)
    with pytest.raises(SathmrError, match="different body model"):
        be.check_body_model(load_body_model(wrong))
    be.check_body_model(load_body_model(smpl_dir))
    # the predictor path the CLI uses refuses it too
    r = CliRunner().invoke(main, ["infer", "--backend", "ort", "--model", str(path), "--smpl-dir", str(wrong),
                                  "-i", str(REAL[0]), "-o", str(tmp_path / "out"), "--no-overlay"])
    assert r.exit_code == 2 and "different body model" in r.output
    # not an export of ours / not ONNX at all / missing
    plain = tmp_path / "plain.onnx"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(plain))
    with pytest.raises(SathmrError, match="not a sathmr export"):
        OrtBackend.from_file(plain)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SathmrError, match="cannot read ONNX"):
        OrtBackend.from_file(junk)
    with pytest.raises(SathmrError, match="not found"):
        OrtBackend.from_file(tmp_path / "missing.onnx")


def test_cuda_refused_without_provider(tiny_onnx):
    with pytest.raises(SathmrError, match="no CUDAExecutionProvider"):
        providers_for("cuda", ["CPUExecutionProvider"])
    with pytest.raises(SathmrError, match="cpu, cuda"):
        providers_for("tpu", ["CPUExecutionProvider"])
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the refusal is covered by providers_for above")
    with pytest.raises(SathmrError, match="CUDAExecutionProvider"):
        load_backend("ort", model_path=tiny_onnx[0], device="cuda")


def test_trt_backend_without_tensorrt(tiny_onnx, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed; the GPU test below covers it")
    except ImportError:
        pass
    with pytest.raises(SathmrError, match=r"sathmr\[gpu\]"):
        load_backend("trt", model_path=tmp_path / "x.engine")
    r = CliRunner().invoke(main, ["export", "--format", "trt", "--onnx", str(tiny_onnx[0]), "-o", str(tmp_path / "x.engine")])
    assert r.exit_code == 2 and "tensorrt" in r.output


def test_trt_engine_matches_ort(tiny_onnx, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'sathmr[gpu]')")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from sathmr.export.trt import build_engine
    engine = build_engine(tiny_onnx[0], tmp_path / "tiny.engine")
    trt_be, ort_be = load_backend("trt", model_path=engine, device="cuda"), OrtBackend.from_file(tiny_onnx[0])
    items, _ = prepared_all()
    x, hw = collate(items[:1], ort_be.canvas_hw)
    a, b = trt_be.run(x, hw), ort_be.run(x, hw)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], atol=1e-3, rtol=1e-3)
    assert torch.equal(a["tok_counts"], b["tok_counts"])


def test_export_rejects_bad_options(tiny_ckpt, smpl_dir, tmp_path):
    runner = CliRunner()
    for opts, msg in ((["--canvas", "400x448"], "multiples of 56"), (["--canvas", "224x224"], "long side"),
                      (["--budget-sat", "100000"], "--budget-sat"), (["--canvas", "abc"], "HxW")):
        r = runner.invoke(main, ["export", "--checkpoint", str(tiny_ckpt), "--smpl-dir", str(smpl_dir),
                                 "-o", str(tmp_path / "x.onnx"), *opts])
        assert r.exit_code == 2 and msg in r.output, (opts, r.output)
    assert not (tmp_path / "x.onnx").exists()


def test_infer_ort_writes_the_torch_outputs(tiny_onnx, tiny_ckpt, smpl_dir, tmp_path):
    """`sathmr infer --backend ort` writes the same people, JSON and raw arrays as `--backend torch`."""
    runner = CliRunner()
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(REAL[0], src / REAL[0].name)
    import cv2
    cv2.imwrite(str(src / "portrait.png"), synthetic_images()["portrait"])
    for be, extra in (("torch", ["--checkpoint", str(tiny_ckpt)]), ("ort", ["--model", str(tiny_onnx[0])])):
        r = runner.invoke(main, ["infer", "--backend", be, *extra, "--smpl-dir", str(smpl_dir), "-i", str(src),
                                 "-o", str(tmp_path / be), "--no-overlay", "--save-raw"])
        assert r.exit_code == 0, r.output
    for name in ("portrait", REAL[0].stem):
        a = json.loads((tmp_path / "torch" / "thresh_0.3" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "ort" / "thresh_0.3" / f"{name}.json").read_text())
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
            if k in ("tok_yx", "tok_lvl"):   # token order inside the budget is free (§10.3)
                key = lambda z: sorted(map(tuple, np.column_stack([z["tok_lvl"], z["tok_yx"]]).tolist()))  # noqa: E731
                assert key(ra) == key(rb)
            elif k in ("input", "img_size"):
                assert np.array_equal(ra[k], rb[k]), k
            else:
                np.testing.assert_allclose(ra[k], rb[k], atol=2e-3 if k == "pred_j2ds" else 1e-4, err_msg=k)


def test_simplify_is_optional(tiny_onnx, tmp_path):
    """Without onnxslim/onnxsim --simplify keeps the graph and says why; with one, metadata survives."""
    from sathmr.export.onnx import simplify_onnx
    path = tmp_path / "copy.onnx"
    shutil.copy(tiny_onnx[0], path)
    import importlib.util
    if any(importlib.util.find_spec(m) for m in ("onnxslim", "onnxsim")):
        assert simplify_onnx(path, external=False)
    else:
        with pytest.warns(UserWarning, match="onnxslim"):
            assert simplify_onnx(path, external=False) is False
    assert read_meta(path) == tiny_onnx[1]
    onnx.checker.check_model(str(path))
