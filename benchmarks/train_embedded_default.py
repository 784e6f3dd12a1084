"""Train the embedded default model, evaluate it and plot its curves: the whole recipe in one command.

    OMP_NUM_THREADS=1 python benchmarks/train_embedded_default.py --out runs/embedded
    python benchmarks/train_embedded_default.py --out runs/embedded --install   # and ship it

It renders the synthetic scenes (train / validation / an unseen test seed), trains with the recipe
below on one CPU thread (resumable: rerun the same command after an interruption), evaluates on the
validation scenes after every epoch at both thresholds, scores the final model on the unseen test
scenes with `sathmr eval` and its defaults (plus threshold 0.3), and writes ``curves.png``,
``curves.json`` and ``final_metrics.json`` into ``--out``. ``--install`` copies the model over
``sathmr/data/default_tiny.safetensors``.

Why the recipe differs from the paper's (the paper fine-tunes a pretrained DINOv2 for 60 GPU-epochs;
this trains a 1 M-parameter model from scratch for about two CPU hours): a 15x higher learning rate for
both groups with a linear warm-up, so that the first updates of a randomly initialised trunk do not
diverge; a cosine that ends at 5 % rather than 0; and the ground-truth scale map driving token selection
for the first third of training, so that the decoder learns from the right high-resolution tokens while
the scale head is still poor. Every loss and weight is the original's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import click
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from sathmr.train.engine import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.5, 0.3)


#: the shipped run's optimisation (every loss and weight the original's; the README says why these values)
TRAIN = TrainConfig(epochs=7, batch_size=8, lr=6e-4, lr_encoder=6e-4, warmup_steps=200, min_lr_ratio=0.05,
                    gt_scale_epochs=4, seed=42, save_every_steps=200)


@dataclass
class Recipe:
    config: str = "tiny336"
    init: str = "embedded"      # warm start: "embedded" (the shipped weights), a checkpoint path, or "scratch"
    train_scenes: int = 4800
    val_scenes: int = 120
    test_scenes: int = 120
    train_seed: int = 0
    val_seed: int = 1
    test_seed: int = 2          # scenes never seen in training nor used to pick the recipe
    train: TrainConfig = field(default_factory=lambda: TRAIN)
    init_sha256: str = ""


def ensure_scenes(root: Path, n: int, seed: int, split: str, smpl_dir: Path | None) -> None:
    from sathmr.train.data.synthetic import SPLITS, generate_dataset

    annot = root / "bedlam" / f"bedlam_smpl_{SPLITS[split]}.npz"
    if not annot.is_file():
        generate_dataset(root, n, seed=seed, smpl_dir=smpl_dir, split=split)


def orientation_error_deg(pred_aa: np.ndarray, gt_aa: np.ndarray) -> float:
    """Geodesic angle (degrees) between two axis-angle global orientations."""
    rel = Rotation.from_rotvec(pred_aa).inv() * Rotation.from_rotvec(gt_aa)
    return float(np.degrees(rel.magnitude()))


def validation_fn(val_set, body, smpl_dir: Path, log_path: Path, epoch_steps: int):
    """Score the validation scenes after each epoch at both thresholds, in one pass, with the AGORA
    protocol's accumulator, plus the median global-orientation error of the people matched at the
    lower threshold (the quantity the first attempt never learned); append a JSON line to ``log_path``."""
    from sathmr.backends.torch_backend import TorchBackend
    from sathmr.runtime.predictor import Predictor
    from sathmr.train.data.pipeline import collate
    from sathmr.train.engine import eval_items
    from sathmr.train.metrics import EvalAccumulator

    body_verts = smpl_dir / "body_verts_smpl.npy"
    verts = body_verts if body_verts.is_file() else None
    state = {"epoch": len(log_path.read_text().splitlines()) if log_path.is_file() else 0}   # resumed runs

    def run(model) -> dict:
        predictor = Predictor(TorchBackend(model), body, THRESHOLDS)
        accs = {t: EvalAccumulator("agora", body_verts=verts) for t in THRESHOLDS}
        orient_err, top_conf = [], []
        loader = torch.utils.data.DataLoader(val_set, batch_size=4, collate_fn=collate)
        for imgs, targets in loader:
            dec = predictor.run_batch(eval_items(imgs, targets), [t["img_path"] for t in targets]).decoded
            for i, tgt in enumerate(targets):
                conf = dec["pred_confs"][i, :, 0]
                top_conf.append(float(conf.max()))
                gt = {k: tgt[k].numpy() for k in ("j2ds", "j3ds", "verts")}
                for t, acc in accs.items():
                    q = np.flatnonzero(conf > t)
                    pred = {"j2ds": dec["pred_j2ds"][i, q], "j3ds": dec["pred_j3ds"][i, q], "verts": dec["pred_verts"][i, q]}
                    match = acc.add(pred, gt)
                    if t == min(THRESHOLDS):
                        orient_err += [orientation_error_deg(dec["pred_poses"][i, q[a], :3], tgt["poses"][b, :3].numpy())
                                       for a, b in match.matches]
        row = {}
        for t, acc in accs.items():
            m = acc.result()
            row.update({f"{k}@{t}": m[k] for k in ("f1", "precision", "recall", "mpjpe", "mve")})
        row["orient_med_deg@0.3"] = round(float(np.median(orient_err)), 1) if orient_err else None
        row["top_conf_med"] = round(float(np.median(top_conf)), 3)
        state["epoch"] += 1
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"step": state["epoch"] * epoch_steps, **row}) + "\n")
        return row

    return run


def final_eval(model_path: Path, data: Path, smpl_dir: Path, out: Path) -> dict:
    """`sathmr eval` on the unseen test scenes: its defaults (threshold 0.5), then threshold 0.3."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = {}
    for t in THRESHOLDS:
        js = out / f"eval_test_{t}.json"
        cmd = [sys.executable, "-m", "sathmr", "eval", "-i", str(data), "--checkpoint", str(model_path),
               "--smpl-dir", str(smpl_dir), "--json", str(js)] + (["--threshold", str(t)] if t != 0.5 else [])
        subprocess.run(cmd, check=True, env=env)
        res[str(t)] = json.loads(js.read_text())
    return res


def train_losses(log_dir: Path) -> list[dict]:
    """(step, loss) of every invocation of a resumed run, from its TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[int, float] = {}
    for f in sorted(log_dir.rglob("events.out.tfevents*")):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0})
        ea.Reload()
        if "train/loss" in ea.Tags()["scalars"]:
            by_step.update({e.step: e.value for e in ea.Scalars("train/loss")})
    return [{"step": k, "loss": by_step[k]} for k in sorted(by_step)]


def plot_curves(history: list[dict], val_rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r["step"] for r in history])
    loss = np.array([r["loss"] for r in history])
    fig, ax = plt.subplots(1, 4, figsize=(15, 3.2), dpi=80)
    if len(loss):
        k = max(1, min(30, len(loss) // 10))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax[0].plot(steps, loss, color="0.8", lw=0.6)
        ax[0].plot(steps[k - 1:], smooth, color="C0")
    ax[0].set(title="training loss", xlabel="step")
    vs = [r["step"] for r in val_rows]
    for t, style in zip(THRESHOLDS, ("-", "--")):
        ax[1].plot(vs, [r[f"f1@{t}"] for r in val_rows], style, color="C1", label=f"F1 τ={t}")
        ax[2].plot(vs, [r[f"mpjpe@{t}"] or np.nan for r in val_rows], style, color="C2", label=f"MPJPE τ={t}")
        ax[2].plot(vs, [r[f"mve@{t}"] or np.nan for r in val_rows], style, color="C3", label=f"MVE τ={t}")
    ax[3].plot(vs, [r.get("orient_med_deg@0.3") or np.nan for r in val_rows], color="C4")
    ax[3].set(title="median orientation error (°, τ=0.3)", xlabel="step", ylim=(0, None))
    ax[3].grid(alpha=0.3)
    ax[1].axhline(0.8, color="0.5", lw=0.8, ls=":")          # issue #16 targets at threshold 0.5
    ax[2].axhline(150, color="C2", lw=0.8, ls=":")
    ax[2].axhline(170, color="C3", lw=0.8, ls=":")
    ax[1].set(title="validation F1", xlabel="step", ylim=(0, 1))
    ax[2].set(title="validation errors (mm)", xlabel="step")
    for a in ax[1:3]:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


@click.command()
@click.option("--out", "out_dir", default="runs/embedded", show_default=True, type=click.Path(file_okay=False))
@click.option("--data", "data_dir", default=None, help="Scene folder (default OUT/data); reused when present.")
@click.option("--epochs", type=int, default=TRAIN.epochs, show_default=True)
@click.option("--max-steps", type=int, default=0, help="Stop early (short probes); the schedule still spans --epochs.")
@click.option("--lr", type=float, default=TRAIN.lr, show_default=True)
@click.option("--batch-size", type=int, default=TRAIN.batch_size, show_default=True)
@click.option("--init", default=Recipe.init, show_default=True,
              help="Warm start: 'embedded' (the shipped weights, copied to OUT/init.safetensors on the first run so "
                   "that a resumed or repeated run starts from the same file), a checkpoint, or 'scratch'.")
@click.option("--install", is_flag=True, help="Copy the final model over the embedded default.")
def main(out_dir, data_dir, epochs, max_steps, lr, batch_size, init, install):
    torch.set_num_threads(1)
    from sathmr.body import load_mean_params
    from sathmr.model import build_model
    from sathmr.model.checkpoint import load_on_canvas
    from sathmr.model.config import get_config
    from sathmr.train.cli import open_sets
    from sathmr.train.data.pipeline import BodyModels
    from sathmr.train.engine import train
    from sathmr.zoo.weights import EMBEDDED

    rc = Recipe(init=init, train=replace(TRAIN, epochs=epochs, max_steps=max_steps, lr=lr, lr_encoder=lr,
                                         batch_size=batch_size))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir else out / "data"
    test = data.with_name(data.name + "_test")
    smpl = data / "smpl"
    t0 = time.perf_counter()
    ensure_scenes(data, rc.train_scenes, rc.train_seed, "train", None)
    ensure_scenes(data, rc.val_scenes, rc.val_seed, "val", smpl)
    ensure_scenes(test, rc.test_scenes, rc.test_seed, "val", smpl)
    print(f"scenes ready ({time.perf_counter() - t0:.0f} s)", flush=True)

    cfg = get_config(rc.config)
    bodies = BodyModels(smpl)
    body = bodies.get("neutral")
    mp, ms = load_mean_params(smpl)
    torch.manual_seed(rc.train.seed)
    model = build_model(cfg, torch.from_numpy(mp), torch.from_numpy(ms))
    if rc.init != "scratch":     # a resumed run loads its checkpoint over this
        init_file = out / "init.safetensors"
        if not init_file.is_file():
            shutil.copyfile(EMBEDDED if rc.init == "embedded" else rc.init, init_file)
        model.load_state_dict(load_on_canvas(init_file, cfg, (mp, ms)).state_dict())
        rc.init_sha256 = hashlib.sha256(init_file.read_bytes()).hexdigest()
    train_set = open_sets(data, [("bedlam", "train_6fps")], bodies, cfg, train=True, seed=rc.train.seed)
    val_set = open_sets(data, [("bedlam", "validation_6fps")], bodies, cfg, train=False)
    tc = rc.train
    (out / "recipe.json").write_text(json.dumps(asdict(rc), indent=1))
    val_log = out / "val.jsonl"
    eval_fn = validation_fn(val_set, body, smpl, val_log, len(train_set) // rc.train.batch_size)
    t1 = time.perf_counter()
    res = train(model, train_set, body, out, tc, eval_fn=eval_fn, log=lambda s: print(s, flush=True))
    minutes = (time.perf_counter() - t1) / 60
    print(f"trained {res['state']['global_step']} steps in {minutes:.1f} min (this invocation)", flush=True)

    val_rows = [json.loads(line) for line in val_log.read_text().splitlines()] if val_log.is_file() else []
    history = train_losses(out / "logs")
    (out / "curves.json").write_text(json.dumps({"train": history, "val": val_rows}))
    plot_curves(history, val_rows, out / "curves.png")
    model_path = out / "model_final.safetensors"
    metrics = final_eval(model_path, test, smpl, out)
    (out / "final_metrics.json").write_text(json.dumps({"steps": res["state"]["global_step"], **metrics}, indent=1))
    print(json.dumps(metrics, indent=1))
    if install:
        shutil.copyfile(model_path, EMBEDDED)
        print(f"installed {model_path} as {EMBEDDED}")


if __name__ == "__main__":
    main()
