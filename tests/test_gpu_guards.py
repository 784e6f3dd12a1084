"""What the GPU paths decide before any kernel runs, checked on a CPU: supported TensorRT releases, engine
profiles sized to memory, fp16 graphs whose normalisations and softmaxes stay fp32, conflicting ONNX
Runtime installs, and TF32 off in PyTorch."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from sathmr.backends.meta import ExportMeta
from sathmr.backends.torch_backend import _tf32_knobs, exact_fp32
from sathmr.backends.two_stage import TwoStage
from sathmr.cli import main
from sathmr.common import optional
from sathmr.common.errors import SathmrError
from sathmr.common.optional import check_ort_install, check_tensorrt_version
from sathmr.export.onnx import export_network
from sathmr.export.trt import FP32_OPS, _elem_types, build_engines, check_budget, pin_fp32, score_bytes, token_maxima
from sathmr.inputs.images import read_image
from sathmr.model.config import get_config
from sathmr.runtime.preprocess import collate, prepare
from sathmr.zoo.random_weights import random_network
from sathmr.zoo.weights import synthetic_smpl_dir

FULL = ExportMeta(cfg=get_config("sat_644"))


@pytest.mark.parametrize("version", ["10.16.1.11", "10.20.0", "11.4.0.106", "11.9"])
def test_supported_tensorrt_releases(version):
    assert check_tensorrt_version(version) >= (10, 16)


@pytest.mark.parametrize("version", ["8.6.1", "10.15.1.29", "12.0.0", "x"])
def test_other_tensorrt_releases_are_refused_in_one_line(version):
    with pytest.raises(SathmrError, match="TensorRT|version") as exc:
        check_tensorrt_version(version)
    assert "\n" not in str(exc.value)


def test_default_profiles_fit_the_budget_and_a_large_batch_is_refused_with_what_fits():
    """sat_644 at batch 1 with every token count (4·2116 + 2116 tokens): one score tensor of 5.0 GiB, within
    the 8 GB budget; batch 8 at the same range (40 GiB) is refused, naming a --max-tokens that fits."""
    assert token_maxima(FULL, None) == (2116, 2116)
    assert score_bytes(FULL, 1, None) / 2**30 == pytest.approx(5.0, abs=0.05)
    check_budget(FULL, 1, None)
    with pytest.raises(SathmrError, match=r"--max-tokens (\d+)") as exc:
        check_budget(FULL, 8, None)
    fits = int(str(exc.value).split("--max-tokens ")[1].split()[0])
    check_budget(FULL, 8, fits)                    # what the message offers builds
    ks, kc = token_maxima(FULL, fits)
    assert 4 * ks + kc <= fits and kc == 2116        # context keeps its full range, SAT cells take the rest
    with pytest.raises(SathmrError, match="--max-batch-size 0"):
        check_budget(FULL, 0, None)


def test_trt_options_refused_where_they_would_be_ignored(tmp_path):
    r = CliRunner().invoke(main, ["export", "-o", str(tmp_path / "x"), "--max-tokens", "4000"])
    assert r.exit_code == 2 and "--max-tokens" in r.output and "--format trt" in r.output
    r = CliRunner().invoke(main, ["export", "--format", "trt", "--static-budget", "-o", str(tmp_path / "x.engine"),
                                  "--max-tokens", "4000"])
    assert r.exit_code == 2 and "fixed budgets" in r.output
    r = CliRunner().invoke(main, ["export", "--format", "trt", "--static-budget", "--fp16", "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "stage A" in r.output and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def fp16_portable(tiny_random, body_tiny, tmp_path_factory):
    return export_network(tiny_random, body_tiny, tmp_path_factory.mktemp("fp16") / "onnx", precision="fp16",
                          portable=True)[0]


@pytest.fixture(scope="module")
def fp32_portable(tiny_random, body_tiny, tmp_path_factory):
    return export_network(tiny_random, body_tiny, tmp_path_factory.mktemp("fp32") / "onnx", portable=True)[0]


def test_fp16_engines_need_an_fp16_graph(fp32_portable, fp16_portable, tmp_path):
    """Strongly typed engines take the graph's precision: an fp32 export is never silently reduced, and
    the checks come before TensorRT is even imported."""
    with pytest.raises(SathmrError, match="is an fp32 export.*--portable --precision fp16"):
        build_engines(fp32_portable.path, tmp_path / "e", fp16=True)
    with pytest.raises(SathmrError, match="batches up to 64"):
        build_engines(fp16_portable.path, tmp_path / "e", max_batch=65)
    assert not (tmp_path / "e").exists()


def test_pin_fp32_casts_every_fp16_norm_and_softmax(fp16_portable, fp32_portable):
    model = onnx.load(str(fp16_portable.files["tokens"]))
    before = _elem_types(model)
    targets = [n for n in model.graph.node if n.op_type in FP32_OPS]
    assert targets and all(before[n.input[0]] == onnx.TensorProto.FLOAT16 for n in targets)
    assert pin_fp32(model) == len(targets)
    onnx.checker.check_model(model)
    after = _elem_types(model)
    for node in (n for n in model.graph.node if n.op_type in FP32_OPS):
        assert all(after[i] == onnx.TensorProto.FLOAT for i in node.input if i), node.name
        assert all(after[o] == onnx.TensorProto.FLOAT for o in node.output), node.name
    # the graph's outputs keep their names and types: the engine's interface does not change
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == \
        [(o.name, o.type.tensor_type.elem_type) for o in onnx.load(str(fp16_portable.files["tokens"])).graph.output]
    assert pin_fp32(model) == 0                    # idempotent: nothing fp16 is left to pin
    # ONNX Runtime runs the pinned fp16 graph on the CPU; its outputs stay close to the fp32 graph's
    ort = pytest.importorskip("onnxruntime")
    fp32 = fp32_portable
    g = np.random.default_rng(0)
    feeds = {"images": g.standard_normal((1, 3, 448, 448), np.float32),
             "t1": g.standard_normal((1, 16, 16, 64), np.float32), "cls": g.standard_normal((1, 1, 64), np.float32),
             "sat_idx": np.array([[3, 40, 77]]), "sat_valid": np.ones((1, 3), bool),
             "ctx_idx": np.arange(20)[None], "ctx_valid": np.ones((1, 20), bool)}
    try:
        half = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - an fp16 kernel this ORT build lacks on CPU
        pytest.skip(f"ONNX Runtime's CPU provider cannot run this fp16 graph: {str(exc).splitlines()[0]}")
    full = ort.InferenceSession(str(fp32.files["tokens"]), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(half, full):
        assert np.isfinite(a).all() and np.abs(a - b).max() <= 5e-2 * max(1.0, np.abs(b).max())


def test_two_onnxruntime_distributions_are_refused_naming_both(monkeypatch):
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}

    def version(name):
        if name in versions:
            return versions[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(SathmrError) as exc:
        optional.require("onnxruntime")
    msg = str(exc.value)
    assert "onnxruntime==1.32.0" in msg and "onnxruntime-gpu==1.31.1" in msg and "pip uninstall" in msg
    assert "\n" not in msg
    del versions["onnxruntime"]
    check_ort_install()                             # one distribution: fine


def test_exact_fp32_turns_tf32_off_on_cuda_only_and_restores():
    knobs = _tf32_knobs()
    saved = [getattr(o, n) for o, n, _ in knobs]
    with exact_fp32(torch.device("cuda")):
        assert [getattr(o, n) for o, n, _ in knobs] == [v for _, _, v in knobs]
    assert [getattr(o, n) for o, n, _ in knobs] == saved
    with exact_fp32(torch.device("cpu")):
        assert [getattr(o, n) for o, n, _ in knobs] == saved


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to TF32's 10-bit mantissa (what tensor cores read of an fp32 operand)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.slow
def test_tf32_in_stage_a_changes_the_full_size_token_set(real_images):
    """Why TF32 is off before the token selection (ORT CUDA ``use_tf32=0``, TensorRT without
    ``BuilderFlag.TF32``, PyTorch ``exact_fp32``): sat_644 with random weights on the first photo, every
    stage-A convolution and linear layer fed TF32-rounded operands as tensor cores would be — the scale
    map moves (1.9e-3 relative) and the selected token set is no longer the fp32 one (228 SAT cells and
    1073 context tokens become 227 and 1074)."""
    model = random_network("sat_644", synthetic_smpl_dir("full"))
    images, hw = collate([prepare(read_image(real_images[0]), 1288, 56)])
    select = TwoStage(model.cfg, None, None).select

    def rounded_operands(module, args):
        module.weight.data = to_tf32(module.weight.data)
        return (to_tf32(args[0]),)

    with torch.inference_mode():
        exact = model.forward_scale_map(images, hw).scale_map
        layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        originals = [m.weight.data.clone() for m in layers]
        hooks = [m.register_forward_pre_hook(rounded_operands) for m in layers]
        try:
            tf32 = model.forward_scale_map(images, hw).scale_map
        finally:
            for h in hooks:
                h.remove()
            for m, w in zip(layers, originals):
                m.weight.data = w
        again = model.forward_scale_map(images, hw).scale_map
    assert torch.equal(again, exact)                       # weights restored, fp32 is deterministic
    rel = ((tf32 - exact).abs().max() / exact.abs().max()).item()
    a, b = select(exact, hw), select(tf32, hw)
    counts = lambda s: (int(s.sat_valid.sum()), int(s.ctx_valid.sum()))  # noqa: E731
    print(f"TF32 in stage A: scale map moves {rel:.2e} relative; SAT cells/context {counts(a)} -> {counts(b)}")
    assert rel > 1e-4
    assert counts(a) != counts(b) or not torch.equal(a.sat_idx, b.sat_idx)
