"""DAB-DETR-style decoder of the original (conditional cross-attention, anchor refinement) [must match §2]."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from sathmr.model.geometry import inverse_sigmoid, sine_box
from sathmr.model.layers import MLP, attention, fold_cross_attention, key_mask_bias


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    B, L, C = x.shape
    return x.view(B, L, n, C // n).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    B, n, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, n * d)


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int):
        super().__init__()
        self.nhead = nhead
        lin = lambda: nn.Linear(d_model, d_model)  # noqa: E731
        self.sa_qcontent_proj, self.sa_qpos_proj = lin(), lin()
        self.sa_kcontent_proj, self.sa_kpos_proj = lin(), lin()
        self.sa_v_proj, self.sa_out_proj = lin(), lin()
        self.norm1 = nn.LayerNorm(d_model)
        self.ca_qcontent_proj, self.ca_qpos_proj = lin(), lin()  # ca_qpos_proj: first layer only
        self.ca_kcontent_proj, self.ca_kpos_proj = lin(), lin()
        self.ca_v_proj, self.ca_qpos_sine_proj, self.ca_out_proj = lin(), lin(), lin()
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, c, query_pos, query_sine, memory, mem_pos, mem_mask, self_mask, mem_cat=None):
        """``mem_cat`` = [memory ; mem_pos] (B, L, 2C): cross-attention folded onto the queries' side
        (:meth:`folded_cross_attention`); None: the original's arithmetic."""
        n = self.nhead
        # self-attention (pre-norm), positional query added to q and k
        u = self.norm1(c)
        q = self.sa_qcontent_proj(u) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(u) + self.sa_kpos_proj(query_pos)
        a = attention(_heads(q, n), _heads(k, n), _heads(self.sa_v_proj(u), n), self_mask)
        c = c + self.sa_out_proj(_merge(a))
        # conditional cross-attention: per head [content ; positional] halves, scale 1/sqrt(2d)
        u = self.norm2(c)
        qc = self.ca_qcontent_proj(u)
        if self.ca_qpos_proj is not None:
            qc = qc + self.ca_qpos_proj(query_pos)
        qs = self.ca_qpos_sine_proj(query_sine)
        if mem_cat is not None:
            a = self.folded_cross_attention(qc, qs, memory, mem_cat, mem_mask)
        else:
            kc = self.ca_kcontent_proj(memory)
            kp = self.ca_kpos_proj(mem_pos)
            if self.ca_qpos_proj is not None:
                kc = kc + kp
            q = torch.cat((_heads(qc, n), _heads(qs, n)), dim=-1)
            k = torch.cat((_heads(kc, n), _heads(kp, n)), dim=-1)
            a = attention(q, k, _heads(self.ca_v_proj(memory), n), mem_mask)
        c = c + self.ca_out_proj(_merge(a))
        return c + self.linear2(F.relu(self.linear1(self.norm3(c))))

    def folded_cross_attention(self, qc: torch.Tensor, qs: torch.Tensor, memory: torch.Tensor,
                               mem_cat: torch.Tensor, mem_mask: torch.Tensor | None) -> torch.Tensor:
        """The conditional cross-attention with the key and value projections moved onto the 50 queries.

        Per head h: q_h·k_h = qc_h·(Wc_h m + bc_h [+ Wp_h p + bp_h]) + qs_h·(Wp_h p + bp_h) =
        (qc_h Wc_h)·m + ((qs_h [+ qc_h]) Wp_h)·p + a constant per query, which the softmax cancels; and
        softmax(S) (Wv_h m + bv_h) = (softmax(S) m) Wv_h^T + bv_h (rows of softmax sum to 1). So the
        ~2000 memory tokens are never projected (3 of the decoder's 2000x768x768 products per layer, ~75 %
        of its time): the queries are, and one product against [m ; p] scores all heads at once. Equal
        in exact arithmetic; float rounding differs (~1e-7 relative on the outputs).
        """
        n, C = self.nhead, qc.shape[-1]
        B, Q, d = qc.shape[0], qc.shape[1], C // n
        wc = self.ca_kcontent_proj.weight.view(n, d, C)
        wp = self.ca_kpos_proj.weight.view(n, d, C)
        qh, sh = _heads(qc, n), _heads(qs, n)                              # (B, n, Q, d)
        if self.ca_qpos_proj is not None:
            sh = sh + qh                                                  # k content = kc + kp: qc meets p too
        qf = torch.cat((qh @ wc, sh @ wp), dim=-1) * (2 * d) ** -0.5     # (B, n, Q, 2C)
        s = torch.bmm(qf.view(B, n * Q, 2 * C), mem_cat.transpose(1, 2))  # (B, nQ, L)
        if mem_mask is not None:
            s = s + mem_mask[:, 0]
        y = torch.bmm(s.softmax(-1), memory).view(B, n, Q, C)                # softmax-weighted memory
        wv = self.ca_v_proj.weight.view(n, d, C)
        return y @ wv.transpose(1, 2) + self.ca_v_proj.bias.view(n, 1, d)


class Decoder(nn.Module):
    def __init__(self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int):
        super().__init__()
        proto = DecoderLayer(d_model, nhead, dim_feedforward)
        self.layers = nn.ModuleList(copy.deepcopy(proto) for _ in range(num_layers))
        for layer in self.layers[1:]:
            layer.ca_qpos_proj = None
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP([d_model, d_model, d_model])
        self.ref_point_head = MLP([2 * d_model, d_model, d_model])
        self.ref_anchor_head = MLP([d_model, d_model, 2])
        self.d_model = d_model
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.layers:
            nn.init.zeros_(layer.sa_out_proj.bias)
            nn.init.zeros_(layer.ca_out_proj.bias)

    def forward(self, tgt: torch.Tensor, ref_logit: torch.Tensor, memory: torch.Tensor, mem_pos: torch.Tensor,
                mem_valid: torch.Tensor | None, bbox_embed: nn.ModuleList,
                self_blocked: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns per-layer normalised features h_l and boxes b_l (cx, cy, w, h in [0, 1]).

        ``self_blocked`` (Q', Q') is the denoising mask with True = blocked, as in the original.
        """
        C = self.d_model
        mem_mask = key_mask_bias(mem_valid, memory.dtype)
        self_mask = None if self_blocked is None else ~self_blocked[None, None]
        # inference (eager, and the exported graphs): cross-attention folded onto the queries' side
        # (see DecoderLayer.folded_cross_attention); training and torch.compile keep the original's arithmetic
        mem_cat = torch.cat((memory, mem_pos.to(memory.dtype)), -1) if fold_cross_attention() else None
        c = tgt
        ref = ref_logit.sigmoid()   # anchor, detached from the previous layer's box head
        ref_grad = ref              # the same anchor with its gradient path, for the reported boxes
        hs, boxes = [], []
        for i, layer in enumerate(self.layers):
            s = sine_box(ref, C).to(c.dtype)  # sine codes in fp32, then the model dtype
            query_pos = self.ref_point_head(s)
            s_xy = s[..., :C] if i == 0 else s[..., :C] * self.query_scale(c)
            wh = self.ref_anchor_head(c).sigmoid()
            s_xy = torch.cat((s_xy[..., : C // 2] * (wh[..., 1] / ref[..., 3]).unsqueeze(-1),
                              s_xy[..., C // 2:] * (wh[..., 0] / ref[..., 2]).unsqueeze(-1)), dim=-1)
            c = layer(c, query_pos, s_xy, memory, mem_pos, mem_mask, self_mask, mem_cat)
            h = self.norm(c)
            box = (bbox_embed[i](h) + inverse_sigmoid(ref_grad)).sigmoid()
            hs.append(h)
            boxes.append(box)
            ref_grad, ref = box, box.detach()
        return hs, boxes
