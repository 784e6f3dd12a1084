"""`sathmr bench` on the tiny config: it runs torch and ort interleaved, and its JSON has every field.

Figures are not asserted (they belong in the benchmark output), only their presence and consistency:
percentiles ordered, throughput consistent with latency, token counts the forced layout implies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sathmr.bench.cli import parse_backends
from sathmr.bench.measure import latency_stats
from sathmr.bench.run import STAGES
from sathmr.bench.scaling import forced_layout
from sathmr.cli import main
from sathmr.common.errors import SathmrError
from sathmr.model import build_model
from sathmr.model.config import get_config

TINY = get_config("tiny")


def test_an_export_alone_tells_bench_which_weights_the_torch_side_runs(tmp_path, tiny_export, tiny_ckpt, smpl_tiny,
                                                                      monkeypatch):
    """The README's `sathmr bench --backend torch,ort -m EXPORT -i photos` on an export of the embedded default:
    the torch side runs the weights the export was made from (its metadata says which), not a random network."""
    monkeypatch.setattr("sathmr.zoo.registry.EMBEDDED", tiny_ckpt)     # these weights play the embedded default
    out = tmp_path / "b.json"
    res = CliRunner().invoke(main, ["bench", "--backend", "torch,ort", "-m", str(tiny_export.path), "--smpl-dir",
                                    str(smpl_tiny), "--iters", "1", "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    result = json.loads(out.read_text())
    assert result["model"]["checkpoint"] == str(tiny_ckpt) and result["model"]["random_weights"] is False
    acc = result["backends"]["ort"]["accuracy"]
    assert acc["tokens_identical"] and acc["matched"] == acc["people_a"] and acc["joint_mm_max"] < 0.05


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_export) -> tuple[dict, str, Path]:
    """torch and ort (the session's export of the same random weights bench builds) in their own processes."""
    out = tmp_path_factory.mktemp("bench")
    res = CliRunner().invoke(main, ["bench", "--config", "tiny", "--random-weights", "--backend", "torch,torch:bf16,ort,ort:int8,trt",
                                    "--model", str(tiny_export.path),
                                    "--iters", "2", "--warmup", "1", "--threads", "1", "--scaling",
                                    "--scaling-iters", "1", "--plot", str(out / "scaling.png"),
                                    "--json", str(out / "bench.json")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((out / "bench.json").read_text()), res.output, out


@pytest.mark.slow        # every entry, the scaling sweep: ~35 s on 2 cores
def test_json_has_machine_settings_and_model(bench_run):
    result, _, _ = bench_run
    m = result["machine"]
    for key in ("cpu", "cores_logical", "torch", "onnxruntime", "threads", "device", "platform"):
        assert m[key] not in (None, ""), key
    assert m["threads"] == 1 and m["torch_threads"] == 1           # pinned and reported
    assert result["settings"]["iters"] == 2 and result["settings"]["warmup"] == 1
    assert result["model"]["random_weights"] is True and "RANDOM" in result["model"]["note"]
    assert result["model"]["params"] == sum(p.numel() for p in build_model(TINY).parameters())
    assert result["inputs"]["source"] == "synthetic" and len(result["inputs"]["names"]) == 2


@pytest.mark.slow        # every entry, the scaling sweep: ~35 s on 2 cores
def test_every_backend_has_stage_stats_tokens_and_memory(bench_run):
    result, _, _ = bench_run
    assert set(result["backends"]) == {"torch", "torch:bf16", "ort", "ort:int8"}
    n_images = len(result["inputs"]["names"])
    for r in result["backends"].values():
        for stage in STAGES:
            st = r["stages"][stage]
            assert st["n"] == 2 * n_images                          # warm-up excluded, one sample per batch
            assert 0 < st["p50_ms"] <= st["p90_ms"] <= st["p99_ms"]
            assert st["images_per_s"] == pytest.approx(1000.0 / st["mean_ms"])
        e2e = sum(r["stages"][s]["mean_ms"] for s in ("preprocess", "network", "postprocess"))
        assert r["stages"]["end_to_end"]["mean_ms"] == pytest.approx(e2e)
        assert r["peak_rss_mb"] > 0 and r["cuda_max_memory_allocated_mb"] is None
        assert set(r["tokens"]["per_image"]) == set(result["inputs"]["names"])
        assert all(t["level0"] % 4 == 0 for t in r["tokens"]["per_image"].values())
        assert r["speedup_vs_torch"] > 0
    torch_pass = result["backends"]["torch"]["pass_ms"]
    for r in result["backends"].values():
        # a pass is every input once: its median lies between n_images x the fastest and x the slowest sample
        for st in ("network", "end_to_end"):
            assert n_images * r["stages"][st]["min_ms"] <= r["pass_ms"][st] * (1 + 1e-9)
        assert r["speedup_vs_torch"] == pytest.approx(torch_pass["end_to_end"] / r["pass_ms"]["end_to_end"])
        assert r["network_speedup_vs_torch"] == pytest.approx(torch_pass["network"] / r["pass_ms"]["network"])
        assert r["peak_rss_mb"] > r["baseline_rss_mb"] > 0          # each in its own process
    assert result["backends"]["torch"]["tokens"]["static_sequence"] is None
    assert result["backends"]["ort"]["tokens"]["static_sequence"] is None     # the default export is two-stage
    # same weights, same images: every engine and precision selects the same tokens as the dynamic model
    for name in ("ort", "ort:int8", "torch:bf16"):
        assert result["backends"][name]["tokens"]["per_image"] == result["backends"]["torch"]["tokens"]["per_image"]


@pytest.mark.slow        # every entry, the scaling sweep: ~35 s on 2 cores
def test_precisions_side_by_side_with_their_accuracy(bench_run):
    """Every entry's accuracy against torch fp32 on the same inputs, next to its speed-up, in one table."""
    result, output, _ = bench_run
    b = result["backends"]
    assert b["torch"]["accuracy"] is None and b["torch"]["precision"] == "fp32"
    assert b["torch:bf16"]["precision"] in ("bf16", "bf16 (emulated)") and b["ort:int8"]["precision"] == "int8"
    for name in ("torch:bf16", "ort", "ort:int8"):
        acc = b[name]["accuracy"]
        assert acc["a"] == "torch" and acc["b"] == name and acc["images"] == len(result["inputs"]["names"])
        assert acc["tokens_identical"], name          # stage A fp32 at every precision
        assert acc["matched"] == acc["people_a"] and acc["unmatched"] == 0, name
    assert b["ort"]["accuracy"]["joint_mm_max"] < 0.05           # fp32 engines agree to ~1e-3 mm
    assert 0 < b["torch:bf16"]["accuracy"]["joint_mm_mean"] < 20 and 0 < b["ort:int8"]["accuracy"]["joint_mm_mean"] < 20
    assert b["ort:int8"]["network_speedup_vs_torch"] > 0
    assert "speed and accuracy" in output and "joints mean/max mm" in output
    row = [line for line in output.splitlines() if line.startswith("ort:int8 ")][-1]    # the last table's
    assert " int8 " in row and " yes " in row


def test_entries_and_precision_lists():
    assert [e.label for e in parse_backends("torch,torch:bf16+compile,ort:int8")] == \
        ["torch", "torch:bf16+compile", "ort:int8"]
    assert [e.label for e in parse_backends("torch,ort,ort:fp16", "fp32,bf16,int8")] == \
        ["torch", "torch:bf16", "ort", "ort:int8", "ort:fp16"]     # explicit precisions are kept as given
    for text, needle in (("torch:int8", "not 'int8'"), ("ort:bf16", "not 'bf16'"), ("ort+compile", "only suffix"),
                         ("torch+fast", "only suffix")):
        with pytest.raises(SathmrError, match=needle):
            parse_backends(text)
    with pytest.raises(SathmrError, match="none of them"):
        parse_backends("ort", "bf16")
    with pytest.raises(SathmrError, match="twice"):
        parse_backends("torch,torch:fp32")


@pytest.mark.slow        # every entry, the scaling sweep: ~35 s on 2 cores
def test_trt_is_skipped_with_a_reason_on_cpu(bench_run):
    result, output, _ = bench_run
    assert "cuda" in result["skipped"]["trt"].lower()
    assert "skipped trt" in output


@pytest.mark.slow        # every entry, the scaling sweep: ~35 s on 2 cores
def test_scaling_sweep_and_plot(bench_run):
    result, output, out = bench_run
    sc = result["scaling"]
    budget = sc["budget"]
    assert [p["sat_cells"] for p in budget] == sorted(p["sat_cells"] for p in budget)
    assert budget[0]["sat_cells"] == 0 and budget[-1]["sat_cells"] == budget[-1]["cells"]
    # all cells SAT = every token at full resolution: 4 level-0 tokens per level-1 cell
    assert budget[-1]["tokens"] == {"level0": 4 * budget[-1]["cells"], "level1": 0, "level2": 0,
                                    "total": 4 * budget[-1]["cells"]}
    assert sc["all_level1"]["tokens"]["level1"] == sc["all_level1"]["cells"]
    assert [s["side"] for s in sc["sizes"]][-1] == TINY.input_size
    for s in sc["sizes"]:
        assert s["mixed"]["tokens"]["total"] < s["all_high_res"]["tokens"]["total"]
        assert s["mixed"]["median_ms"] > 0 and s["all_high_res"]["n"] >= 1
    png = (out / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "scaling" in output and "all-high-res" in output


@pytest.mark.parametrize("sat,l1", [(0, 0), (3, 5), (16, 0), (0, 16)])
def test_forced_layout_gives_the_token_counts_it_promises(sat, l1):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    hc = wc = TINY.input_size // TINY.cell_size
    groups = (hc // 2) * (wc // 2)
    smap = forced_layout(hc, wc, sat, l1)
    x = torch.zeros(1, 3, TINY.input_size, TINY.input_size)
    hw = torch.tensor([[TINY.input_size, TINY.input_size]])
    with torch.inference_mode():
        counts = model(x, hw, scale_map_override=smap)["tokens"]["tok_counts"][0].tolist()
    assert counts == [16 * sat, 4 * l1, groups - sat - l1]


def test_latency_stats_percentiles_and_throughput():
    rng = np.random.default_rng(1)
    secs = rng.uniform(0.01, 0.2, 57)
    st = latency_stats(secs, images_per_sample=4)
    assert st["p50_ms"] == pytest.approx(np.median(secs) * 1000)
    assert st["p99_ms"] <= secs.max() * 1000 and st["p99_ms"] >= st["p90_ms"]
    assert st["images_per_s"] == pytest.approx(4 / secs.mean())


def test_bad_options_fail_with_one_line():
    with pytest.raises(SathmrError, match="unknown"):
        parse_backends("torch,onnx")
    with pytest.raises(SathmrError, match="twice"):
        parse_backends("torch,torch")
    res = CliRunner().invoke(main, ["bench", "--config", "tiny", "--backend", "torch,tensorflow"])
    assert res.exit_code == 2 and "tensorflow" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["bench", "--config", "tiny", "--random-weights", "--backend", "torch", "--iters", "0"])
    assert res.exit_code == 2 and "--iters" in res.output
    res = CliRunner().invoke(main, ["bench", "--config", "sat_644", "--backend", "torch"], env={"SATHMR_WEIGHTS": "/nonexistent"})
    assert res.exit_code == 2 and "--random-weights" in res.output      # a config alone is no longer a random network
