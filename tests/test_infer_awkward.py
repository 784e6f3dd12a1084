"""`sathmr infer` (embedded default) on awkward inputs: nothing crashes the run, every bad file is listed."""

import json

import cv2
import numpy as np
from click.testing import CliRunner
from PIL import Image

from sathmr.cli import main

from helpers import embedded_config
from test_inputs import exif_rotated_jpeg, smooth_image, write


def infer(*args):
    return CliRunner().invoke(main, ["infer", *map(str, args)], catch_exceptions=False)


def test_every_awkward_input_is_processed_or_listed(tmp_path, embedded):
    up = smooth_image(90, 160)
    src = tmp_path / "my photos" / "ünïcødé"
    src.mkdir(parents=True)
    good = {
        "exif": exif_rotated_jpeg(src.parent / "exif.jpg", up),
        "16bit": write(src / "deep.png", (smooth_image(30, 40).astype(np.uint16) * 257)),
        "gray": write(src / "gray.png", up[:, :, 0]),
        "rgba": write(src / "rgba.png", np.dstack([up, np.full((90, 160), 128, np.uint8)])),
        "1x1": write(src / "one.png", up[:1, :1]),
        "3000x20": write(src / "wide.png", smooth_image(20, 3000)),
        "odd name": write(src / "a photo – été.jpg", up),
    }
    Image.fromarray(up[:, :, ::-1]).convert("CMYK").save(src / "cmyk.jpg")
    good["cmyk"] = src / "cmyk.jpg"
    bad = {"empty.jpg": b"", "text.jpg": b"hello\n", "cut.jpg": cv2.imencode(".jpg", up)[1].tobytes()[:-40]}
    for name, data in bad.items():
        (src / name).write_bytes(data)
    Image.new("1", (20000, 20000)).save(src / "huge.png")
    out = tmp_path / "out dir"
    res = infer("-i", tmp_path / "my photos", "-o", out, "--no-overlay")
    assert res.exit_code == 0, res.output
    assert f"processed {len(good)} image(s)" in res.output and "failed 4" in res.output
    failed = [line for line in res.output.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 4
    for name, why in (("empty.jpg", "empty file"), ("text.jpg", "cannot decode"), ("cut.jpg", "truncated JPEG"),
                      ("huge.png", "--max-pixels")):
        assert any(name in line and why in line for line in failed), (name, failed)
    for path in good.values():
        rel = path.relative_to(tmp_path / "my photos").with_suffix(".json")
        data = json.loads((out / "thresh_0.3" / rel).read_text())
        assert data["image"] == str(path)
    assert json.loads((out / "thresh_0.3" / "exif.json").read_text())["image_hw"] == [90, 160]   # upright
    assert json.loads((out / "thresh_0.3" / "ünïcødé" / "wide.json").read_text())["resized_hw"] == [2, embedded_config().input_size]


def test_exif_rotated_photo_gives_the_same_people(tmp_path, embedded):
    """A synthetic scene with mannequins, stored upright and stored turned with an EXIF orientation tag."""
    from sathmr.train.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "scene", 1, seed=5, size=448, split="val", max_people=4)
    scene = next((tmp_path / "scene" / "bedlam" / "validation").glob("*.png"))
    img = cv2.imread(str(scene))
    (tmp_path / "in").mkdir()
    Image.fromarray(img[:, :, ::-1]).save(tmp_path / "in" / "upright.jpg", quality=100, subsampling=0)
    exif_rotated_jpeg(tmp_path / "in" / "turned.jpg", img)
    out = tmp_path / "out"
    assert infer("-i", tmp_path / "in", "-o", out, "--no-overlay", "-t", "0.2").exit_code == 0
    upright, turned = (json.loads((out / "thresh_0.2" / f"{n}.json").read_text()) for n in ("upright", "turned"))
    assert upright["image_hw"] == turned["image_hw"] == list(img.shape[:2])
    a = [p for p in upright["people"] if p["score"] > 0.3]      # the embedded default's detections (τ 0.3)
    assert len(a) >= 3
    for p in a:     # each is found in the turned file too, in the same place, with the same score
        assert min(np.abs(np.subtract(p["box_xyxy"], q["box_xyxy"])).max() + 100 * abs(p["score"] - q["score"])
                   for q in turned["people"]) < 4.0


def test_self_referential_symlinks_are_listed_and_the_run_goes_on(tmp_path, embedded):
    """Issue #25, row 4: `self -> self` (ELOOP on stat) in an input folder used to abort the run."""
    src = tmp_path / "in"
    write(src / "a.png", smooth_image(60, 80))
    write(src / "z" / "b.png", smooth_image(60, 80))
    (src / "self").symlink_to("self")
    (src / "loop.jpg").symlink_to("loop.jpg")
    res = infer("-i", src, "-o", tmp_path / "out", "--no-overlay")
    assert res.exit_code == 0, res.output
    assert "processed 2 image(s)" in res.output and "Traceback" not in res.output
    failed = [line for line in res.output.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 2 and all("Too many levels of symbolic links" in line for line in failed), failed
    assert (tmp_path / "out" / "thresh_0.3" / "z" / "b.json").is_file()
