"""The model registry, `sathmr models`, and `sathmr weights fetch` against a local stand-in for the Hub."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import constants, hf_hub_download

from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.model.checkpoint import read_checkpoint
from sathmr.model.config import get_config
from sathmr.zoo import MODELS, ModelEntry, get_entry, list_models
from sathmr.zoo.fetch import fetch
from sathmr.zoo.local import Records, check, default_checkpoint
from sathmr.zoo.weights import EMBEDDED, resolve

from fake_hub import FakeHub
from helpers import random_official_state_dict

REPO = Path(__file__).resolve().parents[1]
PATH = "ChiSu001/SAT-HMR/weights/sat_hmr/sat_644.pth"
CONTENT = os.urandom(300_000)
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """Empty weights folder, sathmr cache and Hub cache; the Hub is a FakeHub on 127.0.0.1."""
    hub = FakeHub({PATH: CONTENT})
    monkeypatch.setenv("SATHMR_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("SATHMR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 8192)   # written as it arrives (default: 10 MB chunks)
    yield hub, tmp_path
    hub.close()


def fetch_cli(*args: str):
    return CliRunner().invoke(main, ["weights", "fetch", *args])


def leftovers(tmp_path: Path) -> list[Path]:
    """Partial or temporary files anywhere in the weights folder or the download cache."""
    return [p for p in tmp_path.rglob("*") if p.is_file() and (p.suffix in (".part", ".tmp") or p.name.startswith("."))]


# -- the registry --------------------------------------------------------------------------------------------

def test_registry_lists_the_official_models_with_their_published_numbers():
    official = [e for e in MODELS.values() if e.hub is not None]
    assert [e.name for e in official] == ["sat_644", "sat_644_agora", "sat_644_3dpw"]
    for e in official:
        assert (e.hub.repo, e.hub.path) == ("ChiSu001/SAT-HMR", f"weights/sat_hmr/{e.name}.pth")
        assert (e.config, e.canvas, e.kind) == ("sat_644", 1288, "checkpoint")
    r = {(e.name, rep.benchmark): (rep.threshold, dict(rep.values)) for e in official for rep in e.reported}
    assert r[("sat_644", "AGORA-val")] == (0.5, {"F1": 0.95, "MPJPE": 63.0, "MVE": 59.0})
    assert r[("sat_644", "BEDLAM-val")] == (0.5, {"F1": 0.98, "MPJPE": 48.7, "MVE": 46.2})
    assert r[("sat_644_3dpw", "3DPW-test")] == (0.3, {"MPJPE": 63.6, "PA-MPJPE": 41.6, "MVE": 73.7})
    assert r[("sat_644_agora", "AGORA-test")] == (0.5, {"F1": 0.95, "MPJPE": 67.9, "MVE": 63.3})
    assert MODELS["dinov2_vitb14"].kind == "encoder" and MODELS["dinov2_vitb14"].filename == "dinov2_vitb14_pretrain.pth"


def test_lookup_by_name_pattern_and_file_name():
    assert [e.name for e in list_models("sat_644*")] == ["sat_644", "sat_644_agora", "sat_644_3dpw"]
    assert [e.name for e in list_models("3dpw")] == ["sat_644_3dpw"]
    assert get_entry("sat_644_agora.pth").name == "sat_644_agora"
    with pytest.raises(SathmrError, match="did you mean sat_644"):
        get_entry("sat_64")


def test_embedded_entry_comes_from_the_packaged_file(zoo):
    r = CliRunner().invoke(main, ["models", "embedded", "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    assert row["local"] == "packaged" and Path(row["path"]) == EMBEDDED
    assert row["config"] == read_checkpoint(EMBEDDED)[1].name and int(row["canvas"]) == read_checkpoint(EMBEDDED)[1].input_size
    assert row["sha256"] == hashlib.sha256(EMBEDDED.read_bytes()).hexdigest()


def test_default_checkpoint_follows_registry_order_and_names_resolve(zoo):
    _, tmp = zoo
    weights = tmp / "weights"
    assert default_checkpoint() is None and resolve(None, None).embedded
    (weights / "sat_hmr").mkdir(parents=True)
    (weights / "sat_hmr" / "sat_644_3dpw.pth").write_bytes(b"x")      # the original release's layout
    (weights / "sat_644_agora.pth").write_bytes(b"x")
    assert default_checkpoint() == weights / "sat_644_agora.pth"       # sat_644 absent: the next one
    (weights / "sat_644.pth").write_bytes(b"x")
    assert default_checkpoint() == weights / "sat_644.pth"
    assert resolve("sat_644_3dpw", None).checkpoint == weights / "sat_hmr" / "sat_644_3dpw.pth"
    assert resolve("embedded", None).embedded
    (weights / "sat_644.pth").unlink()
    with pytest.raises(SathmrError, match="sathmr weights fetch sat_644"):
        resolve("sat_644", None)


# -- fetching ------------------------------------------------------------------------------------------------

def test_fetch_downloads_verifies_and_records(zoo):
    hub, tmp = zoo
    r = fetch_cli("sat_644")
    assert r.exit_code == 0, r.output
    target = tmp / "weights" / "sat_644.pth"
    assert target.read_bytes() == CONTENT and "the Hub's ETag" in r.output and "SMPL" in r.output
    assert [s.method for s in hub.seen] == ["HEAD", "GET"] and not leftovers(tmp)
    rec = json.loads((tmp / "cache" / "zoo.json").read_text())["models"]["sat_644"]
    assert rec["sha256"] == SHA and rec["verified"] and hub.commit in rec["source"]

    rows = {row["name"]: row for row in json.loads(CliRunner().invoke(main, ["models", "--json"]).stdout)}
    assert rows["sat_644"]["local"] == "verified" and rows["sat_644_3dpw"]["local"] == "absent"
    assert fetch_cli("sat_644").exit_code == 0 and len(hub.gets()) == 1     # there and verified: no download

    target.write_bytes(b"y" + CONTENT[1:])                                   # damaged later
    rows = {row["name"]: row for row in json.loads(CliRunner().invoke(main, ["models", "--json", "--verify"]).stdout)}
    assert rows["sat_644"]["local"] == "MISMATCH"
    r = fetch_cli("sat_644")
    assert r.exit_code == 2 and "--force" in r.output
    assert fetch_cli("sat_644", "--force").exit_code == 0 and target.read_bytes() == CONTENT


def test_fetch_refuses_a_download_that_fails_its_checksum(zoo):
    hub, tmp = zoo
    hub.corrupt = True
    r = fetch_cli("sat_644")
    assert r.exit_code == 2 and "checksum mismatch" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp / "weights" / "sat_644.pth").exists() and not leftovers(tmp)


def test_an_interrupted_fetch_resumes(zoo):
    hub, tmp = zoo
    hub.cut_after, hub.faults = 100_000, ["cut", "fail"]        # the connection drops, the retry fails too
    r = fetch_cli("sat_644")
    assert r.exit_code == 2 and "resume" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp / "weights").exists() or not any((tmp / "weights").iterdir())
    (part,) = (tmp / "cache" / "downloads").glob("*.part")
    kept = part.stat().st_size                                    # what arrived, in whole chunks
    assert 50_000 < kept <= 100_000 and part.read_bytes() == CONTENT[:kept]
    r = fetch_cli("sat_644")                                      # the next run continues where it stopped
    assert r.exit_code == 0 and "resumed" in r.output, r.output
    assert hub.gets()[-1].range == f"bytes={kept}-"
    assert (tmp / "weights" / "sat_644.pth").read_bytes() == CONTENT and not leftovers(tmp)


def test_a_dropped_connection_is_resumed_within_the_run(zoo):
    hub, tmp = zoo
    hub.cut_after, hub.faults = 50_000, ["cut"]
    assert fetch_cli("sat_644").exit_code == 0
    first, second = hub.gets()
    assert first.range is None and second.range.startswith("bytes=") and second.range != "bytes=0-"
    assert (tmp / "weights" / "sat_644.pth").read_bytes() == CONTENT


def test_offline_fetch_uses_only_the_hub_cache(zoo, monkeypatch):
    hub, tmp = zoo
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = fetch_cli("sat_644")
    assert r.exit_code == 2 and "offline" in r.output and len(r.output.strip().splitlines()) == 1
    assert hub.seen == [] and not (tmp / "weights" / "sat_644.pth").exists()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)    # some other Hub tool downloads it ...
    hf_hub_download("ChiSu001/SAT-HMR", "weights/sat_hmr/sat_644.pth", endpoint=hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.seen.clear()
    r = fetch_cli("sat_644", "-o", str(tmp / "elsewhere"))  # ... and offline, fetch takes it from the cache
    assert r.exit_code == 0 and "from the Hub cache" in r.output, r.output
    assert hub.seen == [] and (tmp / "elsewhere" / "sat_644.pth").read_bytes() == CONTENT


def test_unreachable_hub_is_one_line(zoo, monkeypatch):
    hub, tmp = zoo
    hub.close()
    r = fetch_cli("sat_644")
    assert r.exit_code == 2 and r.output.startswith("error: cannot fetch sat_644") and len(r.output.strip().splitlines()) == 1
    assert not (tmp / "weights").exists()


def test_url_source_is_size_checked_and_recorded(zoo):
    hub, tmp = zoo
    hub.files["facebook/dinov2/x.pth"] = b"d" * 1000
    entry = ModelEntry("dino_test", "dino.pth", "encoder", "test", "-", url=f"{hub.url}/facebook/dinov2/resolve/main/x.pth")
    records = Records()
    got = fetch(entry, tmp / "w", records=records)
    assert got.path.read_bytes() == b"d" * 1000 and "size only" in got.check
    assert check(entry, Records(), got.path).status == "recorded"       # not "verified": nothing to check it against


def test_packaged_and_smpl_are_not_fetched(zoo):
    r = fetch_cli("embedded")
    assert r.exit_code == 2 and "ships inside the package" in r.output


def test_env_settings_reach_a_fresh_process(zoo):
    """HF_ENDPOINT and HF_HUB_OFFLINE as a user sets them: read by huggingface_hub at import."""
    hub, tmp = zoo
    env = {**os.environ, "HF_HUB_CACHE": str(tmp / "hf_cache"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "sathmr", "weights", "fetch", "sat_644"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 2 and "offline" in r.stderr and hub.seen == []
    env["HF_HUB_OFFLINE"] = "0"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert (tmp / "weights" / "sat_644.pth").read_bytes() == CONTENT and hub.gets()


def test_fetch_then_infer_runs_the_fetched_weights(zoo, smpl_tiny):
    """The newcomer's path: `weights fetch sat_644`, then `infer` without naming a model (here a tiny
    network in the official layout stands in for the 875 MB file, hence --config tiny)."""
    hub, tmp = zoo
    blob = tmp / "official.pth"
    torch.save(random_official_state_dict(get_config("tiny"), seed=0), blob)
    hub.files[PATH] = blob.read_bytes()
    assert fetch_cli("sat_644").exit_code == 0
    image = tmp / "photos" / "a.jpg"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    r = CliRunner().invoke(main, ["infer", "-i", str(image.parent), "-o", str(tmp / "out"), "--config", "tiny",
                                  "--smpl-dir", str(smpl_tiny), "--no-overlay"])
    assert r.exit_code == 0, r.output
    assert f"weights: {tmp / 'weights' / 'sat_644.pth'}" in r.output
    assert json.loads((tmp / "out" / "thresh_0.3" / "a.json").read_text())["backend"] == "torch"
