"""The fixed-budget single graph (`sathmr export --static-budget`): static shapes, fixed batches, and the
documented overflow rule when an image needs more SAT cells than the budget."""

from __future__ import annotations

import pytest
import torch

from sathmr.backends import OrtBackend, TorchBackend
from sathmr.backends.meta import read_artifact
from sathmr.export.onnx import export_from_checkpoint
from sathmr.inputs.images import read_image
from sathmr.model.tokens import TokenBudget, default_budget
from sathmr.parity import compare_backends
from sathmr.runtime.predictor import Predictor
from sathmr.runtime.preprocess import collate, prepare

from helpers import graph_op_types, output_shapes

pytestmark = pytest.mark.slow    # one static export for the module: ~11 s on 2 cores (the quick subset exports two-stage)
KS = 40     # SAT cells: above what the first photo needs (31 with these weights), below the second's (46)


@pytest.fixture(scope="module")
def static_export(tiny_ckpt, smpl_tiny, tmp_path_factory):
    """One graph for every static test: batch fixed at 2 (padded chunks) and a SAT budget of KS cells
    (one photo fits, the other overflows)."""
    return export_from_checkpoint(tmp_path_factory.mktemp("static") / "tiny.onnx", checkpoint=tiny_ckpt,
                                  smpl_dir=smpl_tiny, static_budget=TokenBudget(KS, None), batch=2)[0]


def photos(real_images):
    return [prepare(read_image(p), 448, 56) for p in real_images]


def test_static_graph_has_fixed_token_axes(static_export, tiny_random):
    art = static_export
    assert art.meta.layout == "static" and art.files == {"static": art.path}
    assert "NonZero" not in graph_op_types(art.path)
    shapes = output_shapes(art.path)
    b = TokenBudget(KS, default_budget(tiny_random.cfg).context)
    assert art.meta.budget == b and art.meta.canvas_hw == (448, 448) and art.meta.batch == 2
    assert shapes["tok_lvl"] == [2, 4 * b.sat_cells + b.context]
    assert read_artifact(art.path).meta == art.meta


def test_static_graph_equals_torch_within_its_budget(static_export, tiny_random, body_tiny, real_images):
    item = photos(real_images)[0]
    rep = compare_backends(Predictor(TorchBackend(tiny_random), body_tiny),
                           Predictor(OrtBackend.from_file(static_export.path), body_tiny), [item], ["fits"], tol_mm=0.05)
    assert rep.passed, rep.summary()
    im = rep.images[0]
    assert im.counts_a[0] // 4 <= KS, "the photo must fit the budget"
    assert im.tokens_equal and im.overflow_b == [0, 0]
    assert all(v["rel"] <= 1e-5 for v in im.network.values()), im.network


def test_forced_overflow_demotes_largest_scale(static_export, tiny_random, body_tiny, real_images):
    """The smallest-scale SAT cells keep level 0, the rest become level-1 tokens; the flag says how many."""
    be = OrtBackend.from_file(static_export.path)
    item = photos(real_images)[1]
    with torch.inference_mode():
        dyn = TorchBackend(tiny_random).run(*collate([item]))
    out = be.run(*collate([item], be.canvas_hw))
    n0, n1, n2 = dyn["tok_counts"][0].tolist()
    need = n0 // 4
    assert need > KS, "the image must need more SAT cells than the budget"
    assert out["tok_overflow"][0].tolist() == [need - KS, 0]
    assert out["tok_counts"][0].tolist() == [4 * KS, n1 + need - KS, n2]
    smap = dyn["scale_map"][0]
    kept = {(int(y) // 2, int(x) // 2) for y, x in out["tok_yx"][0][out["tok_lvl"][0] == 0].tolist()}
    dyn_cells = {(int(y) // 2, int(x) // 2) for y, x in dyn["tok_yx"][0][dyn["tok_lvl"][0] == 0].tolist()}
    assert len(kept) == KS and kept <= dyn_cells
    demoted = dyn_cells - kept
    assert max(smap[c][1] for c in kept) <= min(smap[c][1] for c in demoted)
    lvl1 = {tuple(map(int, yx)) for yx in out["tok_yx"][0][out["tok_lvl"][0] == 1].tolist()}
    assert demoted <= lvl1
    res = Predictor(be, body_tiny).run_batch([item], ["x"]).results[0]    # what `infer` writes in its JSON
    assert res.tokens.sat_overflow == need - KS and res.tokens.level0 == 4 * KS


def test_fixed_batch_pads_the_last_chunk(static_export, real_images):
    """Three images through a batch-2 graph (one chunk padded with copies) equal one-at-a-time runs."""
    be = OrtBackend.from_file(static_export.path)
    assert be.fixed_batch == 2
    items = photos(real_images) + [prepare(read_image(real_images[0])[:300], 448, 56)]
    images, img_hw = collate(items, be.canvas_hw)
    got = be.run(images, img_hw)
    assert got["pred_boxes"].shape[0] == len(items)
    for i in range(len(items)):
        one = be.run(images[i:i + 1], img_hw[i:i + 1])
        for k in ("pred_boxes", "pred_pose6d", "tok_counts", "tok_overflow"):
            torch.testing.assert_close(got[k][i:i + 1], one[k], atol=1e-5, rtol=1e-5)
