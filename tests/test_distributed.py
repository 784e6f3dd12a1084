"""Several processes: the sharding rule, merged summaries and gathered evaluation in one process, then
`sathmr infer`, `eval` and `train` under `torchrun --nproc-per-node 2` (two gloo processes on CPU)
compared with one process. Each launch is bounded by a timeout and runs one thread per process."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.model.config import get_config
from sathmr.runtime.distributed import ProcessGroup, launched_processes, start

from helpers import embedded_config

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300
TINY = get_config("tiny")


def torchrun(args: list[str], timeout: int = LAUNCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m sathmr ARGS`` from this checkout; the whole process
    group is killed if it outlives ``timeout``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sathmr",
           *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun {args[0]} ran past {timeout} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-6000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def assert_json_close(a, b, where: str = "") -> None:
    """Equal structure and strings, numbers within float noise (the two runs may use other thread counts)."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_json_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_json_close(x, y, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5), where
    else:
        assert a == b, where


# The rule, in one process ------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_unit_once_and_keep_groups_together(world):
    units = ["a", "v#0", "v#1", "v#2", "b", "c", "w#0", "w#1", "d"]
    key = lambda u: u.split("#")[0]     # noqa: E731 - frames of one video share their file
    shards = [list(ProcessGroup(rank=r, world=world).shard(units, key=key)) for r in range(world)]
    assert sorted(u for s in shards for u in s) == sorted(units)
    for video in ("v", "w"):
        owners = {r for r, s in enumerate(shards) for u in s if key(u) == video}
        assert len(owners) == 1
    if world == 2:
        assert shards == [["a", "b", "w#0", "w#1"], ["v#0", "v#1", "v#2", "c", "d"]]
    n = 7
    parts = [list(ProcessGroup(rank=r, world=world).indices(n)) for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))


def test_infer_listing_keeps_a_video_in_one_process(tmp_path):
    """The units `sathmr infer` shards are images and whole videos: a video goes to exactly one process."""
    from sathmr.inputs.items import iter_inputs
    from sathmr.inputs.video import VideoSource
    make_inputs(tmp_path)
    shards = [list(ProcessGroup(rank=r, world=2).shard(iter_inputs(tmp_path))) for r in range(2)]
    sources = [[u.source for u in s] for s in shards]
    assert sorted(sources[0] + sources[1]) == sorted(u.source for u in iter_inputs(tmp_path))
    videos = [r for r, s in enumerate(shards) for u in s if isinstance(u, VideoSource)]
    assert len(videos) == 1


def test_start_without_launcher_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    group = start("cuda:1")
    assert (group.rank, group.world, group.device, group.is_main) == (0, 1, "cuda:1", True)
    assert group.gather({"x": 1}) == [{"x": 1}]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_processes() == 2
    with pytest.raises(SathmrError, match="use --device cuda"):
        start("cuda:1")


def test_summaries_merge_in_rank_order():
    from sathmr.infer import Summary
    a = Summary(2, 1, ["x: bad"], {0.3: 4, 0.5: 1}, [100, 120], 0.5)
    b = Summary(1, 0, ["y: bad"], {0.3: 2, 0.5: 0}, [90], 0.25)
    m = Summary.merge([a, b])
    assert (m.processed, m.skipped, m.failed, m.people, m.tokens, m.network_s, m.processes) == \
        (3, 1, ["x: bad", "y: bad"], {0.3: 6, 0.5: 1}, [100, 120, 90], 0.75, 2)
    assert "processes: 2" in m.report(1.0)


class ShardedRun(ProcessGroup):
    """One rank of a simulated group: ``gather`` returns what the other ranks recorded in ``shared``."""

    def __init__(self, rank: int, world: int, shared: dict):
        super().__init__(rank=rank, world=world)
        object.__setattr__(self, "shared", shared)

    def gather(self, obj):
        self.shared[self.rank] = obj
        return [self.shared[r] for r in range(self.world) if r in self.shared]


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    from sathmr.train.cli import open_sets
    from sathmr.train.data.pipeline import BodyModels
    from sathmr.train.data.synthetic import generate_dataset
    root = tmp_path_factory.mktemp("val")
    cfg = embedded_config()          # the scenes are scored with the embedded default
    generate_dataset(root, 5, seed=7, size=cfg.input_size, split="val", max_people=3)
    bodies = BodyModels(root / "smpl")
    return root, open_sets(root, [("bedlam", "validation_6fps")], bodies, cfg, train=False), bodies.get("neutral")


def test_sharded_evaluation_pools_in_dataset_order(val_set, embedded):
    """Three ranks over five images (not divisible): rank 0 gathers one score per image, each image once,
    equal to what one process computes for it, and the same metrics."""
    from sathmr.backends import load_backend
    from sathmr.runtime.predictor import Predictor
    from sathmr.train.engine import evaluate
    _, ds, body = val_set
    pred = Predictor(load_backend("torch"), body, (0.1,))
    alone: dict = {}
    ref = evaluate(pred, ds, 0.1, batch_size=2, group=ShardedRun(0, 1, alone))
    shared: dict = {}
    for rank in (2, 1, 0):      # rank 0 last: it then holds every shard
        got = evaluate(pred, ds, 0.1, batch_size=2, group=ShardedRun(rank, 3, shared))
    assert got == ref and ref["num_matched"] > 0
    assert [[i for i, _ in shared[r]] for r in range(3)] == [[0, 3], [1, 4], [2]]
    pooled = sorted((s for r in range(3) for s in shared[r]), key=lambda s: s[0])
    assert [i for i, _ in pooled] == [i for i, _ in alone[0]] == list(range(len(ds)))
    for (_, a), (_, b) in zip(pooled, alone[0]):
        assert (a.num_gt, a.misses, a.false_positives, a.errors.keys()) == (b.num_gt, b.misses, b.false_positives, b.errors.keys())
        for k in a.errors:
            np.testing.assert_allclose(a.errors[k], b.errors[k], rtol=0, atol=1e-7)


# Under torchrun ----------------------------------------------------------------------------------
def make_inputs(folder: Path) -> None:
    """Five images of different sizes, a broken file and a three-frame video."""
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for i in range(5):
        cv2.imwrite(str(folder / f"r{i}.jpg"), rng.integers(0, 255, (180 + 30 * i, 260, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"not an image")
    writer = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(3):
        writer.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    writer.release()


@pytest.mark.slow
def test_infer_two_processes_write_what_one_writes_and_resume(tmp_path, embedded):
    imgs, one, two = tmp_path / "imgs", tmp_path / "one", tmp_path / "two"
    make_inputs(imgs)
    res = CliRunner().invoke(main, ["infer", "-i", str(imgs), "-o", str(one)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = torchrun(["infer", "-i", imgs, "-o", two]).stdout
    line = next(ln for ln in res.output.splitlines() if ln.startswith("processed "))
    assert line == "processed 5 image(s) and 1 video(s) (3 frames), skipped 0 already done, failed 1"
    assert out.count(line) == 1     # one merged summary, equal to the single process's
    assert "processes: 2" in out and "broken.jpg" in out
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".json"]) == 6      # five images and the video's tracks
    for f in files:
        if f.suffix == ".json":
            assert_json_close(json.loads((one / f).read_text()), json.loads((two / f).read_text()), str(f))
    # a crashed shard: its missing outputs are redone, everything else is skipped
    (two / "thresh_0.3" / "r3.json").unlink()
    (two / "thresh_0.3" / "clip_tracks.json").unlink()
    out = torchrun(["infer", "-i", imgs, "-o", two]).stdout
    assert "processed 1 image(s) and 1 video(s) (3 frames), skipped 4 already done, failed 1" in out
    assert not list(two.rglob("*.tmp"))


@pytest.mark.slow
def test_eval_two_processes_score_as_one(val_set, embedded, tmp_path):
    root = val_set[0]
    args = ["eval", "-i", root, "--threshold", "0.1", "--batch-size", "2"]
    res = CliRunner().invoke(main, [*map(str, args), "--json", str(tmp_path / "one.json")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = torchrun([*args, "--json", tmp_path / "two.json"]).stdout
    assert "images 5  processes 2" in out and out.count("num_matched") == 1
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["num_matched"] > 0
    for k, v in one.items():
        assert two[k] == (pytest.approx(v, abs=1e-6) if isinstance(v, float) else v), k


@pytest.fixture(scope="module")
def same_size_train_set(tmp_path_factory):
    """Six synthetic training scenes of one image size, and an initial tiny model."""
    from sathmr.body import load_mean_params
    from sathmr.model import build_model
    from sathmr.model.checkpoint import save_checkpoint
    from sathmr.train.data.annots_io import load_annots, save_annots
    from sathmr.train.data.synthetic import generate_dataset
    root = tmp_path_factory.mktemp("train2p")
    annot = generate_dataset(root, 40, seed=0, size=TINY.input_size, split="train", max_people=3)
    annots = load_annots(annot)
    shapes = {n: cv2.imread(str(next(root.rglob(n)))).shape for n in annots}
    common = collections.Counter(shapes.values()).most_common(1)[0][0]
    keep = [n for n in annots if shapes[n] == common][:6]
    assert len(keep) == 6
    save_annots(annot, {n: annots[n] for n in keep})
    mp, ms = load_mean_params(root / "smpl")
    torch.manual_seed(0)
    model = build_model(TINY, torch.from_numpy(mp), torch.from_numpy(ms))
    return root, save_checkpoint(model, root / "init.safetensors")


def is_key_bias(name: str) -> bool:
    """Attention key-projection biases: softmax over keys ignores a constant added to every key's logit,
    so their true gradient is zero and AdamW turns the float noise on it into ±lr steps in either run."""
    parts = name.split(".")
    return len(parts) > 1 and parts[-1] == "bias" and parts[-2].endswith("_proj") and "_k" in parts[-2]


@pytest.mark.slow
def test_train_two_processes_equal_one_with_the_doubled_batch(same_size_train_set, tmp_path):
    """Two steps on two processes (batch 1 each), then a resumed launch to step 4 (mid-epoch resume, then
    an epoch boundary), against one process with batch 2 for four steps.

    Neutralised, as they legitimately differ between a split and a whole batch: denoising is off (its pad
    size and noise draws depend on the whole batch's GT) and all images have one size (the scale-map
    focal loss is a mean over each process's in-image cells).
    """
    from safetensors.torch import load_file

    from sathmr.body import load_mean_params
    from sathmr.model.checkpoint import load_model
    from sathmr.train.cli import open_sets
    from sathmr.train.data.pipeline import BodyModels
    from sathmr.train.engine import TrainConfig, train
    root, init = same_size_train_set
    lr = 1e-3
    common = ["train", "-i", root, "--config", "tiny", "--init", init, "--epochs", "2", "--batch-size", "1",
              "--lr", lr, "--lr-encoder", lr, "--save-every", "1", "--no-dn", "-o", tmp_path / "two"]
    first = torchrun([*common, "--max-steps", "2"]).stdout
    out = torchrun([*common, "--max-steps", "4"]).stdout
    assert "resumed from" in out and "step_2" in out and out.count("done: 4 steps") == 1

    model, _ = load_model(init, TINY, load_mean_params(root / "smpl"))
    bodies = BodyModels(root / "smpl")
    ds = open_sets(root, [("bedlam", "train_6fps")], bodies, TINY, train=True, seed=42)
    tc = TrainConfig(epochs=2, batch_size=2, lr=lr, lr_encoder=lr, max_steps=4, save_every_steps=1, use_dn=False)
    logged: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # as in the launched processes: the same float noise
    try:
        train(model, ds, bodies.get("neutral"), tmp_path / "one", tc, resume=False, log=logged.append)
    finally:
        torch.set_num_threads(threads)
    # the logged loss is the mean over processes, which is the whole batch's loss
    loss = lambda text: float(re.search(r"step 0/6 loss (\S+)", text).group(1))     # noqa: E731
    assert loss(first) == pytest.approx(loss("\n".join(logged)), abs=2e-4)

    start_w, atol = load_file(init), 2e-5
    for step in ("step_2", "step_4"):
        one = load_file(tmp_path / "one" / "checkpoints" / step / "model.safetensors")
        two = load_file(tmp_path / "two" / "checkpoints" / step / "model.safetensors")
        assert one.keys() == two.keys()
        moved = max((one[k] - start_w[k]).abs().max().item() for k in one if k in start_w)
        assert moved > 50 * atol      # training moved the weights far beyond the tolerance
        for k in one:
            if not is_key_bias(k):
                torch.testing.assert_close(two[k], one[k], rtol=0, atol=atol, msg=f"{step} {k}")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices: one per process")
def test_infer_two_gpu_processes_each_take_their_own_gpu(tmp_path, embedded):
    imgs = tmp_path / "imgs"
    make_inputs(imgs)
    out = torchrun(["infer", "-i", imgs, "-o", tmp_path / "two", "--device", "cuda"]).stdout
    assert "processes: 2" in out and "processed 8 image(s)" in out
    assert len(list((tmp_path / "two" / "thresh_0.3").glob("*.json"))) == 8
