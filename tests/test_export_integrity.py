"""Hostile and inconsistent exports (issue #25): external data outside the export folder, metadata that
disagrees with the graphs, metadata values of the wrong type. Each is refused with one line when the
export is read, before any runtime opens a graph; the hostile files are made here."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, external_data_helper

from sathmr.backends import OrtBackend
from sathmr.backends.integrity import outside_reason
from sathmr.backends.meta import read_artifact
from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.export.trt import build_engines

TENSOR = "model.encoder_pos_embeds"
SENTINEL = np.full(8, 7.0, np.float32)


def external_copy(src, dst, location: str):
    """A copy of the export whose scale-map position table lives in a side file named ``location``."""
    shutil.copytree(src, dst)
    path = dst / "scale_map.onnx"
    proto = onnx.load(str(path))
    external_data_helper.convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="w.bin",
                                                        size_threshold=1 << 30)   # none yet: set by hand below
    t = next(t for t in proto.graph.initializer if t.name == TENSOR)
    external_data_helper.set_external_data(t, location="w.bin")
    t.data_location = TensorProto.EXTERNAL
    (dst / "w.bin").write_bytes(t.raw_data)
    t.ClearField("raw_data")
    for e in t.external_data:
        if e.key == "location":
            e.value = location
    onnx.save(proto, str(path))
    return dst


@pytest.fixture
def no_runtime(monkeypatch):
    """Fail the test if ONNX Runtime is asked to open any graph."""
    ort = pytest.importorskip("onnxruntime")
    opened = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: opened.append(a) or pytest.fail(f"ORT opened {a}"))
    return opened


def test_external_data_inside_the_folder_is_read(tiny_export, tmp_path):
    d = external_copy(tiny_export.path, tmp_path / "inside", "w.bin")
    assert read_artifact(d).meta == tiny_export.meta
    x = np.zeros((1, 3, 56, 112), np.float32)
    hw = np.array([[56, 112]], np.int64)
    a = OrtBackend.from_file(d).sessions["scale_map"].run(None, {"images": x, "img_hw": hw})
    b = OrtBackend.from_file(tiny_export.path).sessions["scale_map"].run(None, {"images": x, "img_hw": hw})
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_external_data_outside_the_folder_is_refused_before_any_runtime(tiny_export, tmp_path, no_runtime):
    secret = tmp_path / "secret.bin"
    SENTINEL.tofile(secret)
    (tmp_path / "elsewhere").mkdir()
    cases = {"absolute": str(secret), "dotdot": "../secret.bin", "deep": "../../../../../../../" + str(secret)[1:]}
    for name, location in cases.items():
        d = external_copy(tiny_export.path, tmp_path / name, location)
        with pytest.raises(SathmrError, match=f"scale_map.onnx: tensor '{TENSOR}' keeps its data in .*(absolute|'..')"):
            OrtBackend.from_file(d)
    d = external_copy(tiny_export.path, tmp_path / "symlink", "link.bin")
    os.symlink(secret, d / "link.bin")
    with pytest.raises(SathmrError, match="a symlink"):
        OrtBackend.from_file(d)
    d = external_copy(tiny_export.path, tmp_path / "linked_dir", "sub/secret.bin")
    os.symlink(tmp_path, d / "sub")
    with pytest.raises(SathmrError, match="a symlink"):
        read_artifact(d)
    with pytest.raises(SathmrError, match="keeps its data"):      # TensorRT's parser never sees it either
        build_engines(d, tmp_path / "engines")
    r = CliRunner().invoke(main, ["infer", "--model", str(tmp_path / "dotdot"), "-i", str(tmp_path / "x.jpg"),
                                  "-o", str(tmp_path / "out")])
    assert r.exit_code != 0, r.output
    assert "error:" in r.output and "keeps its data in '../secret.bin'" in r.output and "Traceback" not in r.output
    assert not no_runtime


def test_outside_reason():
    from pathlib import Path
    folder = Path("/nonexistent/export")
    assert outside_reason("w.bin", folder) is None and outside_reason("sub/w.bin", folder) is None
    assert outside_reason("/etc/passwd", folder) == "an absolute path"
    assert outside_reason("a/../../b", folder) == "a path with '..'"
    assert outside_reason("..\\..\\b", folder) == "a path with '..'"
    assert outside_reason("", folder) and outside_reason("a\x00b", folder)


def edit_props(src, dst, **props):
    """A copy of the export with metadata entries replaced consistently in both graphs; a dict value
    updates keys of the JSON config."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.onnx"):
        proto = onnx.load(str(f))
        for p in proto.metadata_props:
            key = p.key.removeprefix("sathmr.")
            if key in props:
                p.value = json.dumps({**json.loads(p.value), **props[key]}) if isinstance(props[key], dict) else props[key]
        onnx.save(proto, str(f))
    return dst


def test_metadata_that_disagrees_with_the_graphs_is_refused_at_load(tiny_export, tmp_path, no_runtime):
    src = tiny_export.path
    cases = [({"config": {"input_size": 672}}, "position table is \\[32, 32, 64\\].*input_size 672"),
             ({"config": {"embed_dim": 128}}, "position table is \\[32, 32, 64\\].*\\[32, 32, 128\\]"),
             ({"batch": "2"}, "input 'images' has shape \\['batch', 3, '56\\*h56', '56\\*w56'\\].*implies \\[2, 3"),
             ({"batch": "-5"}, "batch = -5 is not a positive integer"),
             ({"max_batch": '"x"'}, "max_batch = 'x' is not a positive integer"),
             ({"max_batch": "true"}, "max_batch = True"),
             ({"thresholds": '["high"]'}, "thresholds"),
             ({"batch": "1.5"}, "batch = 1.5"),
             ({"canvas_hw": "[448, 448, 3]"}, "canvas_hw = \\[448, 448, 3\\] is not \\[height, width\\]")]
    for i, (props, match) in enumerate(cases):
        d = edit_props(src, tmp_path / f"e{i}", **props)
        with pytest.raises(SathmrError, match=match):
            OrtBackend.from_file(d)
    assert not no_runtime
    r = CliRunner().invoke(main, ["infer", "--model", str(tmp_path / "e0"), "-i", str(tmp_path), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0 and "error:" in r.output and "position table" in r.output and "Traceback" not in r.output


def test_a_side_file_swapped_for_a_symlink_after_a_first_read_is_refused(tiny_export, tmp_path):
    d = external_copy(tiny_export.path, tmp_path / "swap", "w.bin")
    read_artifact(d)                                            # fine, and its header is cached
    secret = tmp_path / "secret.bin"
    (d / "w.bin").rename(secret)
    os.symlink(secret, d / "w.bin")
    with pytest.raises(SathmrError, match="'w.bin', a symlink"):
        read_artifact(d)
