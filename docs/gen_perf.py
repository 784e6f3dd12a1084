"""MkDocs hook: the performance pages' tables and figures, generated from ``benchmarks/results/`` at build time.

Why a hook: the measured figures live in the JSON files the benchmark scripts write; typing them into
the manual by hand would let the two drift. A page writes a marker on a line of its own,
``{{ perf NAME }}``, and :func:`on_page_markdown` replaces it with the table ``NAME`` renders from
the JSON (the machine it ran on included). An unknown name or a missing file fails the build. The
bench tables reuse :mod:`sathmr.bench.report`, the renderer of ``sathmr bench`` itself, so the manual
shows exactly what the command prints. :func:`on_files` publishes the PNGs of ``benchmarks/results``
under ``img/`` without copying them into ``docs/``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
MARKER = re.compile(r"^\{\{ perf ([a-z0-9_]+) \}\}$", re.MULTILINE)


def load(name: str):
    path = RESULTS / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def md_table(header: list[str], rows: list[list[str]]) -> str:
    from sathmr.bench.report import md_table as table
    return table(header, rows)


def num(v, fmt: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def machine_line(m: dict, command: str | None = None) -> str:
    """One sentence naming the machine, so no figure appears without the CPU it was measured on."""
    flags = " ".join(m.get("cpu_flags") or []) or "-"
    cores = m.get("cores_logical", m.get("cores"))
    parts = [f"**Machine:** {m['cpu']} (flags {flags}), {cores} logical cores"]
    if "threads" in m:
        parts.append(f"{m['threads']} threads, device {m.get('device', 'cpu')}")
    if "torch" in m:
        parts.append(f"torch {m['torch']}, onnxruntime {m.get('onnxruntime', '-')}")
    start, end = m.get("load_average_1m_at_start"), m.get("load_average_1m_at_end")
    if start is not None:
        parts.append(f"1-minute load average {start} at the start" + (f", {end} at the end" if end is not None else ""))
    elif "load_average_1m" in m:
        parts.append(f"1-minute load average {m['load_average_1m']}")
    line = "; ".join(parts) + "."
    return line + (f" Command: `{command}`." if command else "")


def bench_tables(result: dict, precision_only: bool = False) -> str:
    """A ``sathmr bench --json`` result: machine, model, inputs, then the tables ``sathmr bench`` prints."""
    from sathmr.bench import report as r
    s = result["settings"]
    out = [machine_line(result["machine"], s.get("command")), "", f"*{result['model']['note']}*", "",
           f"Inputs: {', '.join(result['inputs']['names'])}; batch {s['batch']}; {s['iters']} measured passes after "
           f"{s['warmup']} warm-up; backends interleaved pass by pass.", ""]
    first = next(iter(result["backends"].values()), None)
    if first:
        per = ", ".join(f"{name} {t['level0']}/{t['level1']}/{t['level2']} ({t['people']} people)"
                        for name, t in first["tokens"]["per_image"].items())
        out += [f"Tokens per image at levels 0/1/2 ({next(iter(result['backends']))}): {per}.", ""]
    if not precision_only:
        out += [r.md_table(r.BACKEND_HEADER, r.backend_rows(result)), "",
                r.md_table(r.RESOURCE_HEADER, r.resource_rows(result)), ""]
    out += [r.md_table(r.PRECISION_HEADER, r.precision_rows(result))]
    for name, why in result["skipped"].items():
        out += ["", f"Skipped {name}: {why}"]
    return "\n".join(out)


def t_results_summary() -> str:
    res = load("results.json")
    b = res["backends"]
    t, o = b["torch"], b["ort"]
    acc = o["accuracy"]
    return (f"ONNX Runtime's network runs at **{o['network_speedup_vs_torch']:.2f}× PyTorch's** "
            f"({o['speedup_vs_torch']:.2f}× end to end) on the test photos, tokens identical: "
            f"{'yes' if acc['tokens_identical'] else 'NO'}, {acc['matched']}/{acc['people_a']} people matched, "
            f"joints {acc['joint_mm_mean']:.2f}/{acc['joint_mm_max']:.2f} mm mean/max apart, at "
            f"{o['peak_rss_mb'] / t['peak_rss_mb']:.2f}× its peak memory ({o['peak_rss_mb']:.0f} vs "
            f"{t['peak_rss_mb']:.0f} MB per process). {machine_line(res['machine'])}")


def t_results() -> str:
    return bench_tables(load("results.json"))


def t_scaling() -> str:
    from sathmr.bench import report as r
    from sathmr.bench.scaling import MIXED_LAYOUT
    sc = load("results.json")["scaling"]
    budget, sizes = r.scaling_rows(sc)
    return "\n".join([
        f"Token layout forced through the scale map on a square {sc['canvas']} canvas ({sc['backend']}, "
        f"{sc['device']}): SAT cells become 4 full-resolution tokens each, the rest of the image is background "
        "(one level-2 token per 2×2 group). All cells SAT = every token at full resolution, the cost SAT avoids.", "",
        r.md_table(r.SCALING_BUDGET_HEADER, budget), "",
        f"Input size: mixed layout = {MIXED_LAYOUT[0]:g} of the 2×2 groups SAT, {MIXED_LAYOUT[1]:g} level-1, "
        "the rest background.", "", r.md_table(r.SCALING_SIZE_HEADER, sizes), "",
        "![Network latency against SAT cells and input size](@img/scaling.png)"])


def t_precision_full() -> str:
    return bench_tables(load("precision_full.json")["full"], precision_only=True)


def t_int8_full() -> str:
    return bench_tables(load("int8_export_full.json"), precision_only=True)


def t_ort_full() -> str:
    return bench_tables(load("ort_full.json"))


def t_tiny_compile() -> str:
    return bench_tables(load("precision_tiny_compile.json"), precision_only=True)


def t_precision_scenes() -> str:
    d = load("precision_scenes.json")
    sc = d["scenes"]
    ref = sc["eval"]["torch:fp32"]
    rows = []
    for name, e in sc["eval"].items():
        p = sc["parity"].get(name)
        par = (["yes" if p["tokens_identical"] else "NO", f"{p['joint_mm_mean']:.2f}/{p['joint_mm_max']:.2f}",
                f"{p['matched']}/{p['people_a']}"] if p else ["(reference)", "-", "-"])
        rows.append([name.split(":")[0], e["numerics"], f"{e['f1']:.3f}", f"{e['f1'] - ref['f1']:+.3f}",
                     num(e["mpjpe"]), f"{e['mpjpe'] - ref['mpjpe']:+.1f}", *par])
    header = ["entry", "precision", "F1", "F1 change", "MPJPE mm", "MPJPE change", "tokens identical",
              "joints vs fp32 mean/max mm", "people matched"]
    return "\n".join([machine_line(d["machine"], d["command"]), "",
                      f"{sc['scenes']} synthetic validation scenes, `sathmr eval` at threshold {ref['threshold']} "
                      f"({ref['protocol']} protocol); joints: `sathmr parity` against fp32 on the same scenes.", "",
                      md_table(header, rows)])


def t_video_pipeline() -> str:
    d = load("video_pipeline.json")
    rows = []
    for r in d["rows"]:
        s, p = r["serial"], r["pipelined"]
        rows.append([r["model"], r["input"], r["outputs"], str(r["threads"]), f"{s['fps']:g} → {p['fps']:g}",
                     f"{r['gain']:.2f}×", f"{s['busy']:.0%} → {p['busy']:.0%}",
                     f"{s['network_ms']:.0f} → {p['network_ms']:.0f}", f"{s['cores_used']:.2f} → {p['cores_used']:.2f}"])
    header = ["model", "input", "outputs", "threads", "frames/s serial → pipelined", "gain",
              "network busy serial → pipelined", "network ms/frame", "cores used"]
    load_avg = " → ".join(f"{x:.1f}" for x in d["load"])
    return "\n".join([f"**Machine:** {d['cpu']}; 1-minute load average {load_avg} (start → end).", "",
                      md_table(header, rows)])


def t_serve_load() -> str:
    d = load("serve_load.json")
    rows = []
    for r in d["runs"]:
        lat = r["latency_ms"]
        sizes = ", ".join(f"{k}: {v}" for k, v in r["batch_size_per_request"].items())
        rows.append([str(r["max_batch_size"]), f"{r['max_queue_delay_ms']:g}", str(r["clients"]), str(r["requests"]),
                     str(r["errors"]), str(r["wrong_answers"]), f"{r['requests_per_s']:.2f}", num(lat["p50"]),
                     num(lat["p90"]), num(lat["p99"]), f"{r['mean_batch_size_per_request']:.2f}", sizes,
                     f"{r['backend']}, {r['config']}"])
    header = ["max batch", "delay ms", "clients", "requests", "errors", "wrong", "req/s", "p50 ms", "p90 ms",
              "p99 ms", "mean batch", "batch sizes seen (requests)", "model"]
    return "\n".join([machine_line(d["machine"]), "", f"Images in rotation: {', '.join(d['machine']['images'])}.",
                      "", md_table(header, rows)])


def t_embedded_curve() -> str:
    rows = [[str(r["step"]), num(r["f1@0.3"], ".2f"), num(r["precision@0.3"], ".2f"), num(r["recall@0.3"], ".2f"),
             num(r["mpjpe@0.3"]), num(r["mve@0.3"]), num(r.get("orient_med_deg@0.3")), num(r.get("top_conf_med"), ".3f"),
             num(r["f1@0.5"], ".2f")] for r in load("embedded_default_val.jsonl")]
    header = ["step", "F1 @0.3", "precision @0.3", "recall @0.3", "MPJPE mm @0.3", "MVE mm @0.3",
              "orientation error median °", "median best confidence", "F1 @0.5"]
    return "\n".join(["Validation after every epoch (120 validation scenes, seed 1; "
                      "`benchmarks/results/embedded_default_val.jsonl`):", "", md_table(header, rows), "",
                      "![Training curves of the embedded default](@img/embedded_default_curves.png)"])


def t_previous_default() -> str:
    d = load("embedded_default.json")
    rc = d["recipe"]
    rows = []
    for label, key in (("448-px default", "new"), ("the default before it", "previous_default")):
        for tau, e in d["test_seed2_120_scenes"][key].items():
            rows.append([label, tau, num(e["f1"], ".2f"), num(e["precision"], ".2f"), num(e["recall"], ".2f"),
                         num(e["mpjpe"]), num(e["mve"]), str(e["num_matched"])])
    header = ["model", "τ", "F1", "precision", "recall", "MPJPE mm", "MVE mm", "matched"]
    recipe = ", ".join(f"{k} {v}" for k, v in rc.items())
    floor = ", ".join(f"{k.replace('_', ' ')} {v} mm" for k, v in d["mean_pose_floor_mpjpe_mm"].items())
    return "\n".join([f"Recipe: {recipe}. Training time: "
                      + ", ".join(f"{k.replace('_', ' ')} {v} min" for k, v in d["train_minutes"].items()) + ".", "",
                      md_table(header, rows), "", f"Mean-pose floors (MPJPE of a constant pose): {floor}."])


def t_anim() -> str:
    d = load("anim_blender.json")
    tracks = ", ".join(f"#{k}: {v} frames" for k, v in d["tracks"].items())
    drop = d["pose_blend_dropped_mm"]
    return "\n".join([f"Clip: {d['clip']}; tracks {tracks}. Dropping SMPL's pose blend shapes moves the vertices "
                      f"**{drop['mean']:.2f} mm** on average and **{drop['max']:.1f} mm** at most.", "",
                      f"![Frame {d['frame']} of the clip's animation as Blender imports it](@img/{d['picture']})"])


def t_openvino() -> str:
    d = load("openvino.json")
    parity = md_table(["pair", "network, max relative", "tokens identical", "joints mean/max mm", "people matched"],
                      [[k, f"{v['network_rel_max']:.1e}", "yes" if v["tokens_identical"] else "NO",
                        f"{v['joint_mm_mean']:.2f}/{v['joint_mm_max']:.2f}", f"{v['matched']}/{v['people_a']}"]
                       for k, v in d["parity"].items()])
    stages = md_table(["export", "stage A ms", "selection ms", "tokens graph ms", "network ms"],
                      [[k, num(v["scale_map"], ".0f"), num(v["selection"]), num(v["tokens"], ".0f"), num(v["network"], ".0f")]
                       for k, v in d["stages"].items()])
    return "\n".join([bench_tables(d["side_by_side"]), "", "Full-size parity:", "", parity, "",
                      "Where the time goes (per image):", "", stages])


TABLES: dict[str, Callable[[], str]] = {
    "openvino": t_openvino,
    "results_summary": t_results_summary, "results": t_results, "scaling": t_scaling,
    "precision_full": t_precision_full, "int8_full": t_int8_full, "ort_full": t_ort_full, "tiny_compile": t_tiny_compile,
    "precision_scenes": t_precision_scenes, "video_pipeline": t_video_pipeline, "serve_load": t_serve_load,
    "embedded_curve": t_embedded_curve, "previous_default": t_previous_default, "anim": t_anim,
}


def render(markdown: str, depth: int = 0) -> str:
    """Every ``{{ perf NAME }}`` line replaced by its table; an unknown NAME is an error, not an empty spot.

    ``depth``: how many folders below the site root the page lies, for the relative links to ``img/``."""
    def one(m: re.Match) -> str:
        if m.group(1) not in TABLES:
            raise KeyError(f"unknown perf table {m.group(1)!r}; known: {', '.join(sorted(TABLES))}")
        return TABLES[m.group(1)]().replace("](@img/", "](" + "../" * depth + "img/")
    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return render(markdown, page.file.src_uri.count("/"))


def on_files(files, config):
    from mkdocs.structure.files import File
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"img/{png.name}", abs_src_path=str(png)))
    return files
