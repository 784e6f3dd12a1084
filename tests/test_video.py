"""`sathmr infer` on videos and streams, end to end with the embedded default model.

The embedded model is weak (many low-confidence detections), so these tests check structure: frame
counts, valid and consistent files, ids that stay stable while the camera pans over a still scene.
Tracking and smoothing quality are tested on synthetic detections in test_video_tracking.py.
"""

import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sathmr.cli import main
from sathmr.inputs.items import iter_inputs
from sathmr.inputs.video import FrameReader, VideoSource, source_from_spec
from sathmr.train.data.pipeline import BodyModels
from sathmr.train.data.synthetic import make_scene

REPO = Path(__file__).resolve().parents[1]
FPS = 10


def pan_frames(smpl_dir, n: int, step: int = 2) -> list[np.ndarray]:
    """A rendered mannequin scene seen by a camera panning ``step`` pixels per frame."""
    scene = make_scene(np.random.default_rng([7, 3]), BodyModels(smpl_dir), 448, 2)
    img = scene.image
    w = img.shape[1] - step * n
    return [np.ascontiguousarray(img[:, step * i: step * i + w]) for i in range(n)]


def write_avi(path: Path, frames) -> Path:
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
    for f in frames:
        wr.write(f)
    wr.release()
    return path


def corrupt_frame(path: Path, index: int) -> None:
    """Overwrite the start of one MJPEG frame (its JPEG SOI marker onwards) with junk."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[index]: starts[index] + 300] = b"\x55" * 300
    path.write_bytes(bytes(data))


def frame_count(mp4: Path) -> tuple[int, float]:
    cap = cv2.VideoCapture(str(mp4))
    n = 0
    while cap.read()[0]:
        n += 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return n, fps


def run(args):
    return CliRunner().invoke(main, ["infer", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, smpl_tiny):
    return write_avi(tmp_path_factory.mktemp("clip") / "clip.avi", pan_frames(smpl_tiny, 12))


def check_tracks(tracks: dict, num_frames: int) -> None:
    """The tracks file's schema, and that every per-frame list has one entry per frame of its track."""
    assert tracks["complete"] is True and tracks["num_frames"] == num_frames and tracks["fps"] == FPS
    ids = [t["id"] for t in tracks["tracks"]]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and i > 0 for i in ids)
    for t in tracks["tracks"]:
        n = len(t["frames"])
        assert t["frames"] == sorted(set(t["frames"])) and all(0 <= f < num_frames for f in t["frames"])
        assert len(t["boxes"]) == len(t["scores"]) == len(t["joints3d"]) == n
        smpl = t["smpl"]
        assert [len(smpl[k]) for k in ("global_orient", "body_pose", "betas", "transl")] == [n] * 4
        assert len(smpl["body_pose"][0]) == 69 and len(smpl["betas"][0]) == 10 and np.shape(t["joints3d"]) == (n, 45, 3)


def test_clip_gives_an_overlay_video_and_stable_tracks(tmp_path, clip, embedded):
    out = tmp_path / "out"
    res = run(["-i", str(clip), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 video(s) (12 frames)" in res.output and "network busy" in res.output
    assert frame_count(out / "thresh_0.3" / "clip.mp4") == (12, FPS)
    tracks = json.loads((out / "thresh_0.3" / "clip_tracks.json").read_text())
    check_tracks(tracks, 12)
    assert tracks["smoothing"] is not None and tracks["video"] == "clip.mp4"
    # a still scene, panned: someone is tracked from the first frame to the last. How many tracks the
    # embedded model's detections make is the model's, not the tracker's (tests/test_video_tracking.py
    # checks identities on detection streams with known ground truth).
    spans = [len(t["frames"]) for t in tracks["tracks"]]
    assert spans and max(spans) == 12
    assert sorted(p.name for p in (out / "thresh_0.3").iterdir()) == ["clip.mp4", "clip_tracks.json"]
    again = run(["-i", str(clip), "-o", str(out)])
    assert "skipped 1 already done" in again.output


def test_per_frame_files_limits_and_no_smoothing(tmp_path, clip, embedded):
    out = tmp_path / "out"
    res = run(["-i", str(clip), "-o", str(out), "--per-frame", "--duration", "0.3", "--no-smooth", "-t", "0.3",
               "-t", "0.5", "--save-mesh", "glb"])
    assert res.exit_code == 0, res.output
    t03 = out / "thresh_0.3"
    assert sorted(p.name for p in t03.glob("clip_0*.json")) == [f"clip_{i:06d}.json" for i in range(3)]
    assert len(list(t03.glob("clip_0*.png"))) == 3
    tracks = json.loads((t03 / "clip_tracks.json").read_text())
    check_tracks(tracks, 3)
    assert tracks["smoothing"] is None
    frame = json.loads((t03 / "clip_000002.json").read_text())
    in_tracks = {t["id"] for t in tracks["tracks"] if 2 in t["frames"]}
    assert {p["track_id"] for p in frame["people"]} == in_tracks
    glb = (t03 / "clip_000002.glb").read_bytes()       # per-frame meshes, named by track
    assert all(f"_track_{i}_".encode() in glb for i in in_tracks)
    assert (out / "thresh_0.5" / "clip_tracks.json").is_file()
    res = run(["-i", str(clip), "-o", str(tmp_path / "o2"), "--max-frames", "5", "--no-overlay"])
    assert json.loads((tmp_path / "o2" / "thresh_0.3" / "clip_tracks.json").read_text())["num_frames"] == 5
    assert not (tmp_path / "o2" / "thresh_0.3" / "clip.mp4").exists()


def test_a_corrupt_frame_is_reported_skipped_and_the_video_keeps_its_length(tmp_path, smpl_tiny, embedded):
    video = write_avi(tmp_path / "bad.avi", pan_frames(smpl_tiny, 9))
    corrupt_frame(video, 4)
    out = tmp_path / "out"
    res = run(["-i", str(video), "-o", str(out), "--no-smooth"])
    assert res.exit_code == 0, res.output
    assert "frame 4" in res.output and "cannot be decoded" in res.output and "failed 1" in res.output
    assert frame_count(out / "thresh_0.3" / "bad.mp4")[0] == 9
    tracks = json.loads((out / "thresh_0.3" / "bad_tracks.json").read_text())
    assert tracks["frames_skipped"] == [4] and tracks["num_frames"] == 9
    assert all(4 not in t["frames"] for t in tracks["tracks"])
    assert any({3, 5} <= set(t["frames"]) for t in tracks["tracks"])   # tracks carry on over the gap


@pytest.fixture()
def http_server(clip):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_stream_over_http_is_read_and_ends_cleanly_and_udp_messages_arrive(tmp_path, http_server, embedded):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    out = tmp_path / "out"
    res = run(["-i", f"{http_server}/clip.avi", "-o", str(out), "--max-frames", "4", "--no-overlay",
               "--stream", f"udp://127.0.0.1:{rx.getsockname()[1]}"])
    assert res.exit_code == 0, res.output
    tracks = json.loads((out / "thresh_0.3" / "clip_tracks.json").read_text())
    check_tracks(tracks, 4)
    assert tracks["source"].startswith("http://127.0.0.1")
    messages = [json.loads(rx.recv(65536)) for _ in range(4)]
    rx.close()
    assert [m["frame"] for m in messages] == [0, 1, 2, 3]
    for m in messages:
        assert m["source"] == "clip" and m["threshold"] == 0.3 and m["parts"] == 1 and m["fps"] == FPS
        assert m["time"] == pytest.approx(m["frame"] / FPS)
        expected = {t["id"] for t in tracks["tracks"] if m["frame"] in t["frames"]}
        assert {p["id"] for p in m["people"]} == expected
        for p in m["people"]:
            assert len(p["smpl"]["body_pose"]) == 69 and np.shape(p["joints3d"]) == (45, 3)
            assert len(p["smpl"]["global_orient"]) == 3 and len(p["box_xyxy"]) == 4
    # the stream is not overwritten on a second capture: a new name
    res = run(["-i", f"{http_server}/clip.avi", "-o", str(out), "--max-frames", "2", "--no-overlay"])
    assert (out / "thresh_0.3" / "clip_2_tracks.json").is_file()


def test_sources_that_do_not_open_fail_in_one_line(tmp_path, embedded):
    res = run(["-i", "http://127.0.0.1:9/none.avi", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "cannot open stream: http://127.0.0.1:9/none.avi" in res.output
    if not any(Path("/dev").glob("video*")):
        res = run(["-i", "0", "-o", str(tmp_path / "o")])
        assert res.exit_code == 1 and "cannot open webcam: 0" in res.output
    res = run(["-i", "x.avi", "-o", str(tmp_path / "o"), "--stream", "tcp://1.2.3.4:5"])
    assert res.exit_code == 2 and "udp://HOST:PORT" in res.output


def test_inputs_name_videos_webcams_and_streams_as_whole_units(tmp_path, clip):
    cam = source_from_spec("0")
    assert (cam.kind, cam.name, cam.live) == ("webcam", "webcam0", True)
    rtsp = source_from_spec("rtsp://cam.local:554/live/main")
    assert (rtsp.kind, rtsp.name, rtsp.live) == ("stream", "main", True)
    http = source_from_spec("http://host/videos/walk.mp4?token=1")
    assert (http.kind, http.name, http.live) == ("stream", "walk", False)
    assert source_from_spec(str(clip)) is None
    (tmp_path / "0").mkdir()
    os.chdir(tmp_path)            # a folder called 0 stays a folder
    try:
        assert source_from_spec("0") is None
    finally:
        os.chdir(REPO)
    units = list(iter_inputs(clip.parent))
    assert [(type(u).__name__, u.name) for u in units] == [("VideoSource", "clip")]


def test_a_live_source_drops_the_oldest_frames_when_the_network_falls_behind(clip):
    src = VideoSource("clip", str(clip), "file", live=True)
    with FrameReader(src) as reader:
        frames = reader.frames()
        next(frames)                         # the network takes one frame, then falls behind
        while reader.read_count < 12:
            time.sleep(0.01)
        rest = list(frames)
    assert [f.index for f in rest] == [10, 11] and reader.dropped == 12 - 1 - 2


def test_ctrl_c_ends_cleanly_with_a_playable_video(tmp_path, smpl_tiny):
    """A real process and a real SIGINT: the video so far is playable and the tracks file valid."""
    frames = pan_frames(smpl_tiny, 40, step=1)
    video = write_avi(tmp_path / "long.avi", frames + frames[::-1] + frames)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SATHMR_WEIGHTS": str(tmp_path / "none"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sathmr", "infer", "-i", str(video), "-o", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tdir = out / "thresh_0.3"
    deadline = time.monotonic() + 300
    while not (tdir.is_dir() and list(tdir.glob(".long.*.tmp.mp4"))) and proc.poll() is None:
        assert time.monotonic() < deadline, "no frame written"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert "stopping" in output and "interrupted" in output
    tracks = json.loads((tdir / "long_tracks.json").read_text())
    assert tracks["complete"] is False and 0 < tracks["num_frames"] < 120
    assert frame_count(tdir / "long.mp4")[0] == tracks["num_frames"]
    assert not list(tdir.glob(".*.tmp*"))


def mp4(path: Path, frames, fps: float = FPS, zero_timescale: bool = False) -> Path:
    """An mp4 (mp4v) at ``fps``; ``zero_timescale``: its media header (mdhd) says timescale 0, which
    OpenCV reads as 0.00098 fps (and FFmpeg decodes only part of)."""
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        wr.write(f)
    wr.release()
    if zero_timescale:
        data = bytearray(path.read_bytes())
        i = data.find(b"mdhd")
        at = i + (16 if data[i + 4] == 0 else 24)          # version 0: 32-bit times; 1: 64-bit
        data[at:at + 4] = bytes(4)
        path.write_bytes(bytes(data))
    return path


def test_a_video_without_a_usable_frame_rate_gets_the_default_said_once(tmp_path, smpl_tiny, embedded):
    """Issue #25, row 3: fps < 1 used to reach the overlay writer, which refused 0.00098 fps and aborted the run."""
    src = tmp_path / "in"
    src.mkdir()
    frames = [cv2.resize(f, (112, 84)) for f in pan_frames(smpl_tiny, 12)]
    mp4(src / "a_slow.mp4", frames[:4], fps=0.5)
    mp4(src / "b_broken.mp4", frames, zero_timescale=True)
    assert 0 < cv2.VideoCapture(str(src / "b_broken.mp4")).get(cv2.CAP_PROP_FPS) < 0.001
    cv2.imwrite(str(src / "z_later.png"), frames[0])
    out = tmp_path / "out"
    res = run(["-i", str(src), "-o", str(out), "--no-smooth"])
    assert res.exit_code == 0, res.output
    said = [line for line in res.output.splitlines() if "unknown or unusable; timing assumes 30 fps" in line]
    assert len(said) == 2 and "a_slow.mp4" in said[0] and "(0.5 fps)" in said[0] and "b_broken.mp4" in said[1], res.output
    assert "processed 1 image(s)" in res.output and (out / "thresh_0.3" / "z_later.json").is_file()
    assert frame_count(out / "thresh_0.3" / "a_slow.mp4") == (4, 30)
    for name in ("a_slow", "b_broken"):
        assert json.loads((out / "thresh_0.3" / f"{name}_tracks.json").read_text())["fps"] == 30
    assert (out / "thresh_0.3" / "b_broken.mp4").is_file()


def test_an_overlay_writer_that_cannot_open_fails_that_video_only(tmp_path, smpl_tiny, embedded, monkeypatch):
    """Issue #25, row 3: a writer that cannot open is one failure in the summary; the run goes on."""
    import sathmr.video.mp4 as mp4
    src = tmp_path / "in"
    src.mkdir()
    frames = [cv2.resize(f, (112, 84)) for f in pan_frames(smpl_tiny, 3)]
    write_avi(src / "a.avi", frames)
    write_avi(src / "b.avi", frames)
    cv2.imwrite(str(src / "c.png"), frames[0])

    class Refusing:
        def __init__(self, *a):
            pass

        def isOpened(self):
            return False

        def release(self):
            pass
    monkeypatch.setattr(mp4.cv2, "VideoWriter", Refusing)
    out = tmp_path / "out"
    res = run(["-i", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    failed = [line for line in res.output.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 2 and all("cannot write the video" in line for line in failed), res.output
    assert "processed 1 image(s)" in res.output and (out / "thresh_0.3" / "c.json").is_file()
    assert not list((out / "thresh_0.3").glob("*.mp4")) and not list((out / "thresh_0.3").glob(".*"))
    assert not list((out / "thresh_0.3").glob("*_tracks.json"))       # a later run redoes them
