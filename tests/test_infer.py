"""`sathmr infer` end to end: outputs, raw outputs, resume, bad inputs, full-size forward on a real image."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sathmr.cli import main
from sathmr.model import build_model
from sathmr.model.checkpoint import save_checkpoint
from sathmr.model.config import get_config

from helpers import random_official_state_dict


@pytest.fixture(scope="module")
def smpl_tiny(tmp_path_factory):
    from sathmr.body import generate_synthetic
    d = tmp_path_factory.mktemp("smpl_tiny")
    generate_synthetic(d, size="tiny")
    return d


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, smpl_tiny):
    """A tiny model whose conf head says 'person' for every query, so every output path is exercised."""
    from sathmr.body import load_mean_params
    mp, ms = load_mean_params(smpl_tiny)
    torch.manual_seed(0)
    m = build_model(get_config("tiny"), torch.from_numpy(mp), torch.from_numpy(ms))
    with torch.no_grad():
        m.conf_head.bias.fill_(3.0)
        m.cam_head.layers[-1].bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    return save_checkpoint(m, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture()
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    import cv2
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "landscape.jpg"), rng.integers(0, 255, (300, 500, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "portrait.png"), rng.integers(0, 255, (420, 200, 3), dtype=np.uint8))
    (d / "broken.jpg").write_bytes(b"not an image")
    return d


def run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res


def test_infer_writes_everything_and_resumes(tmp_path, image_dir, tiny_ckpt, smpl_tiny):
    out = tmp_path / "out"
    args = ["infer", "-i", str(image_dir), "-o", str(out), "--checkpoint", str(tiny_ckpt), "--smpl-dir", str(smpl_tiny),
            "-t", "0.3", "-t", "0.99", "--save-mesh", "glb", "--save-raw", "--batch-size", "2"]
    res = run(args)
    assert res.exit_code == 0, res.output
    assert "processed 2 image(s)" in res.output and "failed 1" in res.output
    assert "broken.jpg" in res.output
    data = json.loads((out / "thresh_0.3" / "landscape.json").read_text())
    q = get_config("tiny").num_queries
    assert data["num_people"] == q and len(data["people"]) == q
    person = data["people"][0]
    assert len(person["smpl"]["body_pose"]) == 69 and len(person["joints2d"]) == 45
    x0, y0, x1, y1 = person["box_xyxy"]
    assert x1 > x0 and y1 > y0
    assert json.loads((out / "thresh_0.99" / "landscape.json").read_text())["num_people"] < q
    raw = np.load(out / "raw" / "portrait.npz")
    assert raw["pred_verts"].shape[0] == q and raw["pred_confs"].shape == (q, 1)
    assert raw["pred_intrinsics"].shape == (1, 3, 3)
    assert raw["input"].shape[0] == 3 and raw["input"].shape[1] % 56 == 0
    assert tuple(raw["img_size"]) == (448, 213)
    assert (out / "thresh_0.3" / "portrait.png").stat().st_size > 0
    assert (out / "thresh_0.3" / "portrait.glb").read_bytes()[:4] == b"glTF"
    # resume: nothing is redone, and no temporary files are left behind
    mtime = (out / "thresh_0.3" / "landscape.json").stat().st_mtime_ns
    res = run(args)
    assert "skipped 2 already done" in res.output
    assert (out / "thresh_0.3" / "landscape.json").stat().st_mtime_ns == mtime
    assert not list(out.rglob("*.tmp"))
    (out / "thresh_0.99" / "portrait.json").unlink()
    res = run(args)
    assert "processed 1 image(s), skipped 1" in res.output


def test_joints2d_map_back_to_original_pixels(tmp_path, image_dir, tiny_ckpt, smpl_tiny):
    out = tmp_path / "o"
    run(["infer", "-i", str(image_dir / "landscape.jpg"), "-o", str(out), "--checkpoint", str(tiny_ckpt),
         "--smpl-dir", str(smpl_tiny), "--save-raw", "--no-overlay"])
    data = json.loads((out / "thresh_0.3" / "landscape.json").read_text())
    raw = np.load(out / "raw" / "landscape.npz")
    r = data["resize_rate"]
    assert r == pytest.approx(448 / 500)
    p = data["people"][0]
    np.testing.assert_allclose(np.array(p["joints2d"]) * r, raw["pred_j2ds"][p["query"]], rtol=1e-4, atol=1e-2)


def test_bad_inputs_fail_with_one_line(tmp_path, tiny_ckpt, smpl_tiny):
    res = CliRunner().invoke(main, ["infer", "-i", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "o"),
                                    "--checkpoint", str(tiny_ckpt), "--smpl-dir", str(smpl_tiny)])
    assert res.exit_code == 2 and "error: input not found" in res.output
    res = CliRunner().invoke(main, ["infer", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--checkpoint",
                                    str(tmp_path / "nope.pth"), "--smpl-dir", str(smpl_tiny)])
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    empty = tmp_path / "empty_smpl"
    empty.mkdir()
    res = CliRunner().invoke(main, ["infer", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--checkpoint",
                                    str(tiny_ckpt), "--smpl-dir", str(empty)])
    assert res.exit_code == 2 and "SMPL" in res.output and "\n" == res.output[-1] and res.output.count("\n") == 1


def test_preprocess_shapes_portrait_and_landscape():
    from sathmr.runtime.preprocess import prepare
    land = prepare(np.zeros((1080, 1920, 3), np.uint8), 1288, 56)
    assert land.img_hw == (724, 1288) and tuple(land.tensor.shape) == (3, 728, 1288)
    port = prepare(np.zeros((1920, 1080, 3), np.uint8), 1288, 56)
    assert port.img_hw == (1288, 724) and tuple(port.tensor.shape) == (3, 1288, 728)
    # padded pixels are black before normalisation
    assert torch.allclose(land.tensor[:, 725:, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])[:, None], atol=1e-4)


@pytest.mark.slow
def test_full_size_official_layout_on_real_image(tmp_path, real_images):
    """sat_644 with random weights in the official layout + the synthetic full-size body model."""
    from sathmr.body import generate_synthetic
    smpl = tmp_path / "smpl"
    generate_synthetic(smpl, size="full")
    ckpt = tmp_path / "sat_644.pth"
    sd = random_official_state_dict(get_config("sat_644"), seed=0)
    with torch.no_grad():   # spread the scale map over the thresholds so that all three levels occur
        sd["scale_head.layers.3.weight"].mul_(40)
    torch.save(sd, ckpt)
    del sd
    out = tmp_path / "out"
    res = run(["infer", "-i", str(real_images[0]), "-o", str(out), "--checkpoint", str(ckpt),
               "--smpl-dir", str(smpl), "--save-raw", "-t", "0.0", "--no-overlay"])
    assert res.exit_code == 0, res.output
    raw = np.load(out / "raw" / "sathmr_demo_img1.npz")
    assert raw["pred_verts"].shape == (50, 6890, 3) and raw["pred_j3ds"].shape == (50, 45, 3)
    assert tuple(raw["input"].shape) == (3, 896, 1288)     # 1500x2250 → 858x1288, padded to 896
    data = json.loads((out / "thresh_0" / "sathmr_demo_img1.json").read_text())
    t = data["tokens"]
    n1 = (896 // 28) * (1288 // 28)
    assert t["level0"] % 4 == 0 and t["level0"] // 4 + t["level1"] + 4 * t["level2"] == n1
    assert np.isfinite(raw["pred_verts"]).all()


def test_a_video_is_one_unit_with_a_tracks_file_and_optional_frame_files(tmp_path, tiny_ckpt, smpl_tiny):
    import cv2
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    rng = np.random.default_rng(1)
    for _ in range(3):
        writer.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "o"
    base = ["infer", "-i", str(video), "-o", str(out), "--checkpoint", str(tiny_ckpt), "--smpl-dir", str(smpl_tiny),
            "--no-overlay"]
    res = run(base)
    assert res.exit_code == 0 and "processed 0 image(s) and 1 video(s) (3 frames)" in res.output
    assert sorted(p.name for p in (out / "thresh_0.3").iterdir()) == ["clip_tracks.json"]
    res = run(base + ["--per-frame", "--overwrite"])
    assert sorted(p.name for p in (out / "thresh_0.3").iterdir()) == (
        [f"clip_{i:06d}.json" for i in range(3)] + ["clip_tracks.json"])


def test_demo_runs_on_the_embedded_default(tmp_path, monkeypatch):
    """The README's first command: embedded model + synthetic body model, inference, overlays, metrics."""
    monkeypatch.setenv("SATHMR_WEIGHTS", str(tmp_path / "no_weights"))
    monkeypatch.setenv("SATHMR_CACHE", str(tmp_path / "cache"))
    res = run(["demo", "-o", str(tmp_path / "demo"), "--scenes", "2"])
    assert res.exit_code == 0, res.output
    assert "embedded default" in res.output and "not a model of real people" in res.output
    for key in ("f1", "precision", "recall", "mpjpe", "mve"):
        assert any(line.startswith(key + " ") for line in res.output.splitlines()), key
    assert len(list((tmp_path / "demo" / "synthetic" / "thresh_0.3").glob("*.png"))) == 2
