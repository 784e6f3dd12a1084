"""Software rasteriser and the demo's overlay mosaic."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sathmr.common.errors import SathmrError
from sathmr.outputs.raster import AMBIENT, DIFFUSE
from sathmr.outputs.render import coolwarm, draw_scale_map, draw_tokens, overlay_mosaic, person_colors, render_meshes

F = 500.0
QUAD_FACES = np.array([[0, 1, 2], [0, 2, 3]])


def K_for(h: int, w: int, f: float = F) -> np.ndarray:
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def quad(cx: float, cy: float, z: float, half: float, tilt_deg: float = 0.0) -> np.ndarray:
    """Square centred at (cx, cy, z), optionally rotated about the vertical axis by tilt_deg."""
    a = np.deg2rad(tilt_deg)
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    x = corners[:, 0] * np.cos(a)
    dz = corners[:, 0] * np.sin(a)
    return np.stack([cx + x, cy + corners[:, 1], z + dz], 1)


def uv_sphere(nlat: int = 24, nlon: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Closed unit sphere; nlat=83, nlon=84 gives SMPL's 6890 vertices and 13776 faces."""
    th = np.linspace(0, np.pi, nlat + 1)[1:-1]
    ph = np.linspace(0, 2 * np.pi, nlon, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), -np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, -1, 0]], ring, [[0, 1, 0]]])
    i, j = np.meshgrid(np.arange(nlat - 2), np.arange(nlon), indexing="ij")
    a, b = 1 + i * nlon + j, 1 + i * nlon + (j + 1) % nlon
    c, d = a + nlon, b + nlon
    body = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    j = np.arange(nlon)
    top = np.stack([np.zeros(nlon, int), 1 + (j + 1) % nlon, 1 + j], 1)
    last = len(v) - 1
    bot = np.stack([np.full(nlon, last), 1 + (nlat - 2) * nlon + j, 1 + (nlat - 2) * nlon + (j + 1) % nlon], 1)
    return v, np.concatenate([top, body, bot])


RED = np.array([[40, 40, 220]], np.uint8)
BLUE = np.array([[220, 40, 40]], np.uint8)


# ------------------------------------------------------------------ rasteriser
@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_person_wins_regardless_of_order(near_first):
    img = np.zeros((100, 120, 3), np.uint8)
    near, far = quad(0, 0, 2.0, 0.1), quad(0.05, 0, 4.0, 0.3)
    verts = [near, far] if near_first else [far, near]
    colors = np.concatenate([RED, BLUE] if near_first else [BLUE, RED])
    out = render_meshes(img, verts, QUAD_FACES, K_for(100, 120), colors)
    np.testing.assert_array_equal(out[50, 60], RED[0])          # overlap: nearer (red) quad
    np.testing.assert_array_equal(out[50, 60 + 35], BLUE[0])    # only the far quad reaches here
    np.testing.assert_array_equal(out[5, 5], [0, 0, 0])         # background untouched


@pytest.mark.parametrize("reverse", [False, True])
def test_depth_order_within_one_mesh(reverse):
    """A near tilted square (dimmer) in front of a far facing one in the same mesh: the near one shows."""
    near, far = quad(0, 0, 2.0, 0.1, tilt_deg=60), quad(0, 0, 3.0, 0.4)
    v = np.concatenate([near, far])
    f = np.concatenate([QUAD_FACES, QUAD_FACES + 4])
    if reverse:
        f = f[::-1]
    white = np.array([[200, 200, 200]], np.uint8)
    out = render_meshes(np.zeros((100, 100, 3), np.uint8), [v], f, K_for(100, 100), white)
    centre, outside = out[50, 50].astype(float), out[50, 85].astype(float)
    np.testing.assert_allclose(outside, 200, atol=1)            # far square faces the camera: full
    np.testing.assert_allclose(centre, 200 * (AMBIENT + DIFFUSE * np.cos(np.deg2rad(60))), atol=2)


@pytest.mark.parametrize("zs", [(-1.0, -1.0, -1.0), (1.0, 1.0, -0.5), (0.01, 0.01, 0.01), (2.0, 2.0, 0.0)])
def test_triangle_behind_or_across_camera_draws_nothing(zs):
    v = np.array([[-0.5, -0.5, zs[0]], [0.5, -0.5, zs[1]], [0.0, 0.5, zs[2]]])
    img = np.full((60, 60, 3), 7, np.uint8)
    out = render_meshes(img, [v], np.array([[0, 1, 2]]), K_for(60, 60), RED)
    np.testing.assert_array_equal(out, img)


def test_facing_surface_brighter_than_grazing():
    img = np.zeros((100, 200, 3), np.uint8)
    facing, grazing = quad(-0.3, 0, 2.0, 0.15), quad(0.3, 0, 2.0, 0.15, tilt_deg=80)
    grey = np.full((2, 3), 200, np.uint8)
    out = render_meshes(img, [facing, grazing], QUAD_FACES, K_for(100, 200), grey).astype(float)
    f_px, g_px = out[50, 100 - 75], out[50, 100 + 75]
    assert f_px.mean() > g_px.mean() + 50
    np.testing.assert_allclose(f_px, 200, atol=1)
    np.testing.assert_allclose(g_px, 200 * (AMBIENT + DIFFUSE * np.cos(np.deg2rad(80))), atol=2)
    assert g_px.mean() >= 200 * AMBIENT - 1                     # ambient floor


def test_pixel_centre_convention_and_coverage():
    """A square projecting onto u, v in [10, 20] covers exactly pixels 10..19 (centres at i + 0.5)."""
    z = 2.0
    sq = np.array([[10, 10], [20, 10], [20, 20], [10, 20]], float)
    K = K_for(40, 40)
    v = np.concatenate([(sq - 20) * z / F, np.full((4, 1), z)], 1)
    out = render_meshes(np.zeros((40, 40, 3), np.uint8), [v], QUAD_FACES, K, RED)
    covered = out.any(-1)
    expected = np.zeros((40, 40), bool)
    expected[10:20, 10:20] = True
    np.testing.assert_array_equal(covered, expected)


def test_closed_sphere_has_no_holes_and_is_round():
    v, f = uv_sphere()
    out = render_meshes(np.zeros((200, 200, 3), np.uint8), [v * 0.5 + [0, 0, 3]], f, K_for(200, 200), RED)
    mask = out.any(-1)
    r = 0.5 * F / np.sqrt(3 ** 2 - 0.5 ** 2)                   # silhouette radius of the sphere
    yy, xx = np.mgrid[:200, :200] + 0.5
    d = np.hypot(xx - 100, yy - 100)
    assert mask[d < r - 2].all()                                # no cracks inside
    assert not mask[d > r + 2].any()
    # centre faces the camera (full colour); the rim is darker
    assert out[100, 100].astype(int).sum() > out[100, int(100 + r - 3)].astype(int).sum() + 60


def test_no_people_and_image_untouched():
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    out = render_meshes(img, np.zeros((0, 10, 3)), np.zeros((0, 3), int), K_for(30, 40))
    np.testing.assert_array_equal(out, img)
    assert out is not img
    render_meshes(img, [quad(0, 0, 2, 0.1)], QUAD_FACES, K_for(30, 40))
    np.testing.assert_array_equal(out, img)                     # input never modified


def test_bad_inputs_raise_user_errors():
    with pytest.raises(SathmrError):
        render_meshes(np.zeros((10, 10), np.uint8), [], QUAD_FACES, K_for(10, 10))
    with pytest.raises(SathmrError):
        render_meshes(np.zeros((10, 10, 3), np.uint8), [quad(0, 0, 2, 1)], QUAD_FACES, np.eye(2))
    with pytest.raises(SathmrError):
        render_meshes(np.zeros((10, 10, 3), np.uint8), [quad(0, 0, 2, 1)], QUAD_FACES + 10, K_for(10, 10))


def test_person_colors_are_a_stable_prefix_distinct_and_pastel():
    c = person_colors(40)
    assert c.shape == (40, 3) and c.dtype == np.uint8
    np.testing.assert_array_equal(c[:5], person_colors(5))     # person k keeps its colour however many there are
    assert len({tuple(x) for x in c}) == 40
    hsv = cv2.cvtColor(c[None], cv2.COLOR_BGR2HSV_FULL)[0].astype(float) / 255
    assert (hsv[:, 1] <= 0.32).all() and (hsv[:, 2] >= 0.8).all()
    assert person_colors(0).shape == (0, 3)


def test_ten_smpl_sized_people_render():
    v, f = uv_sphere(83, 84)
    assert v.shape == (6890, 3) and f.shape == (13776, 3)
    rng = np.random.default_rng(1)
    people = []
    for _ in range(10):
        z = rng.uniform(3, 10)
        people.append(v * [0.25, 0.85, 0.15] + [rng.uniform(-0.4, 0.4) * z, 0.1, z])
    img = np.zeros((724, 1288, 3), np.uint8)
    K = np.array([[1115.4407, 0, 644], [0, 1115.4407, 362], [0, 0, 1]])
    out = render_meshes(img, people, f, K)                      # speed lives in `sathmr bench`
    assert out.any(-1).mean() > 0.05


# ------------------------------------------------------------------ mosaic
def test_coolwarm_matches_matplotlib_anchor_values():
    rgb = coolwarm(np.array([0.0, 0.25, 0.5, 0.75, 1.0]))[:, ::-1].astype(int)
    expected = [[59, 76, 192], [141, 176, 254], [221, 221, 221], [244, 154, 123], [180, 4, 38]]
    np.testing.assert_allclose(rgb, expected, atol=2)
    np.testing.assert_array_equal(coolwarm(np.array([-3.0, 7.0])), coolwarm(np.array([0.0, 1.0])))


def test_scale_map_panel():
    cell = 28
    img = np.full((70, 90, 3), 100, np.uint8)                   # grid of 28 px runs past: 3 x 4 cells
    sm = np.zeros((3, 4, 2), np.float32)
    sm[1, 2] = [0.9, 0.25]                                      # confident: coolwarm(1 - 0.5)
    sm[0, 0] = [0.2, 1.0]                                       # below threshold
    out = draw_scale_map(img, sm, 0.3, cell).astype(float)
    hot = 0.8 * coolwarm(np.array(0.5)).astype(float) + 0.2 * 100
    np.testing.assert_allclose(out[28 + 10, 56 + 10], hot, atol=1)
    np.testing.assert_allclose(out[10, 10], 0.6 * 100 + 0.4 * 255, atol=1)
    np.testing.assert_allclose(out[10, 56 + 10], 0.6 * 100 + 0.4 * 255, atol=1)
    assert (out[:, 27] == 255).all() and (out[:, 28] == 255).all()   # 2-px grid between cells
    assert (out[55] == 255).all() and (out[56] == 255).all()
    with pytest.raises(SathmrError):
        draw_scale_map(img, np.zeros((3, 4)), 0.3, cell)


def test_token_panel_tints_exactly_the_token_squares():
    patch = 14
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (112, 140, 3), dtype=np.uint8)
    token_yx = np.array([[0, 0], [3, 5]])                       # level-0 squares (0,0) and (42,70)
    out = draw_tokens(img, token_yx, np.array([0, 0]), patch, legend=False).astype(float)
    inside = np.zeros(img.shape[:2], bool)
    inside[0:14, 0:14] = True
    inside[42:56, 70:84] = True
    np.testing.assert_array_equal(out[~inside], img[~inside])   # nothing else touched
    interior = np.zeros_like(inside)
    interior[1:13, 1:13] = True
    interior[43:55, 71:83] = True
    tint = np.array([173, 178, 241], float)
    np.testing.assert_allclose(out[interior], 0.5 * img[interior] + 0.5 * tint, atol=0.51)
    assert (out[inside & ~interior] == 255).all()               # white outline

    # levels 1 and 2 (blurred, so use a flat image): 28- and 56-px squares with their own tints
    flat = np.full((112, 140, 3), 60, np.uint8)
    out = draw_tokens(flat, np.array([[0, 1], [1, 1]]), np.array([1, 2]), patch, legend=False).astype(float)
    np.testing.assert_allclose(out[5, 28 + 5], 0.5 * 60 + 0.5 * np.array([239, 198, 175]), atol=0.51)
    np.testing.assert_allclose(out[56 + 5, 56 + 5], 0.5 * 60 + 0.5 * 255, atol=0.51)
    assert (out[5, 5] == 60).all() and (out[5, 60] == 60).all()
    assert (out[56:112, 56] == 255).all() and (out[56:112, 111] == 255).all()   # own 1-px border
    assert (out[56:112, 55] == 60).all()                        # outside: untouched


def test_mosaic_layout_and_no_people():
    h, w, patch = 112, 168, 14
    img = np.random.default_rng(2).integers(0, 255, (h, w, 3), dtype=np.uint8)
    K = K_for(h, w)
    sm = np.zeros((3, 4, 2), np.float32)                        # 56/28 x 168/28 would be 4 x 6: crop/fill
    yx = np.array([[6, 10]])                                    # square at (84, 140), clear of the legend
    out = overlay_mosaic(img, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 6890, 3)), np.zeros((0, 3), int),
                         K, sm, 0.3, yx, np.array([0]), patch)
    assert out.shape == (2 * h, 2 * w, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:h, :w], img)             # no boxes
    np.testing.assert_array_equal(out[:h, w:], img)             # no meshes
    br = out[h:, w:].astype(float)
    np.testing.assert_allclose(br[90, 147], 0.5 * img[90, 147] + 0.5 * np.array([173, 178, 241]), atol=0.51)
    np.testing.assert_array_equal(br[100, 120], img[100, 120])  # not a token, far from the legend


def test_mosaic_with_people():
    h, w, patch = 112, 168, 14
    img = np.full((h, w, 3), 30, np.uint8)
    K = K_for(h, w)
    v = np.stack([quad(-0.3, 0, 3, 0.2), quad(0.3, 0, 3, 0.2)])
    boxes = np.array([[20.0, 10.0, 60.0, 90.0], [100.0, 20.0, 150.0, 100.0]])
    out = overlay_mosaic(img, boxes, np.array([0.9, 0.5]), v, QUAD_FACES, K, np.zeros((4, 6, 2)), 0.3,
                         np.zeros((0, 2), int), np.zeros(0, int), patch)
    assert tuple(out[50, 20]) == (255, 0, 255) and tuple(out[10, 40]) == (255, 0, 255)
    np.testing.assert_array_equal(out[:h, w:], render_meshes(img, v, QUAD_FACES, K))
    assert (out[h // 2, w + 34] != 30).any() and (out[h // 2, w + w // 2] == 30).all()
    with pytest.raises(SathmrError):
        overlay_mosaic(img, boxes, np.zeros(3), v, QUAD_FACES, K, np.zeros((4, 6, 2)), 0.3,
                       np.zeros((0, 2), int), np.zeros(0, int), patch)


# ------------------------------------------------------------------ real image scene
def render_check_scene(img_path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Spheres and boxes at several depths (two spheres interpenetrating) over a real photo."""
    from sathmr.runtime.preprocess import resize_long_side

    img, _ = resize_long_side(cv2.imread(str(img_path)), 1288)
    h, w = img.shape[:2]
    f = 1288 / (2 * np.tan(np.deg2rad(30)))
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    sv, sf = uv_sphere(40, 60)
    box = sv / np.abs(sv).max(1, keepdims=True)            # sphere topology pushed onto a cube
    rot = cv2.Rodrigues(np.array([0.4, 0.6, 0.0]))[0]
    verts = [sv * 0.5 + [-1.2, 0.0, 5.0],                  # 0: mid sphere, left
             sv * 0.5 + [-0.8, 0.1, 5.3],                  # 1: interpenetrates 0, slightly behind
             sv * 1.0 + [0.6, 0.3, 9.0],                   # 2: big far sphere
             sv * 0.3 + [0.4, 0.2, 3.0],                   # 3: small near sphere in front of 2
             box @ rot.T * 0.4 + [1.9, -0.4, 6.0]]         # 4: rotated box
    faces = sf
    info = {"K": K, "faces": faces, "centres": [(-1.2, 0.0, 5.0), (0.4, 0.2, 3.0)]}
    return img, render_meshes(img, verts, faces, K), info


def test_real_image_scene(tmp_path, real_images):
    img, out, info = render_check_scene(real_images[0])
    colors = person_colors(5).astype(int)
    K = info["K"]
    # the near small sphere (3) hides the big far one (2) at its own centre
    x, y, z = info["centres"][1]
    u, v = K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2]
    px = out[int(v), int(u)].astype(int)
    assert np.abs(px - colors[3]).max() <= 3                    # facing the camera: full colour 3
    cv2.imwrite(str(tmp_path / "render_check.png"), out)


if __name__ == "__main__":   # writes /tmp/render_check.png for a visual check
    from conftest import real_image_paths
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/render_check.png")
    _, rendered, _ = render_check_scene(real_image_paths()[0])
    cv2.imwrite(str(target), rendered)
    print(target)


def test_per_face_colours() -> None:
    """(N, F, 3) colours: one colour everywhere equals per-person colours; two colours both show."""
    from sathmr.outputs.raster import render_meshes as render

    verts = np.array([[-1.0, -1.0, 4.0], [1.0, -1.0, 4.0], [1.0, 1.0, 4.0], [-1.0, 1.0, 4.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    k = np.array([[40.0, 0, 32], [0, 40.0, 32], [0, 0, 1]])
    blank = np.zeros((64, 64, 3), np.uint8)
    per_person = render(blank, [verts], faces, k, np.array([[200, 100, 50]], np.uint8))
    same = render(blank, [verts], faces, k, np.full((1, 2, 3), [200, 100, 50], np.uint8))
    assert per_person.any() and np.array_equal(per_person, same)
    two = render(blank, [verts], faces, k, np.array([[[200, 0, 0], [0, 0, 200]]], np.uint8))
    assert (two[..., 0] > 0).sum() > 100 and (two[..., 2] > 0).sum() > 100
    with pytest.raises(SathmrError, match="colors must have shape"):
        render(blank, [verts], faces, k, np.zeros((1, 3, 3), np.uint8))
