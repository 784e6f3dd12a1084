"""What our PyTorch forward spends outside the ViT blocks and the decoder.

    python benchmarks/forward_overhead.py [--image PHOTO] [--config sat_644] [--rounds 5] [--threads 2]

One process, one image (default: the first test photo), random weights (``sathmr bench``'s spread
heads, so the token set mixes all three levels). It times, alternated round by round:

  * **forward** — ``TorchBackend.run`` (``SATHMR.net_outputs``: stage A, selection, stages B/C,
    decoder, heads), what every caller of the PyTorch backend pays;
  * **plain blocks** — the same 15 ViT block applications (stage A, B, C) on the very token sequences
    the forward fed them, written here in plain ``torch.nn.functional`` calls (checked equal to our
    blocks' outputs first), without any of the model's code;
  * **decoder** — the decoder alone on the forward's memory.

and prints min and median of each, the forward's breakdown (its own blocks, decoder, heads, the rest)
and the **overhead**: forward − plain blocks − decoder, as a share of the forward (the patch
embeddings, the scale head, the selection, the token gathers, ``feature_proj``, the position codes and
the heads). Speed-ups against the original code are not measured here (it is not a dependency).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

import sathmr.model.sathmr as network
from sathmr.backends import TorchBackend
from sathmr.bench.setup import make_setup
from sathmr.common.hardware import cpu_description
from sathmr.inputs.images import read_image
from sathmr.runtime.preprocess import collate, prepare

DEFAULT_IMAGE = Path(os.environ.get("SATHMR_TEST_IMAGES", Path(__file__).resolve().parents[2] / "shared/data/images")) / "sathmr_demo_img1.jpeg"


def plain_block(x: torch.Tensor, b) -> torch.Tensor:
    """One DINOv2 block (pre-norm, LayerScale, exact GELU, unmasked SDPA) from its weights alone."""
    B, L, C = x.shape
    H = b.attn.num_heads
    h = F.layer_norm(x, (C,), b.norm1.weight, b.norm1.bias, 1e-6)
    qkv = F.linear(h, b.attn.qkv.weight, b.attn.qkv.bias).view(B, L, 3, H, C // H).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, L, C)
    x = x + F.linear(a, b.attn.proj.weight, b.attn.proj.bias) * b.ls1.gamma
    h = F.layer_norm(x, (C,), b.norm2.weight, b.norm2.bias, 1e-6)
    h = F.linear(F.gelu(F.linear(h, b.mlp.fc1.weight, b.mlp.fc1.bias)), b.mlp.fc2.weight, b.mlp.fc2.bias)
    return x + h * b.ls2.gamma


@contextmanager
def recorded(model):
    """Record each ``run_blocks`` call of a forward (blocks, input sequence, key mask) and its time,
    and each decoder call's time."""
    calls, times = [], {"blocks": 0.0, "decoder": 0.0, "heads": 0.0}
    run_blocks, decoder, heads = network.run_blocks, model.decoder.forward, model.heads

    def timed(name, fn, record=False):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            times[name] += time.perf_counter() - t0
            if record:
                calls.append((args[0], args[1], args[2]))
            return out
        return wrapper

    network.run_blocks = timed("blocks", run_blocks, record=True)
    model.decoder.forward, model.heads = timed("decoder", decoder), timed("heads", heads)
    try:
        yield calls, times
    finally:
        network.run_blocks = run_blocks
        del model.decoder.forward, model.heads      # back to the class methods


def stats(xs: list[float]) -> str:
    return f"min {min(xs) * 1e3:8.1f} ms   median {statistics.median(xs) * 1e3:8.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--config", default="sat_644")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_description()}; threads: {a.threads}; torch {torch.__version__}")

    setup = make_setup(a.config, None, None)
    backend = TorchBackend(setup.network())
    model = backend.model
    item = prepare(read_image(a.image), model.cfg.input_size, model.cfg.pad_multiple)
    images, img_hw = collate([item])
    backend.run(images, img_hw)                                  # warm-up (and the kept position table)

    with torch.inference_mode():
        with recorded(model) as (calls, _):
            out = backend.run(images, img_hw)
        assert all(kv is None for _, _, kv in calls), "a single image runs unmasked"
        for blocks, x, _ in calls:                                 # the plain blocks are our blocks
            ref, y = x, network.run_blocks(blocks, x, None)
            for b in blocks:
                ref = plain_block(ref, b)
            torch.testing.assert_close(ref, y, rtol=0, atol=0)
        st = model.forward_scale_map(images, img_hw)
        mem = model.forward_tokens(images, st.t1, st.cls, model.tokens(st.scale_map, st.cell_mask))
        B = images.shape[0]
        tgt, ref = model.tgt_embed.weight.expand(B, -1, -1), model.refpoint_embed.weight.expand(B, -1, -1)

        def plain_blocks():
            for blocks, x, _ in calls:
                for b in blocks:
                    x = plain_block(x, b)

        def decoder():
            model.decoder(tgt, ref, mem.memory, mem.pos, mem.valid, model.bbox_embed)

        counts = out["tok_counts"][0].tolist()
        print(f"image {a.image.name}: {tuple(images.shape[2:])} canvas, tokens L0/L1/L2 = {counts} "
              f"(stage A {calls[0][1].shape[1]}, B {calls[1][1].shape[1] if len(calls) > 2 else 0}, "
              f"C {calls[-1][1].shape[1]} with CLS)")
        t = {k: [] for k in ("forward", "plain blocks", "decoder", "fwd blocks", "fwd decoder", "fwd heads")}
        for r in range(a.rounds):
            order = [("forward", None), ("plain blocks", plain_blocks), ("decoder", decoder)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                if fn is None:
                    with recorded(model) as (_, inner):
                        backend.run(images, img_hw)
                    t["fwd blocks"].append(inner["blocks"])
                    t["fwd decoder"].append(inner["decoder"])
                    t["fwd heads"].append(inner["heads"])
                else:
                    fn()
                t[name].append(time.perf_counter() - t0)

    for name, xs in t.items():
        print(f"  {name:13s} {stats(xs)}")
    rest = [f - b - d - h for f, b, d, h in zip(t["forward"], t["fwd blocks"], t["fwd decoder"], t["fwd heads"])]
    print(f"  {'fwd rest':13s} {stats(rest)}   (patch embeddings, scale head, selection, gathers, "
          "feature_proj, position codes)")
    for label, pick in (("min", min), ("median", statistics.median)):
        fwd, blk, dec = pick(t["forward"]), pick(t["plain blocks"]), pick(t["decoder"])
        print(f"overhead outside the ViT blocks and the decoder ({label}): {(fwd - blk - dec) * 1e3:.1f} ms "
              f"= {100 * (fwd - blk - dec) / fwd:.2f} % of the forward ({fwd * 1e3:.1f} ms)")
    # the same share within each forward call (its own blocks and decoder subtracted): free of the
    # round-to-round drift of a shared CPU that the separately timed references above carry
    share = [(f - b - d) / f for f, b, d in zip(t["forward"], t["fwd blocks"], t["fwd decoder"])]
    print(f"overhead within each forward (heads + rest): min {100 * min(share):.2f} %, "
          f"median {100 * statistics.median(share):.2f} %")


if __name__ == "__main__":
    main()
