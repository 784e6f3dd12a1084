"""Official checkpoint layout (the manifest) loads strictly through our key map; our format round-trips."""

from pathlib import Path

import pytest
import torch

from sathmr.common.errors import SathmrError
from sathmr.model import build_model
from sathmr.model.checkpoint import from_official, load_model, load_on_canvas, resize_pos_grid, save_checkpoint, to_official
from sathmr.model.config import get_config

from helpers import random_official_state_dict

MANIFEST = Path(__file__).parent / "data" / "official_state_dict_manifest.tsv"
FULL = get_config("sat_644")
TINY = get_config("tiny")


def read_manifest():
    rows = {}
    for line in MANIFEST.read_text().splitlines()[1:]:
        key, shape, dtype, kind, *alias = line.split("\t")
        rows[key] = ([int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype, alias[0] if alias else "")
    return rows


@pytest.fixture(scope="module")
def full_model():
    """One full-size model for the loading tests (each loads a whole state dict into it, or fails before)."""
    torch.manual_seed(0)
    return build_model(FULL)


@pytest.fixture(scope="module")
def manifest_state(full_model):
    """A random state dict laid out exactly as the manifest (names, shapes, dtypes, shared aliases)."""
    rows = read_manifest()
    ours = to_official(full_model.state_dict(), FULL)
    state = {}
    for key, (shape, dtype, _alias) in rows.items():
        if key in ours:
            state[key] = ours[key].clone()      # not the model's own storage: tests overwrite the model
        else:  # human_model.* buffers: synthetic stand-ins of the right shape
            state[key] = (torch.randint(0, 20, shape) if dtype == "int64" else torch.randn(shape))
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype) == f"torch.{dtype}", key
    for key, (_, _, alias) in rows.items():
        if alias:
            state[key] = state[alias]
    return state


def test_manifest_matches_our_layout():
    with torch.device("meta"):      # names and shapes only: no weights needed
        ours = to_official(build_model(FULL).state_dict(), FULL)
    rows = read_manifest()
    assert set(ours) == {k for k in rows if not k.startswith("human_model.")}
    assert len(rows) == 681


def test_official_layout_loads_strictly(manifest_state, full_model):
    model = full_model
    body = from_official(dict(manifest_state), model)
    assert set(body) == {k.split("human_model.layer_n.")[1] for k in manifest_state if k.startswith("human_model.")}
    sd = model.state_dict()
    assert torch.equal(sd["decoder.layers.0.ca_qpos_proj.weight"], manifest_state["decoder.decoder.layers.0.ca_qpos_proj.weight"])
    assert torch.equal(sd["encoder.additional_blocks.2.ls2.gamma"], manifest_state["encoder.additional_blocks.2.ls2.gamma"])
    assert torch.equal(sd["mean_pose"], manifest_state["mean_pose"])


def assert_loaded_from(model, state: dict) -> None:
    """Every network tensor of ``model`` equals its official counterpart in ``state`` (the explicit key map
    applied by hand here: ``decoder.decoder.*`` → ``decoder.*``), and the SMPL buffers came back."""
    sd = model.state_dict()
    official = to_official(sd, model.cfg)
    for key in official:
        if key in state:
            assert torch.equal(official[key], state[key]), key
    assert torch.equal(sd["decoder.layers.5.ca_kcontent_proj.weight"], state["decoder.decoder.layers.5.ca_kcontent_proj.weight"])


@pytest.mark.parametrize("wrap", ["module.", "model", "_orig_mod."])
def test_wrapped_checkpoints_load(manifest_state, full_model, wrap):
    state = {wrap + k: v for k, v in manifest_state.items()} if wrap.endswith(".") else {wrap: dict(manifest_state)}
    with torch.no_grad():
        for p in full_model.parameters():
            p.zero_()                           # anything not loaded would stay zero
    body = from_official(state, full_model)
    assert_loaded_from(full_model, manifest_state)
    assert set(body) == {k.split("human_model.layer_n.")[1] for k in manifest_state if k.startswith("human_model.")}


def test_wrong_checkpoints_fail_clearly(manifest_state, full_model):
    model = full_model
    bad = dict(manifest_state)
    del bad["encoder.blocks.5.mlp.fc1.weight"]
    bad["encoder.extra.weight"] = torch.zeros(1)
    bad["level_embed"] = torch.zeros(4, 768)
    with pytest.raises(SathmrError) as err:
        from_official(bad, model)
    msg = str(err.value)
    assert "missing: encoder.blocks.5.mlp.fc1.weight" in msg
    assert "unexpected: encoder.extra.weight" in msg
    assert "level_embed: checkpoint (4, 768) vs model (3, 768)" in msg
    alias = dict(manifest_state)
    alias["decoder.decoder.bbox_embed.0.layers.0.bias"] = torch.zeros(768)
    with pytest.raises(SathmrError, match="alias"):
        from_official(alias, model)
    with pytest.raises(SathmrError, match="config 'tiny'"):
        from_official(dict(manifest_state), build_model(TINY))
    cam = dict(manifest_state)
    cam["cam_intrinsics"] = cam["cam_intrinsics"] * 2
    with pytest.raises(SathmrError, match="camera"):
        from_official(cam, model)


def test_dn_enc_is_optional(manifest_state, full_model):
    """Without the training-only ``dn_enc`` every other tensor still loads, and dn_enc keeps the model's own."""
    state = {k: v for k, v in manifest_state.items() if not k.startswith("dn_enc.")}
    assert len(state) < len(manifest_state)
    with torch.no_grad():
        for name, p in full_model.named_parameters():
            p.fill_(7.0 if name.startswith("dn_enc.") else 0.0)
    from_official(state, full_model)
    assert_loaded_from(full_model, state)
    dn = {k: v for k, v in full_model.state_dict().items() if k.startswith("dn_enc.")}
    assert dn and all(torch.all(v == 7.0) for v in dn.values())


def test_official_pth_file_loads_with_weights_only(tmp_path):
    sd = random_official_state_dict(TINY, seed=3)
    path = tmp_path / "tiny_official.pth"
    torch.save(sd, path)
    model, info = load_model(path, "tiny")
    assert info["format"] == "official"
    assert torch.equal(model.state_dict()["decoder.norm.weight"], sd["decoder.decoder.norm.weight"])
    (tmp_path / "trunc.pth").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SathmrError, match="cannot read checkpoint"):
        load_model(tmp_path / "trunc.pth", "tiny")
    with pytest.raises(SathmrError, match="not found"):
        load_model(tmp_path / "nope.pth", "tiny")


def test_own_format_roundtrip_embeds_config(tmp_path):
    torch.manual_seed(1)
    model = build_model(TINY)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded, info = load_model(path)
    assert loaded.cfg == TINY and info["format"] == "sathmr"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(SathmrError, match="holds a 'tiny' model"):
        load_model(path, "sat_644")


@pytest.mark.parametrize("config, match", [
    (None, "has no 'config' metadata"),
    ('{"name": "tiny", "input_size": ', "damaged 'config' metadata \\(JSONDecodeError"),
    ('["tiny"]', "damaged 'config' metadata"),
    ('{"name": "tiny", "colour": 3}', "damaged 'config' metadata .*unknown config fields"),
    ('{"name": "tiny", "input_size": "wide"}', "damaged 'config' metadata \\(TypeError"),
])
def test_own_format_with_missing_or_damaged_config_fails_in_one_line(tmp_path, config, match):
    """A sathmr-tagged .safetensors whose config metadata is gone or garbled (issue #25, row 7)."""
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in build_model(TINY).state_dict().items()}
    meta = {"format": "sathmr", **({"config": config} if config is not None else {})}
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path), metadata=meta)
    with pytest.raises(SathmrError, match=match) as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_moves_to_another_canvas(tmp_path):
    """Warm start on a smaller canvas: every weight copied, the level-0 position table resized."""
    torch.manual_seed(2)
    model = build_model(TINY)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    small = get_config("tiny336")
    moved = load_on_canvas(path, small)
    assert moved.cfg == small and moved.encoder_pos_embeds.shape == (small.grid0, small.grid0, TINY.embed_dim)
    for k, v in model.state_dict().items():
        if k != "encoder_pos_embeds":
            assert torch.equal(moved.state_dict()[k], v), k
    same = load_on_canvas(path, TINY)                          # same canvas: nothing resampled
    assert torch.equal(same.encoder_pos_embeds, model.encoder_pos_embeds)
    with pytest.raises(SathmrError, match="more than the canvas size"):
        load_on_canvas(path, FULL)


def test_position_tables_resize_like_dinov2():
    """By scale factor (size + 0.1) / n, bicubic: a linear ramp stays the ramp, sampled at those positions."""
    n, size = 32, 24
    ramp = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, n, 2).clone()
    out = resize_pos_grid(ramp, size)
    assert out.shape == (size, size, 2)
    centres = torch.arange(size) + 0.5
    by_factor, by_size = centres * n / (size + 0.1) - 0.5, centres * n / size - 0.5
    got = out[3:-3, 5, 0]                                         # cubic (A = -0.75) wiggles by < 0.06
    assert torch.allclose(got, by_factor[3:-3], atol=0.06)
    assert (got - by_factor[3:-3]).abs().mean() < 0.5 * (got - by_size[3:-3]).abs().mean()
    assert torch.allclose(out[:, :, 1], out[:, :1, 1].expand(size, size))    # constant along the other axis


@pytest.mark.parametrize("hw", [(46, 46), (26, 46), (46, 26), (4, 46), (2, 2)])
def test_recomputed_z_order_groups_aligned_blocks(hw):
    """The official z-order buffer, clipped and sorted, lists every aligned 2x2 block as TL, TR, BL, BR."""
    from sathmr.model.checkpoint import official_buffers
    b = official_buffers(FULL)
    h, w = hw
    z = b["z_order_map"][:h, :w].flatten()
    order = z.argsort()
    ys, xs = b["y_coords"][:h, :w].flatten()[order], b["x_coords"][:h, :w].flatten()[order]
    for g in range(0, h * w, 4):
        y, x = ys[g:g + 4].tolist(), xs[g:g + 4].tolist()
        assert y[0] % 2 == 0 and x[0] % 2 == 0
        assert list(zip(y, x)) == [(y[0], x[0]), (y[0], x[0] + 1), (y[0] + 1, x[0]), (y[0] + 1, x[0] + 1)]
