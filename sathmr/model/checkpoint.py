"""Checkpoints: the official flat state dict (strict, explicit key map) and our self-describing format.

Official layout (spec §8): flat ``state_dict`` of the original model. Our modules use the same names
except that the decoder is not nested twice:  ``decoder.decoder.X`` ↔ ``decoder.X``. The original also
lists ``bbox_embed`` twice (``decoder.decoder.bbox_embed.*`` aliases ``bbox_embed.*``) and carries
buffers we recompute (camera, z-order maps) or take from the user's body model (``human_model.*``).

Our format: ``.safetensors`` whose metadata holds the config, so a file says what it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from sathmr import __version__
from sathmr.common.errors import SathmrError
from sathmr.model.config import ModelConfig, get_config
from sathmr.model.sathmr import SATHMR, build_model

OFFICIAL_DECODER = "decoder.decoder."
OFFICIAL_ALIAS = "decoder.decoder.bbox_embed."
HUMAN_MODEL = "human_model.layer_n."
RECOMPUTED = ("cam_intrinsics", "z_order_map", "y_coords", "x_coords")
OPTIONAL = ("dn_enc.",)  # training-only; may be dropped from inference checkpoints
FORMAT_TAG = "sathmr"


# -------------------------------------------------------------------------------------------------
# Official layout
def official_buffers(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Buffers of the original model that we recompute instead of loading (spec §1.5, §3.4)."""
    f, c = cfg.focal, cfg.input_size / 2
    side = 2 ** math.ceil(math.log2(cfg.grid1))
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    z = torch.zeros_like(y)
    for i in range(int(math.log2(side))):
        z |= ((x >> i) & 1) << (2 * i) | ((y >> i) & 1) << (2 * i + 1)
    return {
        "cam_intrinsics": torch.tensor([[f, 0, c], [0, f, c], [0, 0, 1]], dtype=torch.float32),
        "z_order_map": z, "y_coords": y.clone(), "x_coords": x.clone(),
    }


def to_official(state: dict[str, torch.Tensor], cfg: ModelConfig,
                body_buffers: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Our state dict → the official flat layout (with aliases and recomputed buffers)."""
    out: dict[str, torch.Tensor] = dict(official_buffers(cfg))
    for k, v in state.items():
        if k.startswith("decoder."):
            out[OFFICIAL_DECODER + k[len("decoder."):]] = v
        else:
            out[k] = v
        if k.startswith("bbox_embed."):
            out[OFFICIAL_ALIAS + k[len("bbox_embed."):]] = v
    for k, v in (body_buffers or {}).items():
        out[HUMAN_MODEL + k] = v
    return out


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """Accept a flat dict or one nested under ``model`` / ``state_dict``; strip DDP/compile prefixes."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "module"):
            if key in obj and isinstance(obj[key], dict) and not torch.is_tensor(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise SathmrError("checkpoint does not contain a state dict")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def from_official(state: dict[str, torch.Tensor], model: SATHMR) -> dict[str, torch.Tensor]:
    """Map an official state dict onto ``model``'s keys, strictly; returns the ``human_model`` buffers.

    Every parameter is required (except the training-only ``dn_enc``), nothing unknown is accepted and
    every shape is checked; the error lists the offending keys. ``mean_pose``/``mean_shape`` are loaded
    when present (they override the npz values, as in the original).
    """
    state = unwrap_state_dict(state)
    mapped: dict[str, torch.Tensor] = {}
    aliases: dict[str, torch.Tensor] = {}
    body: dict[str, torch.Tensor] = {}
    recomputed: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith(OFFICIAL_ALIAS):
            aliases["bbox_embed." + k[len(OFFICIAL_ALIAS):]] = v
        elif k.startswith(OFFICIAL_DECODER):
            mapped["decoder." + k[len(OFFICIAL_DECODER):]] = v
        elif k.startswith(HUMAN_MODEL):
            body[k[len(HUMAN_MODEL):]] = v
        elif k in RECOMPUTED:
            recomputed[k] = v
        else:
            mapped[k] = v
    for k, v in aliases.items():
        if k in mapped:
            if mapped[k].shape != v.shape or not torch.equal(mapped[k], v):
                raise SathmrError(f"checkpoint: {k} and its alias {OFFICIAL_ALIAS}{k[11:]} differ")
        else:
            mapped[k] = v
    _check_recomputed(recomputed, model.cfg)
    load_strict(model, mapped)
    return body


def _check_recomputed(found: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    expect = official_buffers(cfg)
    for k, v in found.items():
        e = expect[k]
        if k in ("y_coords", "x_coords") and v.shape == e.shape and torch.equal(v, expect["x_coords" if k == "y_coords" else "y_coords"]):
            continue  # transposed coordinate convention: equivalent
        if v.shape != e.shape or not torch.allclose(v.to(e.dtype), e, atol=1e-3):
            if k == "cam_intrinsics":
                raise SathmrError(
                    f"checkpoint camera (f={float(v[0, 0]):.2f}, c=({float(v[0, 2]):.1f}, {float(v[1, 2]):.1f})) does not match config {cfg.name!r} "
                    f"(input_size {cfg.input_size}, fov {cfg.fov_deg}); pick the matching --config")
            warnings.warn(f"checkpoint buffer {k} differs from the recomputed one; it is not used", stacklevel=3)


def load_strict(model: SATHMR, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model`` only if every tensor fits: nothing missing, nothing extra, every shape equal.

    ``load_state_dict(strict=False)`` would leave mismatched layers at their random init and still run;
    a wrong config or a truncated file must fail instead, in one line that lists the offending keys
    (the first eight of each kind). Keys under ``OPTIONAL`` (the training-only ``dn_enc``) may be absent.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(OPTIONAL)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{name}: {shown}")
    if problems:
        raise SathmrError(f"checkpoint does not fit config {model.cfg.name!r}: " + "; ".join(problems))
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))


# -------------------------------------------------------------------------------------------------
# Our format
def save_checkpoint(model: SATHMR, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``model`` as our safetensors checkpoint, with its config and sathmr version in the metadata.

    safetensors because it cannot execute code on load and needs no pickle; the config travels with the
    weights so :func:`load_model` needs no ``--config``. Written to a temporary name and renamed, so an
    interrupted save never leaves a truncated file under ``path``. ``extra`` values are stored as JSON.
    """
    path = Path(path)
    meta = {"format": FORMAT_TAG, "sathmr_version": __version__, "config": model.cfg.to_json(),
            **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None, dict]:
    """Read any supported file → (state dict, embedded config or None for official files, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise SathmrError(f"checkpoint not found: {path} (see weights/README.md for where official weights go)")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
        except SafetensorError as exc:   # a truncated or foreign file: the user's to fix
            raise SathmrError(f"cannot read checkpoint {path}: {exc}") from None
        return state, _embedded_config(meta, path) if meta.get("format") == FORMAT_TAG else None, meta
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:   # not a weights-only torch file
        raise SathmrError(f"cannot read checkpoint {path} (truncated, or not a weights-only torch file): "
                          f"{str(exc).splitlines()[0]}") from None
    return unwrap_state_dict(obj), None, {}


def _embedded_config(meta: dict[str, str], path: Path) -> ModelConfig:
    """The config a sathmr checkpoint carries; missing or damaged metadata is the file's fault, one line."""
    if "config" not in meta:
        raise SathmrError(f"{path} is marked as a sathmr checkpoint but has no 'config' metadata; re-save it "
                          "with sathmr (or use the training run's own checkpoint)")
    try:
        return ModelConfig.from_json(meta["config"])
    except (ValueError, TypeError, AttributeError, SathmrError) as exc:
        raise SathmrError(f"{path} has damaged 'config' metadata ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:160]}); re-save it with sathmr") from None


def load_model(path: str | Path, config: str | ModelConfig | None = None,
               mean_params: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[SATHMR, dict]:
    """Build a model from a checkpoint file (ours or official). Returns (model in eval mode, info).

    ``info`` has ``format`` ('sathmr' | 'official'), ``human_model`` (buffers found in an official
    file, to compare with the user's SMPL), ``config`` and the file name.
    """
    state, cfg, meta = read_checkpoint(path)
    if cfg is None:
        cfg = config if isinstance(config, ModelConfig) else get_config(config or "sat_644")
    elif config is not None and (config if isinstance(config, str) else config.name) != cfg.name:
        raise SathmrError(f"{path} holds a {cfg.name!r} model, not {config if isinstance(config, str) else config.name!r}")
    mp, ms = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in mean_params) if mean_params else (None, None)
    model = build_model(cfg, mp, ms)
    info = {"config": cfg, "path": str(path), "format": "sathmr" if meta.get("format") == FORMAT_TAG else "official",
            "human_model": {}}
    if info["format"] == "sathmr":
        load_strict(model, state)
    else:
        has_means = "mean_pose" in state and "mean_shape" in state
        if not has_means and mean_params is None:
            raise SathmrError("the checkpoint has no mean_pose/mean_shape and no smpl_mean_params.npz was given")
        if not has_means:
            state = {**state, "mean_pose": model.mean_pose, "mean_shape": model.mean_shape}
        info["human_model"] = from_official(state, model)
    return model.eval(), info


def resize_pos_grid(grid: torch.Tensor, size: int) -> torch.Tensor:
    """(n, n, C) position table → (size, size, C), bicubic by scale factor (DINOv2's interpolate_offset
    of 0.1, not by size) [must match]."""
    s = (size + 0.1) / grid.shape[0]
    out = torch.nn.functional.interpolate(grid.permute(2, 0, 1)[None], scale_factor=(s, s), mode="bicubic",
                                          align_corners=False)
    return out[0].permute(1, 2, 0)[:size, :size]


def load_on_canvas(path: str | Path, cfg: ModelConfig,
                   mean_params: tuple[np.ndarray, np.ndarray] | None = None) -> SATHMR:
    """A checkpoint's network built for ``cfg``, which may differ from the file's config in the canvas
    size only (a warm start on a smaller or larger canvas): every weight is copied, the level-0 position
    table resized the way DINOv2's is. The model is in eval mode."""
    src, _ = load_model(path, mean_params=mean_params)
    if dataclasses.replace(src.cfg, name=cfg.name, input_size=cfg.input_size) != cfg:
        raise SathmrError(f"{path} holds a {src.cfg.name!r} model, which differs from {cfg.name!r} in more "
                          "than the canvas size")
    state = src.state_dict()
    if cfg.grid0 != src.cfg.grid0:
        with torch.no_grad():
            state["encoder_pos_embeds"] = resize_pos_grid(state["encoder_pos_embeds"], cfg.grid0)
    model = build_model(cfg, src.mean_pose, src.mean_shape)
    load_strict(model, state)
    return model.eval()


# -------------------------------------------------------------------------------------------------
# DINOv2 initialisation (training from the pretrained backbone, spec §1.3, §1.4a)
def init_from_dinov2(model: SATHMR, path: str | Path) -> None:
    """Initialise the encoder from the official DINOv2 ViT-B/14 weights, as the paper trains (spec §1.3, §1.4a).

    The blocks and final norm load strictly; the first ``split_layer`` blocks are copied again into the
    extra (stage-A) blocks, the patch embedding into both level projections, the CLS token takes its
    position embedding, the position grid is resized to the model's canvas and ``enc_inter_norm`` starts
    as the final norm. Read with ``torch.load(weights_only=True)``; a file that is not such a ViT fails in
    one line.
    """
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SathmrError(f"DINOv2 weights not found: {path} (put dinov2_vitb14_pretrain.pth in weights/)") from None
    sd = unwrap_state_dict(sd)
    cfg = model.cfg
    try:
        blocks = {k: v for k, v in sd.items() if k.startswith(("blocks.", "norm."))}
        for i in range(cfg.split_layer):
            for k, v in list(blocks.items()):
                if k.startswith(f"blocks.{i}."):
                    blocks["additional_blocks." + k[len("blocks."):]] = v
        model.encoder.load_state_dict(blocks, strict=True)
        with torch.no_grad():
            for proj in model.encoder_patch_proj:
                proj.weight.copy_(sd["patch_embed.proj.weight"])
                proj.bias.copy_(sd["patch_embed.proj.bias"])
            pos = sd["pos_embed"][0]
            model.encoder_cr_token.copy_(sd["cls_token"][0] + pos[:1])
            n = int(math.sqrt(pos.shape[0] - 1))
            model.encoder_pos_embeds.copy_(resize_pos_grid(pos[1:].reshape(n, n, -1), cfg.grid0))
            model.enc_inter_norm.load_state_dict(model.encoder.norm.state_dict())
    except (KeyError, RuntimeError) as exc:
        raise SathmrError(f"{path} is not a DINOv2 ViT checkpoint matching config {cfg.name!r}: {exc}") from None
