"""SAT-HMR: scale-adaptive-token ViT encoder + DAB-DETR decoder + SMPL parameter heads.

Module names follow the official checkpoint, so an official state dict loads with only the
``decoder.decoder.`` → ``decoder.`` rename (see ``sathmr.model.checkpoint``). The network stops at the
SMPL *parameters*; SMPL, projection and thresholding are shared post-processing
(``sathmr.runtime.postprocess``), identical for every backend.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from sathmr.model.config import ModelConfig
from sathmr.model.decoder import Decoder
from sathmr.model.embed import embed_cells, embed_grid, level_code_table, memory_pos_code
from sathmr.model.geometry import bicubic_half_matrix
from sathmr.model.layers import MLP, Block, Derived, batched_mlp, frozen_inference, max_pool2, mean_pool2, run_blocks, stack_mlps
from sathmr.model.tokens import Selection, TokenBudget, TokenLayout, TokenSelector, cell_mask, token_layout, token_outputs

# Names of the network outputs, in the order an exported graph returns them.
NET_OUTPUTS = ("pred_boxes", "pred_confs", "pred_pose6d", "pred_betas", "pred_cam",
               "scale_map", "tok_yx", "tok_lvl", "tok_counts", "tok_overflow")


def batched_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) , idx (B, K) → (B, K, ...): one ``index_select`` on the flattened batch (a row copy,
    2-4x faster on CPU than the equivalent advanced indexing)."""
    B, N = x.shape[:2]
    flat = idx + torch.arange(B, device=idx.device)[:, None] * N
    return x.flatten(0, 1).index_select(0, flat.flatten()).view(B, idx.shape[1], *x.shape[2:])


@dataclass
class ScaleStage:
    """Stage A: what the token selection needs and what stages B and C reuse."""
    scale_map: torch.Tensor     # (B, Hc, Wc, 2) sigmoid [person confidence, person scale] per level-1 cell
    t1: torch.Tensor            # (B, Hc*Wc, C) level-1 tokens after the extra blocks (raw, not normed)
    cls: torch.Tensor           # (B, 1, C) CLS after the extra blocks (the CLS of stage C)
    cell_mask: torch.Tensor     # (B, Hc, Wc) bool: cell inside its image (False = batch padding)


@dataclass
class Memory:
    """Decoder memory: stage-C features with their positional code."""
    memory: torch.Tensor        # (B, L, C)
    pos: torch.Tensor           # (B, L, C) sine code + level embedding
    valid: torch.Tensor | None  # (B, L) bool; None when no slot of the batch is padding
    layout: TokenLayout


class Encoder(nn.Module):
    """The DINOv2 trunk: blocks 0..depth-1, the extra copies of blocks 0..split-1, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        make = lambda: Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio)  # noqa: E731
        self.blocks = nn.ModuleList(make() for _ in range(cfg.depth))
        self.additional_blocks = nn.ModuleList(make() for _ in range(cfg.split_layer))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)


class SATHMR(nn.Module):
    """SAT-HMR: a DINOv2-style ViT on scale-adaptive tokens, a DETR-style decoder and SMPL heads.

    Module and parameter names follow the official checkpoint, so its state dict loads through a key
    map of a few entries (:func:`sathmr.model.checkpoint.from_official`). The forward pass is split into
    public seams (:meth:`forward_scale_map`, the shared :class:`~sathmr.model.tokens.TokenSelector`,
    :meth:`forward_tokens` + :meth:`forward_decoder`) because every exported graph is one of them: the
    dynamic model and the exports run the same code and cannot drift apart. It stops at SMPL
    parameters; the body model and decoding are post-processing, shared by every backend.
    """
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
        self._pos1, self._pos_code, self._stacked_heads = Derived(), Derived(), Derived()
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

        A function of the weights only: eager inference computes it once and keeps it until the table
        changes (:class:`Derived`, so a weight reload can never leave it stale — the original caches it
        on its first eval forward and keeps it even then, spec §4.5); training and exported graphs
        compute it in the graph.
        """
        return self._pos1.get(
            lambda: torch.einsum("ij,jkc,lk->ilc", self._half, self.encoder_pos_embeds, self._half),
            self.encoder_pos_embeds, self._half)

    # ------------------------------------------------------------------------------------------------
    # The forward pass in three public seams. The two-stage export runs ``forward_scale_map`` as its
    # first graph, the shared ``TokenSelector`` in between and ``forward_tokens`` + ``forward_decoder``
    # as its second graph; ``forward`` chains them for the dynamic model, so the two cannot drift apart.
    def forward_scale_map(self, images: torch.Tensor, img_hw: torch.Tensor, always_mask: bool = False) -> ScaleStage:
        """Stage A: level-1 tokens (2x2 mean pool, level-1 patch projection) through the extra blocks,
        then the scale map [must match §1.6 steps 1-4].

        images (B,3,H,W) normalised, H and W multiples of 56; img_hw (B,2) the unpadded resized sizes.
        ``always_mask`` keeps the key mask even when no cell of the batch is padding (exported graphs,
        whose shapes must not depend on the data); otherwise an all-valid mask is dropped.
        """
        cfg = self.cfg
        B, _, H, W = images.shape
        C, hc, wc = cfg.embed_dim, H // cfg.cell_size, W // cfg.cell_size
        cells = cell_mask(img_hw, hc, wc, cfg.pad_multiple)
        cls = self.encoder_cr_token.expand(B, 1, C)
        t1 = embed_grid(self.encoder_patch_proj[1], mean_pool2(images), self.level1_pos_table())
        cells_valid = cells.flatten(1)
        key_valid = torch.cat((cells_valid.new_ones(B, 1), cells_valid), 1)
        if not always_mask and bool(cells_valid.all()):
            key_valid = None
        seq = run_blocks(self.encoder.additional_blocks, torch.cat((cls, t1), 1), key_valid)
        cls_a, t1 = seq[:, :1], seq[:, 1:]
        scale_map = self.scale_head(self.enc_inter_norm(t1)).sigmoid().view(B, hc, wc, 2)
        return ScaleStage(scale_map=scale_map, t1=t1, cls=cls_a, cell_mask=cells)

    def forward_tokens(self, images: torch.Tensor, t1: torch.Tensor, cls_a: torch.Tensor, sel: Selection,
                       always_mask: bool = False) -> Memory:
        """Stages B and C on a token selection → the decoder memory with its positional code.

        Four level-0 tokens per SAT cell (full resolution, original blocks 0..split-1), the kept level-1
        tokens, level-2 tokens (channel max of a 2x2 group's stage-A outputs), then the remaining blocks
        on ``[CLS_A ; level 0 ; level 1 ; level 2]`` [must match §1.6 steps 6-12].
        """
        cfg = self.cfg
        B, _, H, W = images.shape
        cs, C, G0 = cfg.cell_size, cfg.embed_dim, cfg.grid0
        hc, wc = H // cs, W // cs
        ones = sel.sat_valid.new_ones(B, 1)
        cls = self.encoder_cr_token.expand(B, 1, C)
        layout = token_layout(sel, hc, wc)
        ks = sel.sat_idx.shape[1]
        valid0 = layout.valid[:, : 4 * ks]
        if ks > 0:
            y0, x0 = layout.y[:, : 4 * ks], layout.x[:, : 4 * ks]
            pos0 = self.encoder_pos_embeds.view(G0 * G0, C).index_select(0, (y0 * G0 + x0).flatten())
            t0 = embed_cells(self.encoder_patch_proj[0], images, sel.sat_idx, cs, pos0)
            kv = torch.cat((ones, valid0), 1)
            T0 = run_blocks(self.encoder.blocks[: cfg.split_layer], torch.cat((cls, t0), 1),
                            None if not always_mask and bool(kv.all()) else kv)[:, 1:]
        else:
            T0 = t1.new_zeros(B, 0, C)
        T2 = max_pool2(t1, hc, wc)
        ctx = batched_gather(torch.cat((t1, T2), 1), sel.ctx_idx)

        kv = torch.cat((ones, layout.valid), 1)
        mem_valid = layout.valid
        if not always_mask and bool(kv.all()):
            kv, mem_valid = None, None
        seq = run_blocks(self.encoder.blocks[cfg.split_layer:], torch.cat((cls_a, T0, ctx), 1), kv)
        memory = self.feature_proj(self.encoder.norm(seq[:, 1:]))
        # the sine code in the parameters' dtype (float32 under autocast: a bf16 position code loses precision)
        grids = (cfg.grid0, cfg.grid1, cfg.grid2)
        table = self._pos_code.get(lambda: level_code_table(grids, self.level_embed), self.level_embed) \
            if frozen_inference() else None                        # kept between eager forwards
        pos = memory_pos_code(layout.y, layout.x, layout.lvl, grids, self.level_embed, table)
        return Memory(memory=memory, pos=pos, valid=mem_valid, layout=layout)

    def forward_decoder(self, mem: Memory, dn=None, all_layers: bool = True
                        ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]] | None]:
        """Decoder and heads → per-layer predictions of the matching queries (and of the DN queries).

        ``dn``: denoising queries (training), prepended to the matching queries and split off again.
        ``all_layers=False`` (inference): only the last layer's predictions (see :meth:`heads`).
        """
        B = mem.memory.shape[0]
        tgt = self.tgt_embed.weight.expand(B, -1, -1)
        ref = self.refpoint_embed.weight.expand(B, -1, -1)
        blocked = None
        if dn is not None:
            tgt = torch.cat((dn.content, tgt), 1)
            ref = torch.cat((dn.anchor_logit, ref), 1)
            blocked = dn.attn_mask
        hs, boxes = self.decoder(tgt, ref, mem.memory, mem.pos, mem.valid, self.bbox_embed, blocked)
        layers = self.heads(hs, boxes, all_layers)
        if dn is None:
            return layers, None
        P = dn.content.shape[1]
        return [{k: v[:, P:] for k, v in d.items()} for d in layers], [{k: v[:, :P] for k, v in d.items()} for d in layers]

    # ------------------------------------------------------------------------------------------------
    def heads(self, hs: list[torch.Tensor], boxes: list[torch.Tensor], all_layers: bool = True
              ) -> list[dict[str, torch.Tensor]]:
        """Per decoder layer: box, confidence, 6D pose and betas (cumulative from the mean), camera.

        ``all_layers=False`` returns the last layer alone: pose and betas still sum every layer's head,
        but the confidence and camera heads of the earlier layers (used only by the auxiliary losses)
        are not run — as in the original's eval forward.
        """
        B, Q, _ = hs[0].shape
        pose = self.mean_pose.expand(B, Q, -1)
        betas = self.mean_shape.expand(B, Q, -1)
        deltas = self._head_deltas(hs)
        out = []
        for i, h in enumerate(hs):
            pose = pose + (deltas[0][i] if deltas else self.pose_head[i](h))
            betas = betas + (deltas[1][i] if deltas else self.shape_head[i](h))
            if all_layers or i == len(hs) - 1:
                out.append({
                    "pred_boxes": boxes[i],
                    "pred_confs": self.conf_head(h).sigmoid(),
                    "pred_pose6d": pose,
                    "pred_betas": betas,
                    "pred_cam": self.cam_head(h),
                })
        return out

    def _head_deltas(self, hs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Eager inference: every layer's pose and shape head in one batched MLP each, (L, B, Q, ·); the
        stacked weights are kept (:class:`Derived`). None elsewhere (each layer's own heads)."""
        if not frozen_inference():
            return None
        heads = (self.pose_head, self.shape_head)
        stacked = self._stacked_heads.get(lambda: [stack_mlps(h) for h in heads],
                                          *(p for h in heads for p in h.parameters()))
        x = torch.stack(hs).flatten(1, 2)                       # (L, B·Q, C)
        shape = (len(hs), *hs[0].shape[:2], -1)
        return batched_mlp(x, stacked[0]).view(shape), batched_mlp(x, stacked[1]).view(shape)

    def forward(self, images: torch.Tensor, img_hw: torch.Tensor, dn=None,
                scale_map_override: torch.Tensor | None = None, reduced: torch.dtype | None = None,
                all_layers: bool = True) -> dict:
        """images (B,3,H,W) normalised, H and W multiples of 56; img_hw (B,2) unpadded resized sizes.

        Returns ``scale_map`` (B,Hc,Wc,2), ``cell_mask`` (B,Hc,Wc), ``tokens`` (the ``tok_*`` outputs),
        ``layers`` (per decoder layer: ``pred_boxes`` (B,Q,4) cxcywh/canvas, ``pred_confs`` (B,Q,1),
        ``pred_pose6d`` (B,Q,144), ``pred_betas`` (B,Q,10), ``pred_cam`` (B,Q,3)) and, with ``dn``,
        ``dn_layers``. ``scale_map_override``: a (B,Hc,Wc,2) map used for token selection instead of the
        prediction (ground truth in the first training epoch, or a forced layout in benchmarks).
        ``reduced`` (torch.bfloat16 / float16): stages B/C run under autocast in that dtype, everything
        else in float32 (see :func:`precision_scopes`). ``all_layers=False``: ``layers`` holds the last
        decoder layer only (inference; see :meth:`heads`).
        """
        static = self.tokens.budget.is_static
        fp32, low = precision_scopes(images.device.type, reduced)
        with fp32():
            st = self.forward_scale_map(images, img_hw, always_mask=static)
            sel = self.tokens(st.scale_map if scale_map_override is None else scale_map_override, st.cell_mask)
        with low():
            mem = self.forward_tokens(images, st.t1, st.cls, sel, always_mask=static)
        if reduced is not None:
            mem = replace(mem, memory=mem.memory.float())
        with fp32():
            layers, dn_layers = self.forward_decoder(mem, dn, all_layers)
        out = {"scale_map": st.scale_map, "cell_mask": st.cell_mask, "tokens": token_outputs(sel, mem.layout),
               "layers": layers}
        if dn_layers is not None:
            out["dn_layers"] = dn_layers
        return out

    def net_outputs(self, images: torch.Tensor, img_hw: torch.Tensor,
                    reduced: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Inference outputs as every backend returns them (names in ``NET_OUTPUTS``); ``reduced`` as in
        :meth:`forward`."""
        out = self.forward(images, img_hw, reduced=reduced, all_layers=False)
        res = dict(out["layers"][-1])
        res["scale_map"] = out["scale_map"]
        res.update(out["tokens"])
        return {k: res[k] for k in NET_OUTPUTS}


Scope = Callable[[], contextlib.AbstractContextManager]


def precision_scopes(device_type: str, reduced: torch.dtype | None) -> tuple[Scope, Scope]:
    """The (float32, reduced) contexts of a forward pass at a reduced precision.

    Reduced: stages B and C — the ViT blocks on the selected tokens and ``feature_proj``, ~80 % of the
    FLOPs — under autocast, which keeps LayerNorm, softmax statistics and the residual additions in
    float32 as PyTorch's mixed precision intends. Float32, with autocast explicitly off:
      * stage A and the selection: the selection thresholds the scale map, so it must see the float32
        map whatever the precision (under a whole-model autocast cells near a threshold flip and other
        people come out);
      * the decoder and the heads (~10 % of the FLOPs, 50 queries): measured on the embedded model,
        they cause ~90 % of the bf16 error — anchors refined over six layers, poses and the camera summed
        from per-layer head outputs (joint difference vs fp32: 1.3 mm with B/C reduced, 11 mm with
        decoder and heads reduced too).
    ``reduced=None``: no context at all, the float32 path unchanged.
    """
    if reduced is None:
        return contextlib.nullcontext, contextlib.nullcontext
    return (lambda: torch.autocast(device_type, enabled=False)), (lambda: torch.autocast(device_type, dtype=reduced))


def build_model(cfg: ModelConfig, mean_pose=None, mean_shape=None) -> SATHMR:
    """A freshly initialised network for ``cfg`` (random weights, from-scratch init).

    The one constructor every caller uses (loaders, training, benchmarks with random weights), so the
    mean pose/shape the heads refine from are passed in one place; ``None`` leaves them
    zero until a checkpoint or ``smpl_mean_params.npz`` fills them.
    """
    return SATHMR(cfg, mean_pose, mean_shape)
