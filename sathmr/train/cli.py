"""`sathmr train` and `sathmr eval`."""

from __future__ import annotations

import math
from pathlib import Path

import click

from sathmr.backends.formats import model_options
from sathmr.backends.precision import precision_options
from sathmr.common.errors import SathmrError
from sathmr.common.options import (
    CONFIG_HELP,
    Command,
    batch_size_option,
    device_option,
    input_option,
    output_option,
    threshold_option,
)

PROTOCOL_THRESHOLDS = {"agora": 0.5, "3dpw": 0.3}   # the official configs' tau (spec §4.2)


def parse_sets(specs: tuple[str, ...], default: str) -> list[tuple[str, str]]:
    """'bedlam:train_6fps' → ('bedlam', 'train_6fps')."""
    out = []
    for spec in specs or (default,):
        name, _, split = spec.partition(":")
        if not split:
            raise SathmrError(f"dataset {spec!r} needs a split, e.g. bedlam:train_6fps")
        out.append((name, split))
    return out


def open_sets(root, specs, bodies, cfg, train: bool, seed: int = 0):
    import torch

    from sathmr.train.data import open_dataset
    from sathmr.train.data.pipeline import HMRDataset

    sets = [HMRDataset(open_dataset(root, n, s), bodies, cfg, train=train, seed=seed) for n, s in specs]
    return sets[0] if len(sets) == 1 else torch.utils.data.ConcatDataset(sets)


def body_for(smpl_dir, data_root):
    """The SMPL folder: given, else the one `sathmr data synthetic` wrote next to the data, else weights/."""
    from sathmr.body.assets import default_smpl_dir

    if smpl_dir:
        return Path(smpl_dir)
    beside = Path(data_root) / "smpl"
    return beside if beside.is_dir() else default_smpl_dir()


#: metric → (unit, what it is), for the tables `sathmr eval` and `sathmr demo` print (``kid_*``: the same on kids)
METRICS = {
    "f1": ("", "detection F1 (a person is found when a prediction matches it)"),
    "precision": ("", "found people among the predictions"),
    "recall": ("", "people found among the ground truth"),
    "mpjpe": ("mm", "mean per-joint position error of the matched people"),
    "mve": ("mm", "mean vertex error of the matched people"),
    "nmje": ("mm", "normalised MPJPE: MPJPE / F1 (penalises missed and false people)"),
    "nmve": ("mm", "normalised MVE: MVE / F1"),
    "pa_mpjpe": ("mm", "MPJPE after Procrustes alignment"),
    "pa_mve": ("mm", "MVE after Procrustes alignment"),
    "num_matched": ("", "people matched and measured"),
}


def metrics_table(metrics: dict, definitions: dict | None = None) -> str:
    """Metric, value with its unit, and what it measures (with ``definitions``: protocol, threshold, joint set)."""
    keys = [k for k in (*METRICS, *(f"kid_{k}" for k in METRICS), "kid_num_gt") if k in metrics]
    unit, meaning = {}, {}
    for k in keys:
        unit[k], meaning[k] = METRICS.get(k.removeprefix("kid_"), ("", "ground-truth people flagged kid"))
    width = max(len(k) for k in keys)
    vals = {k: f"{metrics[k]} {unit[k]}".rstrip() for k in keys}
    vwidth = max(len(v) for v in vals.values())
    about = {k: ((definitions or {}).get(k) or meaning[k]).removeprefix(f"{unit[k]}, ") for k in keys}   # the unit is shown once
    return "\n".join(f"{k:<{width}}  {vals[k]:<{vwidth}}  {about[k]}" for k in keys)


SMPL_DATA_HELP = "SMPL folder (default: the smpl/ folder `sathmr data synthetic` writes next to the data, else weights/smpl_data/smpl)."


@click.command("train", cls=Command, renamed={"--data": "--input"})
@input_option(name="data_root", type=click.Path(file_okay=False), help="Dataset root (spec layout; `sathmr data synthetic` writes one).")
@click.option("--dataset", "datasets", multiple=True, help="name:split, repeatable (default bedlam:train_6fps).")
@click.option("--val-dataset", "val_sets", multiple=True, help="name:split evaluated after each epoch (default bedlam:validation_6fps if present).")
@click.option("--config", default="sat_644", show_default=True, help="Architecture to train (`tiny336`: the embedded default's).")
@click.option("--smpl-dir", type=click.Path(file_okay=False), help=SMPL_DATA_HELP)
@click.option("--init", "init", default=None, help="'dinov2:PATH' or 'dinov2:dinov2_vitb14' (pretrained backbone), or a "
              "SAT-HMR checkpoint (official or ours; a file or a name from `sathmr models`).")
@output_option(type=click.Path(file_okay=False), help="Run folder: checkpoints, logs (resumed when it holds checkpoints).")
@click.option("--epochs", type=int, default=60, show_default=True)
@batch_size_option(default=6, help="Images per step and process.")
@click.option("--lr", type=float, default=4e-5, show_default=True)
@click.option("--lr-encoder", type=float, default=2e-5, show_default=True)
@click.option("--max-steps", type=int, default=0, help="Stop after this many steps (schedule still spans --epochs).")
@click.option("--warmup-steps", type=int, default=0, show_default=True, help="Linear LR warm-up (the original has none).")
@click.option("--min-lr-ratio", type=float, default=0.0, show_default=True, help="Cosine floor as a fraction of the LR.")
@click.option("--gt-scale-epochs", type=int, default=1, show_default=True, help="Epochs in which the GT scale map selects tokens.")
@click.option("--save-every", type=int, default=0, help="Also checkpoint every N steps.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Data-loading worker processes (0: in the training process).")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@threshold_option(default=0.5, help="Detection threshold of the validation.")
@click.option("--no-resume", is_flag=True, help="Start over even if OUTPUT has checkpoints.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--no-dn", is_flag=True, help="Train without the denoising queries.")
def train_command(data_root, datasets, val_sets, config, smpl_dir, init, output, epochs, batch_size, lr, lr_encoder,
                  max_steps, warmup_steps, min_lr_ratio, gt_scale_epochs, save_every, workers, mixed_precision,
                  threshold, no_resume, seed, no_dn):
    """Train SAT-HMR; several processes: `torchrun --nproc-per-node N -m sathmr train ...` (--batch-size is
    per process) or `accelerate launch -m sathmr train ...`."""
    import torch

    from sathmr.backends import TorchBackend
    from sathmr.body import load_mean_params
    from sathmr.model import build_model
    from sathmr.model.checkpoint import init_from_dinov2, load_on_canvas
    from sathmr.model.config import get_config
    from sathmr.runtime.distributed import launched_rank
    from sathmr.runtime.predictor import Predictor
    from sathmr.train.data.pipeline import BodyModels
    from sathmr.train.engine import TrainConfig, evaluate, train
    from sathmr.zoo.local import model_file
    from sathmr.zoo.registry import MODELS
    from sathmr.zoo.weights import checkpoint_path

    cfg = get_config(config)
    smpl = body_for(smpl_dir, data_root)
    bodies = BodyModels(smpl)
    body = bodies.get("neutral")
    mp, ms = load_mean_params(smpl)
    model = build_model(cfg, torch.from_numpy(mp), torch.from_numpy(ms))
    if init:
        if init.startswith("dinov2:"):
            src = init.split(":", 1)[1]                      # a file, or the registry's dinov2_vitb14
            init_from_dinov2(model, model_file(src) if src in MODELS else src)
        else:   # a SAT-HMR checkpoint of this architecture, possibly on another canvas
            model.load_state_dict(load_on_canvas(checkpoint_path(init), cfg, (mp, ms)).state_dict())
    train_set = open_sets(data_root, parse_sets(datasets, "bedlam:train_6fps"), bodies, cfg, train=True, seed=seed)
    eval_fn = None
    vspecs = parse_sets(val_sets, "bedlam:validation_6fps")
    if val_sets or (Path(data_root) / "bedlam" / "bedlam_smpl_validation_6fps.npz").is_file():
        val_set = open_sets(data_root, vspecs, bodies, cfg, train=False)

        def eval_fn(m):
            backend = TorchBackend(m, device=str(next(m.parameters()).device))
            return evaluate(Predictor(backend, body, (threshold,)), val_set, threshold)
    tc = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_encoder=lr_encoder, max_steps=max_steps,
                     save_every_steps=save_every, num_workers=workers, mixed_precision=mixed_precision, seed=seed,
                     use_dn=not no_dn, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
                     gt_scale_epochs=gt_scale_epochs)
    echo = click.echo if launched_rank() == 0 else (lambda *args, **kwargs: None)
    echo(f"training {cfg.name} on {len(train_set)} images ({', '.join(':'.join(s) for s in parse_sets(datasets, 'bedlam:train_6fps'))}); "
         f"body model {smpl}; output {output}", err=True)
    res = train(model, train_set, body, Path(output), tc, resume=not no_resume, eval_fn=eval_fn, log=lambda s: click.echo(s, err=True))
    echo(f"done: {res['state']['global_step']} steps; model {Path(output) / 'model_final.safetensors'}")


@click.command("eval", cls=Command, renamed={"--data": "--input"})
@input_option(name="data_root", type=click.Path(file_okay=False), help="Dataset root (spec layout; `sathmr data synthetic` writes one).")
@click.option("--dataset", "dataset", default="bedlam:validation_6fps", show_default=True, help="name:split")
@model_options
@precision_options("accuracy")
@click.option("--config", default=None, help=CONFIG_HELP)
@click.option("--smpl-dir", type=click.Path(file_okay=False), help=SMPL_DATA_HELP)
@threshold_option(default=None, help="Detection threshold; default: the protocol's official one (AGORA/BEDLAM 0.5, 3DPW 0.3).")
@click.option("--protocol", type=click.Choice(["agora", "3dpw"]), default=None, help="Default: 3dpw for 3dpw data, else agora.")
@batch_size_option(default=4)
@click.option("--limit", type=int, default=0, help="Evaluate only the first N images.")
@device_option()
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the metrics as JSON.")
@click.option("--agora-submission", "submission_path", type=click.Path(),
              help="Also write the AGORA test submission (the original's test_agora layout) of the kept people: this "
                   "zip, or pred_<time>.zip in this folder; e.g. with --dataset agora:test --model sat_644_agora.")
def eval_command(data_root, dataset, checkpoint, backend, precision, compile_, model_path, config, smpl_dir, threshold, protocol,
                 batch_size, limit, device, json_path, submission_path):
    """Evaluate on a dataset with the original protocols (F1, MPJPE, MVE, ...); several processes
    (`torchrun --nproc-per-node N -m sathmr eval`) share the images and report one result."""
    from sathmr.backends import load_backend
    from sathmr.backends.formats import choose_model
    from sathmr.backends.precision import precision_kwargs
    from sathmr.outputs.writers import ensure_writable, write_json
    from sathmr.runtime.distributed import start
    from sathmr.runtime.predictor import Predictor
    from sathmr.train.data.pipeline import BodyModels
    from sathmr.train.data.readers import LAYOUTS, check_split
    from sathmr.train.engine import evaluate
    from sathmr.train.metric_definitions import describe_metrics
    from sathmr.train.metrics import load_array, write_agora_submission
    from sathmr.zoo.weights import EMBEDDED, resolve

    (name, split), = parse_sets((dataset,), dataset)
    check_split(data_root, name, split)     # before any model is loaded
    has_gt = split in LAYOUTS[name].annots
    if not has_gt and not submission_path:
        raise SathmrError(f"{name}:{split} has no ground truth to score; add --agora-submission out.zip to write "
                          "the AGORA test submission")
    if submission_path:   # a folder (pred_<time>.zip inside) or the zip; fail before the run, not after
        sub = Path(submission_path)
        ensure_writable(sub.parent if sub.suffix.lower() == ".zip" else sub)
    group = start(device)
    beside = Path(data_root) / "smpl"   # written by `sathmr data synthetic`, pairs with the embedded default
    choice = choose_model(model_path, backend, checkpoint)
    default = choice.checkpoint is None or choice.checkpoint.resolve() == EMBEDDED
    res = resolve(choice.checkpoint, smpl_dir or (beside if beside.is_dir() and default else None))
    if choice.model_path is None:
        group.echo(res.note, err=True)
    be = load_backend(choice.backend, checkpoint=choice.checkpoint, model_path=choice.model_path, config=config,
                      smpl_dir=res.smpl_dir, device=group.device,
                      **precision_kwargs(precision, compile_, allow_emulated=True, backend=choice.backend))
    if choice.model_path is not None:
        group.echo(be.info["note"], err=True)       # an export says what it is (and whether it is the embedded default)
    smpl = Path(res.smpl_dir)
    bodies = BodyModels(smpl)
    body = bodies.get("neutral")
    be.check_body_model(body)
    ds = open_sets(data_root, [(name, split)], bodies, be.cfg, train=False)
    protocol = protocol or ("3dpw" if name == "3dpw" else "agora")
    note = ""
    if threshold is None:
        threshold = PROTOCOL_THRESHOLDS[protocol]
        note = f" (the {protocol} protocol's; sathmr demo/infer default to 0.3)" if threshold != 0.3 else ""
    kw = {}
    if protocol == "3dpw":
        kw["h36m_regressor"] = smpl / "J_regressor_h36m_correct.npy"
    elif (smpl / "body_verts_smpl.npy").is_file():
        kw["body_verts"] = smpl / "body_verts_smpl.npy"
    people: list | None = [] if submission_path else None
    metrics = evaluate(Predictor(be, body, (threshold,)), ds, threshold, protocol, batch_size, limit=limit,
                       progress=group.is_main, group=group, submission=people, **kw)
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    procs = f"  processes {group.world}" if group.world > 1 else ""
    numerics = be.info.get("precision", "fp32")   # not "precision": that is a detection metric
    group.echo(f"{name}:{split}  threshold {threshold:g}{note}  protocol {protocol}  images {limit or len(ds)}{procs}"
               f"  numerics {numerics}")
    if people is not None and group.is_main:
        zpath = write_agora_submission(people, submission_path, canvas=be.cfg.input_size)
        group.echo(f"AGORA submission: {zpath} ({sum(len(p['j2ds']) for p in people)} people in {len(people)} images)")
    if not has_gt:
        return
    subset = kw.get("body_verts")
    definitions = describe_metrics(protocol, threshold, None if subset is None else len(load_array(subset, "body vertex subset")))
    group.echo(metrics_table(metrics, definitions))
    if json_path and group.is_main:
        write_json(Path(json_path), {"dataset": f"{name}:{split}", "threshold": threshold, "protocol": protocol,
                                     "numerics": numerics, **metrics,
                                     "definitions": {k: v for k, v in definitions.items() if k in metrics}})
