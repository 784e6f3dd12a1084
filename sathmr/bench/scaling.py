"""Scaling: network latency against the token layout and the input size (PyTorch dynamic).

The sweep forces the token layout through ``scale_map_override`` to show how the network's latency grows
with the number of high-resolution (SAT) cells and with the input size — the curve that shows what
scale-adaptive tokens save compared with running every token at full resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from sathmr.common.optional import require
from sathmr.common.timing import StageTimer
from sathmr.model import SATHMR

# forced scale-map cells for the scaling sweep: (conf, scale)
SAT_CELL, LEVEL1_CELL, BACKGROUND_CELL = (1.0, 0.1), (1.0, 0.9), (0.0, 0.5)
SAT_FRACTIONS = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)    # of the 2x2 cell groups, for the SAT sweep
MIXED_LAYOUT = (1 / 8, 1 / 4)                               # SAT / level-1 group fractions at every input size
SIZE_FRACTIONS = (0.35, 0.5, 0.75, 1.0)                     # of the canvas side, rounded to multiples of 56


def forced_layout(hc: int, wc: int, sat_groups: int, level1_groups: int) -> torch.Tensor:
    """A (1, hc, wc, 2) [conf, scale] map: the first aligned 2x2 groups (raster order) SAT, the next
    level-1, the rest background — so the token count is exactly 16·sat + 4·level1 + background groups."""
    n = (hc // 2) * (wc // 2)
    if not (0 <= sat_groups and 0 <= level1_groups and sat_groups + level1_groups <= n):
        raise ValueError(f"{sat_groups} + {level1_groups} groups do not fit {n}")
    kinds = torch.full((n,), 2)
    kinds[:sat_groups] = 0
    kinds[sat_groups:sat_groups + level1_groups] = 1
    table = torch.tensor([SAT_CELL, LEVEL1_CELL, BACKGROUND_CELL])
    g = table[kinds].view(hc // 2, wc // 2, 2)
    return g.repeat_interleave(2, 0).repeat_interleave(2, 1)[None]


def time_network(model: SATHMR, side: int, sat_groups: int, level1_groups: int, iters: int, max_seconds: float,
                 device: str) -> dict:
    """Median network latency (PyTorch dynamic) of a square ``side`` input with a forced layout."""
    cfg = model.cfg
    hc = wc = side // cfg.cell_size
    dev = torch.device(device)
    g = torch.Generator().manual_seed(side)
    x = torch.randn(1, 3, side, side, generator=g).to(dev)
    hw = torch.tensor([[side, side]], device=dev)
    smap = forced_layout(hc, wc, sat_groups, level1_groups).to(dev)
    cuda = dev.type == "cuda"
    samples, counts = [], None
    with torch.inference_mode():
        while len(samples) < iters and (not samples or sum(samples) < max_seconds):
            timer = StageTimer(cuda)
            timer.mark()
            out = model(x, hw, scale_map_override=smap)
            timer.mark()
            samples.append(timer.intervals()[0])
            counts = out["tokens"]["tok_counts"][0].tolist()
    tokens = sum(counts)
    return {"side": side, "cells": hc * wc, "sat_cells": 4 * sat_groups, "level1_cells": 4 * level1_groups,
            "tokens": {"level0": counts[0], "level1": counts[1], "level2": counts[2], "total": tokens},
            "stage_c_sequence": tokens + 1, "median_ms": float(np.median(samples) * 1000), "n": len(samples)}


def run_scaling(model: SATHMR, device: str = "cpu", iters: int = 3, max_seconds: float = 10.0,
                sat_fractions: Sequence[float] = SAT_FRACTIONS, size_fractions: Sequence[float] = SIZE_FRACTIONS,
                log: Callable[[str], None] = lambda s: None) -> dict:
    """Two sweeps. Budget: 0 → all SAT cells on the full canvas (all = every token at full resolution,
    the model SAT avoids running), background elsewhere, plus the all-level-1 (low-resolution) point.
    Input size: square inputs of growing side with a fixed mixed layout and with everything high-res."""
    cfg = model.cfg
    S, m = cfg.input_size, cfg.pad_multiple
    cache: dict[tuple[int, int, int], dict] = {}

    def point(side: int, sat: int, l1: int) -> dict:
        key = (side, sat, l1)
        if key not in cache:
            cache[key] = time_network(model, side, sat, l1, iters, max_seconds, device)
            r = cache[key]
            log(f"  side {side}, {r['sat_cells']} SAT + {r['level1_cells']} level-1 cells: {r['tokens']['total']} tokens, "
                f"{r['median_ms']:.1f} ms (n={r['n']})")
        return cache[key]

    groups = (S // cfg.cell_size // 2) ** 2
    time_network(model, S, 0, 0, 1, 0.0, device)     # warm-up at the cheapest point, not reported
    budget = [dict(point(S, round(f * groups), 0), fraction=f) for f in sat_fractions]
    low_res = point(S, 0, groups)
    sides = sorted({max(1, round(S / m * f)) * m for f in size_fractions})
    sizes = []
    for side in sides:
        n = (side // cfg.cell_size // 2) ** 2
        sat, l1 = round(MIXED_LAYOUT[0] * n), round(MIXED_LAYOUT[1] * n)
        sizes.append({"side": side, "mixed": point(side, sat, l1), "all_high_res": point(side, n, 0)})
    return {"backend": "torch", "device": device, "canvas": S, "budget": budget, "all_level1": low_res,
            "sizes": sizes, "mixed_layout": {"sat_group_fraction": MIXED_LAYOUT[0],
                                             "level1_group_fraction": MIXED_LAYOUT[1]},
            "iters": iters, "max_seconds_per_point": max_seconds}


def plot_scaling(scaling: dict, path: Path) -> Path:
    """The two sweeps side by side as a PNG (matplotlib, imported only here)."""
    mpl = require("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    bud = scaling["budget"]
    a.plot([p["sat_cells"] for p in bud], [p["median_ms"] for p in bud], "o-", label="SAT cells, rest background")
    lo = scaling["all_level1"]
    a.axhline(lo["median_ms"], color="grey", ls="--", label=f"all level-1 ({lo['tokens']['total']} tokens, low-res)")
    for p in bud:
        a.annotate(f"{p['tokens']['total']} tok", (p["sat_cells"], p["median_ms"]), textcoords="offset points",
                   xytext=(4, -12), fontsize=7)
    a.set_xlabel(f"high-resolution (SAT) cells on the {scaling['canvas']}² canvas")
    a.set_ylabel("network latency, median ms")
    a.set_title("Latency vs high-res token budget")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    sides = [s["side"] for s in scaling["sizes"]]
    b.plot(sides, [s["mixed"]["median_ms"] for s in scaling["sizes"]], "o-", label="scale-adaptive (mixed layout)")
    b.plot(sides, [s["all_high_res"]["median_ms"] for s in scaling["sizes"]], "s-", label="every token at full resolution")
    b.set_xlabel("input side (px, square)")
    b.set_ylabel("network latency, median ms")
    b.set_title("Latency vs input size")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle(f"SAT-HMR network, PyTorch dynamic, {scaling['device']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
