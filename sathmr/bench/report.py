"""Reports of a benchmark result: text tables for the terminal, Markdown for the README."""

from __future__ import annotations

from sathmr.bench.run import STAGES
from sathmr.bench.scaling import MIXED_LAYOUT


def _fmt_mb(mb: float | None) -> str:
    return f"{mb:.0f}" if mb is not None else "-"


def _fmt_tokens(t: dict) -> str:
    return f"{t['level0']:.0f}/{t['level1']:.0f}/{t['level2']:.0f}"


def backend_rows(result: dict) -> list[list[str]]:
    rows = []
    for name, r in result["backends"].items():
        for s in STAGES:
            st = r["stages"][s]
            vs = {"end_to_end": r["speedup_vs_torch"], "network": r["network_speedup_vs_torch"]}.get(s)
            rows.append([name, s, f"{st['p50_ms']:.1f}", f"{st['p90_ms']:.1f}", f"{st['p99_ms']:.1f}",
                         f"{st['images_per_s']:.3f}", f"{vs:.2f}x" if vs else ""])
    return rows


BACKEND_HEADER = ["backend", "stage", "p50 ms", "p90 ms", "p99 ms", "images/s", "vs torch"]


def resource_rows(result: dict) -> list[list[str]]:
    rows = []
    for name, r in result["backends"].items():
        seq = r["tokens"]["static_sequence"]
        base = r["baseline_rss_mb"]
        rows.append([name, _fmt_tokens(r["tokens"]["mean"]), f"static {seq['stage_c']}" if seq else "dynamic",
                     _fmt_mb(r["peak_rss_mb"]), _fmt_mb(r["peak_rss_mb"] - base if base is not None else None),
                     _fmt_mb(r["cuda_max_memory_allocated_mb"])])
    return rows


RESOURCE_HEADER = ["backend", "tokens L0/L1/L2 (mean)", "stage-C sequence", "peak RSS MB (own process)",
                   "above process baseline MB", "CUDA max alloc MB"]


def precision_rows(result: dict) -> list[list[str]]:
    """Speed and accuracy side by side: each entry against the reference (torch fp32 when benchmarked)."""
    rows = []
    x = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
    for name, r in result["backends"].items():
        a = r.get("accuracy")
        if a is None:
            acc = ["(reference)", "-", "-", "-"]
        else:
            lost = f", {a['unmatched']} unmatched" if a["unmatched"] else ""
            acc = ["yes" if a["tokens_identical"] else "NO", f"{a['matched']}/{a['people_a']}{lost}",
                   f"{a['joint_mm_mean']:.2f}/{a['joint_mm_max']:.2f}", f"{a['conf_diff_max']:.3f}"]
        rows.append([name, r.get("precision", "fp32"), f"{r['stages']['network']['p50_ms']:.1f}",
                     x(r["network_speedup_vs_torch"]), x(r["speedup_vs_torch"]), *acc,
                     f"{r['compile_s']:.0f}" if r.get("compile_s") is not None else "-"])
    return rows


PRECISION_HEADER = ["backend", "precision", "network p50 ms", "network vs torch", "end-to-end vs torch",
                    "tokens identical", "people matched", "joints mean/max mm", "max conf diff", "compile s"]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i > 1 else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
                      *("| " + " | ".join(map(str, r)) + " |" for r in rows)])


def scaling_rows(scaling: dict) -> tuple[list[list[str]], list[list[str]]]:
    budget = [[str(p["sat_cells"]), f"{p['fraction']:.3g}", str(p["tokens"]["total"]), f"{p['median_ms']:.1f}", str(p["n"])]
              for p in scaling["budget"]]
    lo = scaling["all_level1"]
    budget.append([f"0 (all {lo['level1_cells']} level-1)", "-", str(lo["tokens"]["total"]), f"{lo['median_ms']:.1f}", str(lo["n"])])
    sizes = [[str(s["side"]), str(s["mixed"]["tokens"]["total"]), f"{s['mixed']['median_ms']:.1f}",
              str(s["all_high_res"]["tokens"]["total"]), f"{s['all_high_res']['median_ms']:.1f}",
              f"{s['all_high_res']['median_ms'] / s['mixed']['median_ms']:.2f}x"] for s in scaling["sizes"]]
    return budget, sizes


SCALING_BUDGET_HEADER = ["SAT cells", "fraction", "tokens", "network ms (median)", "n"]
SCALING_SIZE_HEADER = ["side px", "mixed tokens", "mixed ms", "all-high-res tokens", "all-high-res ms", "saving"]


def format_report(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [result["model"]["note"], "",
             f"machine: {m['cpu']} (flags {' '.join(m['cpu_flags']) or '-'}), {m['cores_logical']} logical cores; torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}; threads {m['threads']}; device {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}; "
             f"load average {m.get('load_average_1m_at_start')} -> {m.get('load_average_1m_at_end')}",
             f"inputs: {', '.join(result['inputs']['names'])} ({result['inputs']['source']}); batch {s['batch']}, "
             f"{s['iters']} measured passes after {s['warmup']} warm-up, backends interleaved", ""]
    if result["backends"]:
        lines += [text_table(BACKEND_HEADER, backend_rows(result)), "", text_table(RESOURCE_HEADER, resource_rows(result)),
                  "", "speed and accuracy (accuracy: task-level parity against the reference on every input; "
                  "speed-ups: p50 against torch fp32):", text_table(PRECISION_HEADER, precision_rows(result))]
    for name, why in result["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    if result.get("scaling"):
        budget, sizes = scaling_rows(result["scaling"])
        lines += ["", f"scaling (network only, PyTorch dynamic, square {result['scaling']['canvas']} canvas):",
                  text_table(SCALING_BUDGET_HEADER, budget), "", text_table(SCALING_SIZE_HEADER, sizes)]
    return "\n".join(lines)


def format_markdown(result: dict, plot_name: str | None = None) -> str:
    m, s = result["machine"], result["settings"]
    out = ["## Performance", "",
           f"Measured with `{s['command']}` on {m['cpu']} (flags {' '.join(m['cpu_flags']) or '-'}; {m['cores_logical']} logical cores, {m['threads']} threads, "
           f"device {m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}), torch {m['torch']}, onnxruntime "
           f"{m['onnxruntime']}, {m['platform']}; 1-minute load average {m.get('load_average_1m_at_start')} at the "
           f"start, {m.get('load_average_1m_at_end')} at the end (other processes share the machine when it exceeds "
           "the thread count).", "",
           f"*{result['model']['note']}*", "",
           f"Inputs: {', '.join(result['inputs']['names'])}; batch {s['batch']}; {s['iters']} measured passes after "
           f"{s['warmup']} warm-up; backends interleaved pass by pass. Pre-processing excludes file decoding; "
           "post-processing includes SMPL (vertices) and thresholding. Token counts are per image (level 0 = high-res).", ""]
    if result["backends"]:
        out += [md_table(BACKEND_HEADER, backend_rows(result)), "", md_table(RESOURCE_HEADER, resource_rows(result)), "",
                "Speed and accuracy side by side (accuracy: `sathmr parity`'s task-level comparison against the reference "
                "entry on every input; `(emulated)`: the CPU has no kernels for that precision, so its speed is not "
                "what supporting hardware gets):", "", md_table(PRECISION_HEADER, precision_rows(result)), ""]
    if result.get("scaling"):
        budget, sizes = scaling_rows(result["scaling"])
        out += ["### Scaling (network only, PyTorch dynamic)", "",
                f"Token layout forced through the scale map on a square {result['scaling']['canvas']} canvas: SAT cells "
                "become 4 full-resolution tokens each, the rest of the image is background (one level-2 token per 2x2 "
                "group). All cells SAT = every token at full resolution, the cost SAT avoids.", "",
                md_table(SCALING_BUDGET_HEADER, budget), "",
                f"Input size: mixed layout = {MIXED_LAYOUT[0]:g} of the 2x2 groups SAT, {MIXED_LAYOUT[1]:g} level-1, "
                "the rest background.", "", md_table(SCALING_SIZE_HEADER, sizes), ""]
        if plot_name:
            out += [f"![scaling]({plot_name})", ""]
    return "\n".join(out)
