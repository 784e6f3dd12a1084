"""The SMPL body layer: our validated loader in front of smplx, which stays the one LBS implementation."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import numpy as np
import smplx
import torch
from smplx.utils import Struct
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS
from torch import Tensor, nn

from sathmr.body.assets import (
    BODY_VERTS,
    EXTRA_IDS_KEY,
    H36M_REGRESSOR,
    find_model_file,
    load_body_verts,
    load_h36m_regressor,
    read_model_arrays,
)
from sathmr.common.errors import SathmrError

# smplx's VertexJointSelector order: face, feet, then left and right finger tips.
EXTRA_JOINT_NAMES = (
    "nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
    "lthumb", "lindex", "lmiddle", "lring", "lpinky", "rthumb", "rindex", "rmiddle", "rring", "rpinky",
)  # fmt: skip
SMPL_EXTRA_VERTEX_IDS = np.array([SMPLX_VERTEX_IDS["smplh"][n] for n in EXTRA_JOINT_NAMES], dtype=np.int64)
NUM_OUTPUT_JOINTS = 45
# The buffers the official checkpoint stores as human_model.layer_n.<name>; hashed for the fingerprint.
SMPL_BUFFERS = (
    "v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights", "faces_tensor", "parents",
    "vertex_joint_selector.extra_joints_idxs",
)  # fmt: skip


class BodyModel(nn.Module):
    """SMPL without translation: (global_orient, body_pose, betas) -> (vertices, 45 joints), float32.

    The smplx module is registered as ``layer_n`` so that a parent registering this as ``human_model``
    reproduces the official state-dict keys ``human_model.layer_n.*``. The side files are non-persistent
    buffers: they follow ``.to(device)`` but stay out of the state dict.
    """

    def __init__(
        self,
        layer: smplx.SMPL,
        joint_regressor_h36m: np.ndarray | None = None,
        body_verts: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.layer_n = layer
        self.faces = np.asarray(layer.faces, dtype=np.int64)
        self.body_verts = body_verts
        reg = None if joint_regressor_h36m is None else torch.as_tensor(joint_regressor_h36m, dtype=torch.float32)
        self.register_buffer("joint_regressor_h36m", reg, persistent=False)
        self.fingerprint = _fingerprint(layer)

    @property
    def smpl(self) -> smplx.SMPL:
        """The wrapped smplx layer (named ``layer_n`` for the official keys), for callers that need smplx itself."""
        return self.layer_n

    @property
    def num_verts(self) -> int:
        """Vertices of the loaded body model: 6890 for SMPL, fewer for the tiny synthetic test body."""
        return int(self.layer_n.v_template.shape[0])

    def forward(self, global_orient: Tensor, body_pose: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
        """Posed vertices (N, V, 3) and 45 joints (N, 45, 3) at the origin; translation is added by the caller.

        Shapes are checked here because smplx broadcasts silently; an empty batch returns empty tensors
        (smplx cannot reshape one), so an image without people needs no special case downstream.
        """
        n = global_orient.shape[0]
        for name, t, width in (("global_orient", global_orient, 3), ("body_pose", body_pose, 69), ("betas", betas, 10)):
            if t.ndim != 2 or t.shape != (n, width):
                raise ValueError(f"{name} must have shape ({n}, {width}), got {tuple(t.shape)}")
        dtype = self.layer_n.v_template.dtype
        if n == 0:  # smplx cannot reshape an empty batch
            v = self.layer_n.v_template
            return v.new_zeros((0, self.num_verts, 3)), v.new_zeros((0, NUM_OUTPUT_JOINTS, 3))
        out = self.layer_n(
            global_orient=global_orient.to(dtype), body_pose=body_pose.to(dtype), betas=betas.to(dtype)
        )
        return out.vertices, out.joints


def _fingerprint(layer: nn.Module) -> str:
    buffers = dict(layer.named_buffers())
    h = hashlib.sha256()
    for name in SMPL_BUFFERS:
        t = buffers[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def build_smpl_layer(arrays: dict[str, np.ndarray], gender: str, source: str | Path) -> smplx.SMPL:
    """Hand validated arrays to smplx (no learnable parameters, no translation)."""
    extra = arrays.get(EXTRA_IDS_KEY)
    ids = SMPL_EXTRA_VERTEX_IDS if extra is None else np.asarray(extra, dtype=np.int64)
    if ids.max() >= arrays["v_template"].shape[0]:
        raise SathmrError(
            f"{source} has {arrays['v_template'].shape[0]} vertices, too few for the standard SMPL vertex "
            f"joints; small models must carry the key {EXTRA_IDS_KEY}"
        )
    data = {k: v for k, v in arrays.items() if k != EXTRA_IDS_KEY}
    # smplx prints a warning for 10-component models (the official SMPL v1.0 neutral file is one).
    with contextlib.redirect_stdout(io.StringIO()):
        layer = smplx.SMPL(
            str(source),
            data_struct=Struct(**data),
            create_betas=False,
            create_global_orient=False,
            create_body_pose=False,
            create_transl=False,
            gender=gender,
            num_betas=10,
            vertex_ids={name: int(i) for name, i in zip(EXTRA_JOINT_NAMES, ids)},
        )
    return layer


def load_body_model(smpl_dir: str | Path, gender: str = "neutral") -> BodyModel:
    """Load ``SMPL_<GENDER>.pkl``/``.npz`` (plus the side files present) from ``smpl_dir``."""
    path = find_model_file(smpl_dir, gender)
    arrays = read_model_arrays(path)
    layer = build_smpl_layer(arrays, gender.lower(), path)
    folder = path.parent
    nv = arrays["v_template"].shape[0]
    reg = load_h36m_regressor(folder, nv) if (folder / H36M_REGRESSOR).is_file() else None
    body = load_body_verts(folder, nv) if (folder / BODY_VERTS).is_file() else None
    return BodyModel(layer, reg, body)
