"""Training and evaluation loops, launched with 🤗 accelerate (CPU, one GPU or many, same code).

The recipe is the original's (spec §5): AdamW with two learning-rate groups chosen by the substring
``encoder`` in parameter names, cosine decay without warm-up (a warm-up and a floor are recipe options,
off by default), global gradient clipping at 1.0, auxiliary
and denoising losses, and the ground-truth scale map driving token selection during the first
``gt_scale_epochs`` epochs. Every step is a pure function of (weights, optimiser state, epoch, step):
data order, augmentation and denoising noise are seeded from them, so a resumed run repeats exactly the
steps an uninterrupted one would have taken.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from tqdm import tqdm

from sathmr.common.errors import SathmrError
from sathmr.model.checkpoint import save_checkpoint
from sathmr.model.config import ModelConfig
from sathmr.model.sathmr import SATHMR
from sathmr.runtime.distributed import ProcessGroup
from sathmr.runtime.postprocess import decode_people
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import Prepared
from sathmr.train.data.pipeline import collate, seed_epoch, stack_images
from sathmr.train.dn import build_dn_queries
from sathmr.train.losses import SetCriterion, accelerate_reducer
from sathmr.train.metrics import EvalAccumulator, EvalSums
from sathmr.train.resume import resume_state
from sathmr.train.schedule import warmup_cosine_lambda


@dataclass
class TrainConfig:
    """Defaults are the paper's (train_all.yaml)."""
    epochs: int = 60
    batch_size: int = 6
    lr: float = 4e-5
    lr_encoder: float = 2e-5
    weight_decay: float = 1e-4
    clip_grad: float = 1.0
    gt_scale_epochs: int = 1           # epochs in which the GT scale map drives token selection
    use_dn: bool = True
    seed: int = 42
    num_workers: int = 0
    save_every_steps: int = 0          # 0 = only at epoch ends
    max_steps: int = 0                 # stop early (0 = run all epochs); the schedule still spans all epochs
    log_every: int = 10
    mixed_precision: str = "no"        # "no" | "fp16" | "bf16" (accelerate)
    warmup_steps: int = 0              # linear LR warm-up (0 = none, the original)
    min_lr_ratio: float = 0.0          # cosine ends at this fraction of the base LR (0 = the original)


def param_groups(model: torch.nn.Module, tc: TrainConfig) -> list[dict]:
    """Two groups by the substring ``encoder`` in the name [must match §5.1], weight decay everywhere."""
    enc = [p for n, p in model.named_parameters() if p.requires_grad and "encoder" in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and "encoder" not in n]
    return [{"params": enc, "lr": tc.lr_encoder}, {"params": rest, "lr": tc.lr}]




def move_targets(targets: list[dict], device) -> list[dict]:
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def gt_scale_override(targets: list[dict], hc: int, wc: int, device) -> torch.Tensor:
    out = torch.zeros(len(targets), hc, wc, 2, device=device)
    for i, t in enumerate(targets):
        m = t["scale_map"]
        out[i, : m.shape[0], : m.shape[1]] = m.to(device)
    return out


def compute_loss(model, criterion, body_model, images, img_hw, targets, use_gt_map: bool, use_dn: bool,
                 generator: torch.Generator | None):
    """One forward + loss; shared by the training loop and the tests."""
    net: SATHMR = getattr(model, "module", model)
    cfg = net.cfg
    dn = build_dn_queries(targets, net.dn_enc, cfg.num_queries, cfg.dn_number, generator=generator) if use_dn else None
    override = None
    if use_gt_map:
        override = gt_scale_override(targets, images.shape[2] // cfg.cell_size, images.shape[3] // cfg.cell_size, images.device)
    out = model(images, img_hw, dn=dn, scale_map_override=override)
    out["layers"] = [decode_people(layer, img_hw, body_model, cfg, with_verts=False) for layer in out["layers"]]
    if dn is not None:   # only the last DN layer is scored (spec §5.6 quirk): decode just that one
        out["dn_layers"][-1] = decode_people(out["dn_layers"][-1], img_hw, body_model, cfg, with_verts=False)
    return criterion(out, targets, dn)


def train(model, train_set, body_model, out_dir: Path, tc: TrainConfig, resume: bool = True,
          eval_fn=None, log=print) -> dict:
    """Train ``model`` on ``train_set`` (an HMRDataset or a ConcatDataset of them); checkpoints and
    TensorBoard logs go to ``out_dir``. Every sample is seeded by (seed, epoch, index) (:func:`seed_epoch`)."""
    out_dir = Path(out_dir)
    # cpu=True without CUDA: otherwise processes started by torchrun would each train alone (no gloo group).
    # Unused parameters are normal: an image without small-scale cells sends no tokens through the level-0
    # path (and DN off leaves dn_enc idle), so DDP must not wait for their gradients.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    acc = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp], mixed_precision=tc.mixed_precision,
                      log_with="tensorboard",
                      project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")))
    set_seed(tc.seed)
    cfg: ModelConfig = model.cfg
    data = train_set
    loader_gen = torch.Generator()
    loader = torch.utils.data.DataLoader(data, batch_size=tc.batch_size, shuffle=True, collate_fn=collate,
                                         num_workers=tc.num_workers, generator=loader_gen, drop_last=len(data) >= tc.batch_size)
    if len(loader) == 0:
        raise SathmrError("the training set is empty")
    steps_per_epoch = math.ceil(len(loader) / acc.num_processes)
    total = tc.epochs * steps_per_epoch
    optim = torch.optim.AdamW(param_groups(model, tc), betas=(0.9, 0.999), eps=1e-8, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, warmup_cosine_lambda(total, tc.warmup_steps, tc.min_lr_ratio))
    model, optim = acc.prepare(model, optim)
    if acc.num_processes > 1:
        loader = acc.prepare_data_loader(loader)
    body_model = body_model.to(acc.device)
    criterion = SetCriterion(canvas=cfg.input_size, reduce_counts=accelerate_reducer(acc)).to(acc.device)
    acc.init_trackers("sathmr", config={k: v for k, v in asdict(tc).items() if isinstance(v, (int, float, str, bool))})

    ckpt_root = out_dir / "checkpoints"
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
    if resume and ckpt_root.is_dir():
        done = sorted((p for p in ckpt_root.glob("step_*") if (p / "progress.json").is_file()),   # complete ones
                      key=lambda p: int(p.name.split("_")[1]))
        if done:
            state = resume_state(acc, sched, done[-1])     # a damaged file: one line, never a silent divergence
            if acc.is_main_process:
                log(f"resumed from {done[-1]} (epoch {state['epoch']}, step {state['global_step']})")

    def save(tag_state: dict) -> None:
        acc.wait_for_everyone()
        path = ckpt_root / f"step_{tag_state['global_step']}"
        acc.save_state(str(path))
        if acc.is_main_process:
            torch.save(sched.state_dict(), path / "sched.pt")
            (path / "progress.json").write_text(json.dumps(tag_state))

    history: list[dict] = []
    t_start = time.perf_counter()
    model.train()
    stop = False
    for epoch in range(state["epoch"], tc.epochs):
        seed_epoch(data, tc.seed, epoch)
        loader_gen.manual_seed(tc.seed * 1000 + epoch)
        skip = state["step_in_epoch"] if epoch == state["epoch"] else 0
        it = acc.skip_first_batches(loader, skip) if skip else loader
        for step_in_epoch, (imgs, targets) in enumerate(it, start=skip):
            gs = state["global_step"]
            images, img_hw = stack_images(imgs, targets)
            images, img_hw = images.to(acc.device), img_hw.to(acc.device)
            targets = move_targets(targets, acc.device)
            gen = torch.Generator(device="cpu").manual_seed(tc.seed * 7919 + gs)
            with acc.autocast():
                total_loss, losses = compute_loss(model, criterion, body_model, images, img_hw, targets,
                                                  epoch < tc.gt_scale_epochs, tc.use_dn, gen)
            optim.zero_grad(set_to_none=True)
            acc.backward(total_loss)
            if tc.clip_grad > 0:
                acc.clip_grad_norm_(model.parameters(), tc.clip_grad)
            optim.step()
            sched.step()
            state = {"epoch": epoch, "step_in_epoch": step_in_epoch + 1, "global_step": gs + 1}
            if gs % tc.log_every == 0 or gs + 1 == total:
                keys = sorted(k for k in losses if "." not in k)
                logged = acc.reduce(torch.stack([total_loss.detach(), *(losses[k].detach() for k in keys)]), "mean")
                row = {"step": gs, "epoch": epoch, "loss": logged[0].item(), "lr": sched.get_last_lr()[-1],
                       "time": round(time.perf_counter() - t_start, 1),
                       **{k: v.item() for k, v in zip(keys, logged[1:])}}   # means over processes, as the original
                acc.log({f"train/{k}": v for k, v in row.items() if k not in ("step", "epoch")}, step=gs)
                history.append(row)
                if acc.is_main_process:
                    log(f"epoch {epoch} step {gs}/{total} loss {row['loss']:.4f} lr {row['lr']:.2e} ({row['time']:.0f}s)")
            if tc.save_every_steps and (gs + 1) % tc.save_every_steps == 0:
                save(state)
            if tc.max_steps and gs + 1 >= tc.max_steps:
                stop = True
                break
        if not stop:
            state = {"epoch": epoch + 1, "step_in_epoch": 0, "global_step": state["global_step"]}
        save(state)
        if eval_fn is not None and acc.is_main_process:
            metrics = eval_fn(acc.unwrap_model(model))
            acc.log({f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                    step=state["global_step"])
            history.append({"step": state["global_step"], "epoch": epoch, "val": metrics})
            log(f"epoch {epoch} validation: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
            model.train()
        if stop:
            break
    acc.end_training()
    final = acc.unwrap_model(model)
    if acc.is_main_process:
        save_checkpoint(final, out_dir / "model_final.safetensors")
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    return {"history": history, "state": state, "model": final}


def eval_items(images: list[torch.Tensor], targets: list[dict]) -> list[Prepared]:
    """Evaluation samples as the batch runner's inputs (already resized, padded and normalised)."""
    items = []
    for img, t in zip(images, targets):
        hw = tuple(int(v) for v in t["img_size"])
        r = float(t["resize_rate"])
        items.append(Prepared(img, hw, r, (round(hw[0] / r), round(hw[1] / r)), None))
    return items


def evaluate(predictor: Predictor, dataset, threshold: float = 0.5, protocol: str = "agora", batch_size: int = 4,
             body_verts=None, h36m_regressor=None, limit: int = 0, progress: bool = False,
             group: ProcessGroup = ProcessGroup(), submission: list | None = None) -> dict:
    """Run a predictor over an evaluation dataset (HMRDataset, eval mode) and score it (spec §7).

    Predictions are the queries with confidence > ``threshold`` in the canvas frame, as the GT is. Under
    several processes (``group``) each scores its share of the images; the per-image sums are gathered
    and pooled in dataset order, so every process returns what one process computes. A ``submission``
    list receives every image's kept people in dataset order, as ``write_agora_submission`` takes them.
    """
    acc = EvalAccumulator(protocol, body_verts=body_verts, h36m_regressor=h36m_regressor)
    n = len(dataset) if not limit else min(limit, len(dataset))
    mine = group.indices(n)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                                         collate_fn=collate)
    scored: list[tuple[int, EvalSums]] = []
    kept: list[tuple[int, dict]] = []
    for imgs, targets in tqdm(loader, desc="eval", disable=not progress):
        dec = predictor.run_batch(eval_items(imgs, targets), [t["img_path"] for t in targets]).decoded
        for i, t in enumerate(targets):
            keep = dec["pred_confs"][i, :, 0] > threshold
            pred = {k: dec[f"pred_{k}"][i, keep] for k in ("j2ds", "j3ds", "verts", "transl")}
            gt = {k: t[k].numpy() for k in ("j2ds", "j3ds", "verts", "transl", "kid") if k in t}
            index = mine[len(scored)]
            scored.append((index, acc.score_image(pred, gt)[0]))
            if submission is not None:
                kept.append((index, {"img_name": Path(t["img_path"]).name, "j2ds": pred["j2ds"],
                                     "poses": dec["pred_poses"][i, keep], "betas": dec["pred_betas"][i, keep]}))
    for _, sums in sorted((s for part in group.gather(scored) for s in part), key=lambda s: s[0]):
        acc.sums.merge(sums)
    if submission is not None:
        submission.extend(p for _, p in sorted((s for part in group.gather(kept) for s in part), key=lambda s: s[0]))
    return acc.result()
