"""SAT-HMR: scale-adaptive-token ViT encoder + DAB-DETR decoder + SMPL parameter heads.

Module names follow the official checkpoint, so an official state dict loads with only the
``decoder.decoder.`` → ``decoder.`` rename (see ``sathmr.model.checkpoint``). The network stops at the
SMPL *parameters*; SMPL, projection and thresholding are shared post-processing
(``sathmr.postprocess``), identical for every backend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sathmr.config import ModelConfig
from sathmr.model.decoder import Decoder
from sathmr.model.geometry import bicubic_half_matrix, sine_xy
from sathmr.model.layers import MLP, Block, run_blocks
from sathmr.model.tokens import TokenBudget, TokenSelector

# Names of the network outputs, in the order an exported graph returns them.
NET_OUTPUTS = ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam",
               "scale_map", "tok_yx", "tok_lvl", "tok_counts", "tok_overflow")


def batched_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) , idx (B, K) → (B, K, ...)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]


class Encoder(nn.Module):
    """The DINOv2 trunk: blocks 0..depth-1, the extra copies of blocks 0..split-1, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        make = lambda: Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio)  # noqa: E731
        self.blocks = nn.ModuleList(make() for _ in range(cfg.depth))
        self.additional_blocks = nn.ModuleList(make() for _ in range(cfg.split_layer))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)


class SATHMR(nn.Module):
    def __init__(self, cfg: ModelConfig, mean_pose: torch.Tensor | None = None,
                 mean_shape: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        C, P = cfg.embed_dim, cfg.patch_size
        self.encoder = Encoder(cfg)
        self.encoder_patch_proj = nn.ModuleList(nn.Conv2d(3, C, P, P) for _ in range(2))  # 0: level 0, 1: level 1
        self.encoder_cr_token = nn.Parameter(torch.zeros(1, C))
        self.encoder_pos_embeds = nn.Parameter(torch.zeros(cfg.grid0, cfg.grid0, C))
        self.enc_inter_norm = nn.LayerNorm(C, eps=1e-6)
        self.scale_head = MLP([C, C, C, C, 2])
        self.level_embed = nn.Parameter(torch.randn(3, C))
        self.feature_proj = nn.Linear(C, C)
        self.tokens = TokenSelector(cfg.conf_thresh, cfg.scale_thresh)

        self.decoder = Decoder(C, cfg.dec_heads, cfg.dec_layers, cfg.dim_feedforward)
        L, Q, J = cfg.dec_layers, cfg.num_queries, cfg.num_joints
        self.bbox_embed = nn.ModuleList(MLP([C, C, C, 4]) for _ in range(L))
        self.pose_head = nn.ModuleList(MLP([C] * cfg.pose_head_layers + [6 * J]) for _ in range(L))
        self.shape_head = nn.ModuleList(MLP([C] * (cfg.shape_head_layers) + [cfg.num_betas]) for _ in range(L))
        self.cam_head = MLP([C, C // 2, C // 2, 3])
        self.conf_head = nn.Linear(C, 1)
        self.refpoint_embed = nn.Embedding(Q, 4)
        self.tgt_embed = nn.Embedding(Q, C)
        self.dn_enc = nn.Linear(cfg.dn_params_dim, C)

        self.register_buffer("mean_pose", torch.zeros(6 * J) if mean_pose is None else mean_pose.float().clone())
        self.register_buffer("mean_shape", torch.zeros(cfg.num_betas) if mean_shape is None else mean_shape.float().clone())
        self.register_buffer("_half", bicubic_half_matrix(cfg.grid0), persistent=False)
        self._init_weights()

    # ------------------------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        """From-scratch init (DINOv2-like trunk; decoder per spec §2.5, conf prior 0.01)."""
        for m in [self.encoder, self.scale_head, self.feature_proj, *self.encoder_patch_proj]:
            for mod in m.modules():
                if isinstance(mod, (nn.Linear, nn.Conv2d)):
                    nn.init.trunc_normal_(mod.weight, std=0.02)
                    nn.init.zeros_(mod.bias)
        nn.init.trunc_normal_(self.encoder_pos_embeds, std=0.02)
        nn.init.normal_(self.encoder_cr_token, std=1e-6)
        for mlp in self.bbox_embed:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        nn.init.constant_(self.conf_head.bias, -math.log((1 - 0.01) / 0.01))

    def set_budget(self, budget: TokenBudget | None) -> None:
        """Fix the token budgets (static export) or release them (dynamic, the default)."""
        self.tokens.budget = budget or TokenBudget()

    def level1_pos_table(self) -> torch.Tensor:
        """The (G1, G1, C) level-1 position table: bicubic 2x reduction of the level-0 table [must match].

        Recomputed on every call, so it can never go stale after a weight reload (the original caches it
        on the first eval forward, spec §4.5 — a quirk we do not reproduce; the values are the same).
        """
        return torch.einsum("ij,jkc,lk->ilc", self._half, self.encoder_pos_embeds, self._half)

    def cell_mask(self, img_hw: torch.Tensor, hc: int, wc: int) -> torch.Tensor:
        """(B, Hc, Wc) bool: level-1 cell inside the image's own 56-px-padded extent."""
        m = self.cfg.pad_multiple
        rows = (img_hw[:, 0] + m - 1) // m * 2
        cols = (img_hw[:, 1] + m - 1) // m * 2
        ys = torch.arange(hc, device=img_hw.device)
        xs = torch.arange(wc, device=img_hw.device)
        return (ys[None, :, None] < rows[:, None, None]) & (xs[None, None, :] < cols[:, None, None])

    # ------------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, img_hw: torch.Tensor, scale_map_override: torch.Tensor | None = None):
        """Image batch → decoder memory with positions, plus the scale map and the token selection."""
        cfg = self.cfg
        B, _, H, W = images.shape
        cs, C, G0 = cfg.cell_size, cfg.embed_dim, cfg.grid0
        hc, wc = H // cs, W // cs
        static = self.tokens.budget.is_static
        cell_mask = self.cell_mask(img_hw, hc, wc)
        ones = torch.ones(B, 1, dtype=torch.bool, device=images.device)
        cls = self.encoder_cr_token.expand(B, 1, C)

        # Stage A: level-1 tokens (2x2 mean pool, then the level-1 patch projection) + extra blocks
        t1 = self.encoder_patch_proj[1](F.avg_pool2d(images, 2)).flatten(2).transpose(1, 2)
        t1 = t1 + self.level1_pos_table()[:hc, :wc].reshape(1, hc * wc, C)
        cells_valid = cell_mask.flatten(1)
        key_valid = torch.cat((ones, cells_valid), 1)
        if not static and bool(cells_valid.all()):
            key_valid = None
        seq = run_blocks(self.encoder.additional_blocks, torch.cat((cls, t1), 1), key_valid)
        cls_a, T1 = seq[:, :1], seq[:, 1:]
        scale_map = self.scale_head(self.enc_inter_norm(T1)).sigmoid().view(B, hc, wc, 2)

        sel = self.tokens(scale_map if scale_map_override is None else scale_map_override, cell_mask)
        ks = sel.sat_idx.shape[1]

        # Stage B: four level-0 tokens per SAT cell, full resolution, original blocks 0..split-1
        y1, x1 = sel.sat_idx // wc, sel.sat_idx % wc
        dy = torch.tensor([0, 0, 1, 1], device=images.device)
        dx = torch.tensor([0, 1, 0, 1], device=images.device)
        y0 = (2 * y1[..., None] + dy).flatten(1)
        x0 = (2 * x1[..., None] + dx).flatten(1)
        valid0 = sel.sat_valid.repeat_interleave(4, dim=1)
        if ks > 0:
            cells = images.view(B, 3, hc, cs, wc, cs).permute(0, 2, 4, 1, 3, 5).reshape(B, hc * wc, 3, cs, cs)
            patches = batched_gather(cells, sel.sat_idx).reshape(B * ks, 3, cs, cs)
            t0 = self.encoder_patch_proj[0](patches).flatten(2).transpose(1, 2).reshape(B, 4 * ks, C)
            t0 = t0 + batched_gather(self.encoder_pos_embeds.view(1, G0 * G0, C).expand(B, -1, -1), y0 * G0 + x0)
            seq = torch.cat((cls, t0), 1)
            kv = torch.cat((ones, valid0), 1)
            T0 = run_blocks(self.encoder.blocks[: cfg.split_layer], seq, None if not static and bool(kv.all()) else kv)[:, 1:]
        else:
            T0 = T1.new_zeros(B, 0, C)

        # Level-1 cells kept, level-2 groups (channel max of the four stage-A outputs)
        T2 = T1.view(B, hc // 2, 2, wc // 2, 2, C).amax(dim=(2, 4)).reshape(B, -1, C)
        ctx = batched_gather(torch.cat((T1, T2), 1), sel.ctx_idx)
        n1 = hc * wc
        is_l1 = sel.ctx_idx < n1
        g = (sel.ctx_idx - n1).clamp(min=0)
        cy = torch.where(is_l1, sel.ctx_idx // wc, g // (wc // 2))
        cx = torch.where(is_l1, sel.ctx_idx % wc, g % (wc // 2))

        # Stage C on [CLS_A ; level 0 ; level 1 ; level 2]
        mem_valid = torch.cat((valid0, sel.ctx_valid), 1)
        kv = torch.cat((ones, mem_valid), 1)
        if not static and bool(kv.all()):
            kv, mem_valid_or_none = None, None
        else:
            mem_valid_or_none = mem_valid
        seq = run_blocks(self.encoder.blocks[cfg.split_layer:], torch.cat((cls_a, T0, ctx), 1), kv)
        memory = self.feature_proj(self.encoder.norm(seq[:, 1:]))

        tok_y = torch.cat((y0, cy), 1)
        tok_x = torch.cat((x0, cx), 1)
        lvl = torch.cat((torch.zeros_like(y0), torch.where(is_l1, 1, 2)), 1)
        grid = torch.tensor([cfg.grid0, cfg.grid1, cfg.grid2], dtype=torch.float32, device=images.device)[lvl]
        mem_pos = sine_xy((tok_x + 0.5) / grid, (tok_y + 0.5) / grid, C).to(memory.dtype) + self.level_embed[lvl]
        tokens = {
            "tok_yx": torch.stack((tok_y, tok_x), -1),
            "tok_lvl": torch.where(mem_valid, lvl, -1),
            "tok_counts": sel.counts,
            "tok_overflow": sel.overflow,
        }
        return memory, mem_pos, mem_valid_or_none, scale_map, cell_mask, tokens

    # ------------------------------------------------------------------------------------------------
    def heads(self, hs: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per decoder layer: box, confidence, 6D pose and betas (cumulative from the mean), camera."""
        B, Q, _ = hs[0].shape
        pose = self.mean_pose.expand(B, Q, -1)
        betas = self.mean_shape.expand(B, Q, -1)
        out = []
        for i, h in enumerate(hs):
            pose = pose + self.pose_head[i](h)
            betas = betas + self.shape_head[i](h)
            out.append({
                "pred_boxes": boxes[i],
                "pred_confs": self.conf_head(h).sigmoid(),
                "pred_pose6d": pose,
                "pred_betas": betas,
                "pred_cam": self.cam_head(h),
            })
        return out

    def forward(self, images: torch.Tensor, img_hw: torch.Tensor, dn=None,
                scale_map_override: torch.Tensor | None = None) -> dict:
        """images (B,3,H,W) normalised, H and W multiples of 56; img_hw (B,2) unpadded resized sizes.

        ``dn``: denoising queries (training), prepended to the matching queries.
        ``scale_map_override``: a (B,Hc,Wc,2) map used for token selection instead of the prediction
        (ground truth in the first training epoch, or a reference map in parity tests).
        """
        memory, mem_pos, mem_valid, scale_map, cell_mask, tokens = self.encode(images, img_hw, scale_map_override)
        B = images.shape[0]
        tgt = self.tgt_embed.weight.expand(B, -1, -1)
        ref = self.refpoint_embed.weight.expand(B, -1, -1)
        blocked = None
        if dn is not None:
            tgt = torch.cat((dn.content, tgt), 1)
            ref = torch.cat((dn.anchor_logit, ref), 1)
            blocked = dn.attn_mask
        hs, boxes = self.decoder(tgt, ref, memory, mem_pos, mem_valid, self.bbox_embed, blocked)
        layers = self.heads(hs, boxes)
        out = {"scale_map": scale_map, "cell_mask": cell_mask, "tokens": tokens}
        if dn is not None:
            P = dn.content.shape[1]
            out["dn_layers"] = [{k: v[:, :P] for k, v in d.items()} for d in layers]
            layers = [{k: v[:, P:] for k, v in d.items()} for d in layers]
        out["layers"] = layers
        return out

    def net_outputs(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference outputs as every backend returns them (names in ``NET_OUTPUTS``)."""
        out = self.forward(images, img_hw)
        res = dict(out["layers"][-1])
        res["scale_map"] = out["scale_map"]
        res.update(out["tokens"])
        return {k: res[k] for k in NET_OUTPUTS}


def build_model(cfg: ModelConfig, mean_pose=None, mean_shape=None) -> SATHMR:
    return SATHMR(cfg, mean_pose, mean_shape)
