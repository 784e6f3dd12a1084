"""Track fragmentation on synthetic clips with known identities: the embedded model's detections through
the tracker `sathmr infer` uses, scored against the identities the scenes were rendered with.

    python benchmarks/tracking.py [--clips 3] [--frames 16] [--threshold 0.3] [--json out.json]

Clips: 1, 2 and 3 mannequins walking across the image (``sathmr.train.data.clips.walking_clip``), each
``--clips`` seeds. Prints MOTA, IDF1, identity switches and the track ids each mannequin got.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sathmr.common.hardware import cpu_info  # noqa: E402
from sathmr.runtime.predictor import load_predictor  # noqa: E402
from sathmr.train.data.clips import track_scores, walking_clip  # noqa: E402
from sathmr.train.data.pipeline import BodyModels  # noqa: E402
from sathmr.video.config import TrackerConfig  # noqa: E402
from sathmr.video.tracker import build_tracker  # noqa: E402


def detections(predictor, clip, threshold: float) -> list:
    """Every frame's people at ``threshold`` (the network runs once per clip, whatever is compared)."""
    return [predictor.run_batch([predictor.prepare(frame)], [f"f{f}"]).results[0].people[threshold]
            for f, frame in enumerate(clip.frames)]


def score(people_per_frame: list, truth, cfg: TrackerConfig) -> dict:
    tracker = build_tracker(cfg)
    reported = [[(t.id, t.person.box) for t in tracker.update(people, f)] for f, people in enumerate(people_per_frame)]
    return track_scores(truth, reported)


def summary(rows: list[dict]) -> dict:
    total = {k: sum(r[k] for r in rows) for k in ("id_switches", "false_negatives", "false_positives", "gt")}
    frag = [v for r in rows for v in r["ids_per_person"].values()]
    return {**total, "mota": 1 - (total["false_negatives"] + total["false_positives"] + total["id_switches"]) / total["gt"],
            "mean_idf1": sum(r["idf1"] for r in rows) / len(rows), "mean_ids_per_person": sum(frag) / len(frag),
            "max_ids_per_person": max(frag), "one_id": sum(v == 1 for v in frag), "people": len(frag)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=3, help="seeds per number of people")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dup-iou", default=str(TrackerConfig.dup_iou), help="comma-separated values to compare")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    predictor, info = load_predictor("torch", thresholds=(args.threshold,))
    bodies = BodyModels(info["smpl_dir"])
    clips = [(n, seed, walking_clip(bodies, n, args.frames, seed)) for n in (1, 2, 3) for seed in range(args.clips)]
    dets = [detections(predictor, clip, args.threshold) for _, _, clip in clips]
    print(f"CPU {cpu_info()['cpu']}; embedded default, threshold {args.threshold}; {len(clips)} clips of {args.frames} frames")
    out = {}
    for dup in (float(v) for v in args.dup_iou.split(",")):
        cfg = TrackerConfig(dup_iou=dup)
        rows = [{"people": n, "seed": seed, **score(d, clip.boxes, cfg)} for (n, seed, clip), d in zip(clips, dets)]
        s = summary(rows)
        out[str(dup)] = {"rows": rows, "summary": s}
        print(f"dup_iou {dup}: MOTA {s['mota']:.3f}, mean IDF1 {s['mean_idf1']:.3f}, id switches {s['id_switches']}, "
              f"FP {s['false_positives']} FN {s['false_negatives']} of {s['gt']}, track ids per mannequin mean "
              f"{s['mean_ids_per_person']:.2f} max {s['max_ids_per_person']}, one id: {s['one_id']}/{s['people']}")
        for r in rows:
            print(f"    {r['people']} walking, seed {r['seed']}: ids per mannequin {r['ids_per_person']}, "
                  f"switches {r['id_switches']}, IDF1 {r['idf1']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
