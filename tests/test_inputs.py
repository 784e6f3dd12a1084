"""What `--input` accepts: folder trees, globs, list files, and every awkward or broken file."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sathmr.common.errors import SathmrError
from sathmr.inputs.images import jpeg_is_complete, read_image
from sathmr.inputs.items import iter_images, iter_inputs
from sathmr.inputs.video import VideoSource


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A blurred random BGR image (JPEG-friendly, so re-encodings stay close)."""
    small = np.random.default_rng(seed).integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    path.write_bytes(buf.tobytes())      # not cv2.imwrite: it cannot write non-ASCII paths everywhere
    return path


def write_video(path: Path, frames: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(smooth_image(48, 64, seed=i))
    writer.release()
    return path


def exif_rotated_jpeg(path: Path, upright_bgr: np.ndarray) -> Path:
    """The upright image stored turned 90° anticlockwise, with EXIF orientation 6 ("rotate 90° CW to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(upright_bgr, 1)[:, :, ::-1])
    Image.fromarray(stored).save(path, quality=100, subsampling=0, exif=exif.tobytes())   # 4:4:4: ~1 level of loss
    return path


def names(spec, **kw) -> list[str]:
    return [it.name for it in iter_inputs(spec, **kw)]


# ---------------------------------------------------------------------------------------------- discovery
def test_folders_recurse_sorted_with_names_that_mirror_paths(tmp_path):
    img = smooth_image(40, 60)
    for rel in ("a/x.jpg", "b/x.jpg", "b/c/y.png", "x.jpg", "x.png", "z.png", ".hidden/q.png", ".h.jpg",
                "b/.secret.png"):
        write(tmp_path / rel, img)
    (tmp_path / "notes.txt").write_text("not an input inside a folder")
    write_video(tmp_path / "sub" / "clip.avi", frames=2)
    expected = ["a/x", "b/c/y", "b/x", "sub/clip", "x", "x_png", "z"]
    assert names(tmp_path) == expected
    assert names(tmp_path) == expected                      # deterministic
    items = {it.name: it for it in iter_inputs(tmp_path)}
    assert items["b/x"].source == str(tmp_path / "b" / "x.jpg") and items["b/x"].load().shape == (40, 60, 3)
    assert isinstance(items["sub/clip"], VideoSource) and items["sub/clip"].source == str(tmp_path / "sub" / "clip.avi")
    # tools that take single images (parity, bench) see the frames
    frames = {it.name: it for it in iter_images(tmp_path)}
    assert frames["sub/clip_000001"].source.endswith("clip.avi#frame1")
    assert frames["sub/clip_000001"].load().shape == (48, 64, 3) and "sub/clip" not in frames
    # the output folder is never read back as input, even inside the input tree
    write(tmp_path / "out" / "thresh_0.3" / "a" / "x.png", img)
    assert names(tmp_path, exclude=[tmp_path / "out"]) == expected


def test_symlink_loops_and_unreadable_folders_are_reported_and_skipped(tmp_path, monkeypatch):
    root = tmp_path / "in"
    write(root / "d" / "img.png", smooth_image(20, 20))
    write(tmp_path / "elsewhere" / "far.png", smooth_image(20, 20))
    (root / "d" / "loop").symlink_to(root, target_is_directory=True)         # d/loop -> its own ancestor
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # followed
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    locked = root / "locked"
    write(locked / "secret.png", smooth_image(20, 20))
    if os.geteuid() == 0:   # root reads any folder: make this one fail the way a permission error does
        real_scandir = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)
        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        items = list(iter_inputs(root))
    finally:
        locked.chmod(0o755)
    good = [it.name for it in items if not it.error]
    bad = {it.name: it.error for it in items if it.error}
    assert good == ["d/img", "linked/far"]
    assert "symlink loop" in bad["d/loop"] and "cannot read folder" in bad["locked"] and "Permission denied" in bad["locked"]
    assert "broken link" in bad["dangling.jpg"]
    with pytest.raises(SathmrError, match="symlink loop"):
        next(it for it in items if it.name == "d/loop").load()


def test_glob_patterns_and_list_files(tmp_path):
    img = smooth_image(30, 30)
    for rel in ("p/a/x.jpg", "p/b/x.jpg", "p/b/y.png", "p/c.jpg"):
        write(tmp_path / rel, img)
    assert names(str(tmp_path / "p" / "**" / "*.jpg")) == ["a/x", "b/x", "c"]
    assert names(str(tmp_path / "p" / "b" / "*")) == ["x", "y"]
    with pytest.raises(SathmrError, match="no files match"):
        names(str(tmp_path / "p" / "*.webp"))
    lst = tmp_path / "p" / "todo.lst"
    lst.write_text("# photos to redo\nb/y.png\n\na/x.jpg\nmissing.jpg\n" + str(tmp_path / "p" / "b" / "x.jpg") + "\n")
    items = list(iter_inputs(lst))
    assert [it.name for it in items if not it.error] == ["b/y", "a/x", "b/x"]
    assert [it.error for it in items if it.error] == [f"listed in {lst} but not found: {tmp_path / 'p' / 'missing.jpg'}"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(SathmrError, match="names no paths"):
        names(tmp_path / "empty.txt")
    with pytest.raises(SathmrError, match="input not found"):
        names(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- decoding
def test_awkward_images_decode_as_cv2_imread_does(tmp_path):
    up = smooth_image(90, 160)
    cases = {}
    cases["exif"] = exif_rotated_jpeg(tmp_path / "exif.jpg", up)
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    cases["16bit"] = write(tmp_path / "deep.png", deep)
    cases["gray"] = write(tmp_path / "gray.png", up[:, :, 0])
    rgba = np.dstack([up, np.where(np.arange(160) < 80, 0, 255).astype(np.uint8)[None].repeat(90, 0)])
    cases["rgba"] = write(tmp_path / "rgba.png", rgba)
    Image.fromarray(up[:, :, ::-1]).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    cases["cmyk"] = tmp_path / "cmyk.jpg"
    cases["1x1"] = write(tmp_path / "one.png", up[:1, :1])
    cases["3000x20"] = write(tmp_path / "wide.png", smooth_image(20, 3000))
    cases["odd path"] = write(tmp_path / "my photos" / "été 写真.png", up)
    out = {k: read_image(p) for k, p in cases.items()}
    for k, p in cases.items():
        assert out[k].dtype == np.uint8 and out[k].ndim == 3 and out[k].shape[2] == 3, k
        if p.name.isascii() and "my photos" not in str(p):
            np.testing.assert_array_equal(out[k], cv2.imread(str(p)), err_msg=k)   # the original's reader
    assert out["exif"].shape == (90, 160, 3) and np.abs(out["exif"].astype(int) - up).mean() < 2.0   # upright
    np.testing.assert_array_equal(out["16bit"], (deep >> 8).astype(np.uint8))
    assert (out["gray"] == up[:, :, :1]).all()
    np.testing.assert_array_equal(out["rgba"], up)           # alpha dropped, colour under it kept
    assert np.abs(out["cmyk"].astype(int) - up).mean() < 3.0
    assert out["1x1"].shape == (1, 1, 3) and out["3000x20"].shape == (20, 3000, 3)
    np.testing.assert_array_equal(out["odd path"], up)


def test_broken_files_are_refused_with_one_line(tmp_path):
    img = smooth_image(200, 300)
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture\n")
    (tmp_path / "cut.png").write_bytes(cv2.imencode(".png", img)[1].tobytes()[:3000])
    expect = {"empty.jpg": "empty file", "text.jpg": "cannot decode", "cut.png": "cannot decode"}
    for cut in (2, 100, len(jpeg) // 2):
        (tmp_path / f"cut{cut}.jpg").write_bytes(jpeg[:-cut])
        expect[f"cut{cut}.jpg"] = "truncated JPEG"
    for name, msg in expect.items():
        with pytest.raises(SathmrError, match=msg) as exc:
            read_image(tmp_path / name)
        assert "\n" not in str(exc.value) and name in str(exc.value)
    # size limit: read from the header, so the 20000 x 20000 image is refused without decoding 1.2 GB
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")
    with pytest.raises(SathmrError, match=r"20000x20000 = 400,000,000 pixels is over the limit of 250,000,000 \(--max-pixels\)"):
        read_image(tmp_path / "huge.png")
    with pytest.raises(SathmrError, match="over the limit of 50,000"):
        read_image(write(tmp_path / "ok.png", img), max_pixels=50_000)
    assert read_image(tmp_path / "ok.png", max_pixels=60_000).shape == (200, 300, 3)


def test_jpeg_completeness_check():
    img = smooth_image(120, 200)
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]):
        data = cv2.imencode(".jpg", img, params)[1].tobytes()
        assert jpeg_is_complete(data)
        assert jpeg_is_complete(data + b"\x00\x00\x00\x18ftypmp42\xff\xda\xff")   # motion photo: video after EOI
        assert not any(jpeg_is_complete(data[:k]) for k in (len(data) - 2, len(data) - 1, len(data) // 3, 20))


def test_header_size_is_thread_safe_for_images_over_pils_own_limit():
    """Issue #25 benchmark: concurrent uploads over PIL's 179 MP bomb limit raised DecompressionBombError
    (a 500 in serve) when one thread restored PIL's limit while another was reading its header."""
    import io
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from sathmr.inputs.images import header_size
    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, "PNG")
    data = buf.getvalue()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                      # threads interleave inside PIL's open, as under load
    try:
        with ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(lambda _: header_size(data), range(1200)))
    finally:
        sys.setswitchinterval(switch)
    assert sizes == [(15000, 15000)] * 1200
    assert Image.MAX_IMAGE_PIXELS is not None        # PIL's own limit is back for everyone else
