"""Our PyTorch forward against the original SAT-HMR code on the same CPU, image and weights.

    python benchmarks/vs_original.py --original PATH_TO_SAT-HMR [--image PHOTO] [--rounds 3] [--reps 2]
    (or SATHMR_ORIGINAL=PATH; without either it says so and exits 0)

The original (github.com/ChiSu001/SAT-HMR, a checkout the user provides; nothing of it ships here) is
built with the sat_644 architecture and sathmr's random weights (``sathmr bench``'s, mapped through the
official key layout), its SMPL on the synthetic body model. It runs on CPU through small stand-ins for
what it imports but does not need there: xformers (its block-diagonal attention for one image is plain
``scaled_dot_product_attention``), torchvision and trimesh (unused by the forward).

Prints, per output, the relative error ||ours − original|| / ||original|| (and the max-relative one), the
token sets per level (must be identical), then times, alternated round by round: **ours** =
``TorchBackend.run`` + ``decode_outputs`` (SMPL of every query with vertices: what the original's forward
returns) and **original** = its ``Model.forward``; min and median and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from sathmr.backends import TorchBackend
from sathmr.bench.setup import make_setup
from sathmr.common.hardware import cpu_description
from sathmr.inputs.images import read_image
from sathmr.model.checkpoint import to_official
from sathmr.runtime.postprocess import decode_outputs
from sathmr.runtime.preprocess import collate, prepare

DEFAULT_IMAGE = Path(os.environ.get("SATHMR_TEST_IMAGES", Path(__file__).resolve().parents[2] / "shared/data/images")) / "sathmr_demo_img1.jpeg"
OUTPUTS = ("pred_boxes", "pred_confs", "pred_poses", "pred_betas", "pred_transl", "pred_j3ds", "pred_j2ds",
           "pred_verts", "pred_depths")


class BlockDiagonal:
    """xformers' BlockDiagonalMask, as far as the original uses it (sequence lengths, ``split``)."""

    def __init__(self, q, kv):
        self.q_seqlen, self.kv_seqlen, self._batch_sizes = list(q), list(kv), None

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(q_seqlen, q_seqlen if kv_seqlen is None else kv_seqlen)

    def split(self, x):
        parts = x.split(self.q_seqlen, dim=1)
        if self._batch_sizes is None:
            return list(parts)
        out, i = [], 0
        for b in self._batch_sizes:
            out.append(torch.cat(parts[i:i + b], 0))
            i += b
        return out


def _sdpa(q, k, v, bias=None):
    """(B, L, heads, d) as xformers lays it out; its output is contiguous."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    return o.transpose(1, 2).contiguous()


def memory_efficient_attention(q, k, v, attn_bias=None):
    if attn_bias is None or torch.is_tensor(attn_bias):
        return _sdpa(q, k, v, None if attn_bias is None else attn_bias[..., : k.shape[1]])
    if len(attn_bias.q_seqlen) == 1:
        return _sdpa(q, k, v)
    return torch.cat([_sdpa(a, b, c) for a, b, c in zip(q.split(attn_bias.q_seqlen, 1), k.split(attn_bias.kv_seqlen, 1),
                                                        v.split(attn_bias.kv_seqlen, 1))], 1)


def install_stand_ins() -> None:
    """Modules the original imports that are absent or unneeded on a CPU."""
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    unused = lambda *a, **k: None  # noqa: E731
    module("xformers")
    module("xformers.ops", memory_efficient_attention=memory_efficient_attention, unbind=torch.unbind,
           fmha=types.SimpleNamespace(attn_bias=types.SimpleNamespace(BlockDiagonalMask=BlockDiagonal)),
           scaled_index_add=unused, index_select_cat=unused)
    tv = module("torchvision", __version__="0.20.0")
    tv.transforms = module("torchvision.transforms", Normalize=lambda *a, **k: None, Resize=unused)
    tv.ops = module("torchvision.ops")
    tv.ops.boxes = module("torchvision.ops.boxes", box_area=lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    tv.ops.misc = module("torchvision.ops.misc")
    module("trimesh").remesh = module("trimesh.remesh", subdivide=unused)


def load_original(root: Path, ours, smpl_dir: Path, workdir: Path):
    """The original Model (eval) with ``ours``' weights; SMPL from ``smpl_dir`` (its files as the original
    expects them: ``<dir>/smpl/SMPL_*``, body_verts_smpl.npy, J_regressor_h36m_correct.npy, mean params)."""
    import yaml
    install_stand_ins()
    (workdir / "smpl").symlink_to(smpl_dir.resolve(), target_is_directory=True)
    sys.path.insert(0, str(root))
    torch.Tensor.cuda = lambda self, *a, **k: self      # its rot6d_to_axis_angle moves a tensor to CUDA
    warnings.filterwarnings("ignore")
    import configs.paths as paths
    paths.smpl_model_path = str(workdir)
    paths.smpl_mean_path = str(workdir / "smpl" / "smpl_mean_params.npz")
    from models import build_sat_model
    args = argparse.Namespace(**yaml.safe_load((root / "configs/models/default.yaml").read_text()), mode="infer")
    model, _ = build_sat_model(args, set_criterion=False)
    missing, unexpected = model.load_state_dict(to_official(ours.state_dict(), ours.cfg), strict=False)
    missing = [k for k in missing if not k.startswith("human_model.")]
    if missing or unexpected:
        raise SystemExit(f"the original's keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30)), float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def compare(net, dec, out, cfg) -> dict[str, tuple[float, float]]:
    """Relative errors per output; asserts identical token sets per level."""
    res = {k: rel(dec[k][0], out[k][0]) for k in OUTPUTS}
    enc = out["enc_outputs"]
    sm = torch.zeros_like(net["scale_map"][0])
    sm[enc["pos_y"], enc["pos_x"]] = enc["scale_map"]     # the original's map is flat, in z-order
    res["scale_map"] = rel(net["scale_map"][0], sm)
    sat = out["sat"]
    grids = torch.tensor([cfg.grid0, cfg.grid1, cfg.grid2], dtype=torch.float64)
    lvl = sat["lvl"][0]
    theirs = {(int(v), int(y), int(x)) for v, y, x in zip(lvl, (sat["pos_y"][0].double() * grids[lvl] - 0.5).round(),
                                                         (sat["pos_x"][0].double() * grids[lvl] - 0.5).round())}
    keep = net["tok_lvl"][0] >= 0
    mine = {(int(v), int(y), int(x)) for v, (y, x) in zip(net["tok_lvl"][0][keep], net["tok_yx"][0][keep])}
    for level in range(3):
        a, b = {t for t in mine if t[0] == level}, {t for t in theirs if t[0] == level}
        print(f"  level {level}: {len(a)} tokens, {'the same set' if a == b else f'DIFFERENT ({len(a ^ b)} differ)'}")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", type=Path, default=os.environ.get("SATHMR_ORIGINAL"))
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    if a.original is None or not (a.original / "models" / "sat_model.py").is_file():
        print("no original SAT-HMR checkout (--original or SATHMR_ORIGINAL): nothing to compare")
        return
    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_description()}; threads: {a.threads}; torch {torch.__version__}")
    setup = make_setup("sat_644", None, None)
    ours = setup.network()
    body = setup.body()
    with tempfile.TemporaryDirectory() as work:
        orig = load_original(a.original, ours, setup.smpl_dir, Path(work))
    backend, cfg = TorchBackend(ours), ours.cfg
    images, img_hw = collate([prepare(read_image(a.image), cfg.input_size, cfg.pad_multiple)])
    fns = {"ours": lambda: decode_outputs(backend.run(images, img_hw), img_hw, body, cfg, True),
           "original": lambda: orig([images[0]], [{"img_size": img_hw[0]}])}
    with torch.inference_mode():
        net = backend.run(images, img_hw)
        print(f"image {a.image.name}: tokens L0/L1/L2 = {net['tok_counts'][0].tolist()}")
        res = compare(net, decode_outputs(net, img_hw, body, cfg, True), fns["original"](), cfg)
        print(f"  {'output':14s} {'norm-rel':>10s} {'max-rel':>10s}")
        for k, (n, m) in res.items():
            print(f"  {k:14s} {n:10.2e} {m:10.2e}")
        times = {k: [] for k in fns}
        for r in range(a.rounds):
            for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                for _ in range(a.reps):
                    t0 = time.perf_counter()
                    fns[name]()
                    times[name].append(time.perf_counter() - t0)
    for k, xs in times.items():
        print(f"  {k:9s} min {min(xs) * 1e3:8.1f} ms   median {statistics.median(xs) * 1e3:8.1f} ms   ({len(xs)} runs)")
    print(f"ours vs the original: {min(times['original']) / min(times['ours']):.3f}x (min), "
          f"{statistics.median(times['original']) / statistics.median(times['ours']):.3f}x (median)")


if __name__ == "__main__":
    main()
