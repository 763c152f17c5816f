"""SynthHeads: determinism, sizes, expressions that move the right pixels, the rig."""

import hashlib
import json

import numpy as np
import pytest
import torch

from avat3r.cameras import Cameras, intrinsics_from_fov, is_back_only, look_at, project, view_angle_degrees
from avat3r.data import synthheads as sh
from avat3r.data.synth import rigging
from avat3r.gaussians import Gaussians

E = len(sh.EXPRESSION_NAMES)


def code(**values) -> torch.Tensor:
    z = sh.neutral_code()
    for k, v in values.items():
        z[sh.EXPRESSION_NAMES.index(k)] = v
    return z


def find_person(pred, seed=0):
    for p in range(200):
        ident = sh.make_identity(seed, p)
        if pred(ident):
            return ident
    raise AssertionError("no such person among the first 200")


def front_camera(res=64, fov=16.0, target=(0.0, 0.0, 0.0)):
    eye = torch.tensor([[0.0, 0.0, 1.0]])
    return Cameras(intrinsics_from_fov(fov, res, res)[None], look_at(eye, torch.tensor([target])), res, res)


def part_mask(ident, *names):
    parts = sh.head_parts(ident)
    return torch.from_numpy(np.isin(parts, [sh.PARTS.index(n) for n in names]))


def recolor(g: Gaussians, mask: torch.Tensor, rgb) -> Gaussians:
    c = g.colors.clone()
    c[mask] = torch.tensor(rgb, dtype=c.dtype)
    return Gaussians(g.means, g.quats, g.scales, g.opacities, c)


def count_color(img: torch.Tensor, rgb, tol=0.12) -> int:
    return int(((img - torch.tensor(rgb)).abs().max(-1).values < tol).sum())


def front_half(g: Gaussians, mask: torch.Tensor):
    """The face half of the head (z > 0): the back cannot show in a front view, and skipping it is faster."""
    keep = g.means[:, 2] > 0
    return g.mask(keep), mask[keep]


def digest(sample: dict) -> str:
    h = hashlib.sha256()
    for k in ("rgb", "mask", "depth", "expr"):
        h.update(np.ascontiguousarray(sample[k]).tobytes())
    h.update(json.dumps(sample["camera"], sort_keys=True).encode())
    return h.hexdigest()


# -- the expression space ---------------------------------------------------------------------------
def test_expression_space():
    assert sh.EXPRESSION_SPACE == "synthheads-v1"
    assert len(sh.EXPRESSION_NAMES) >= 10 and len(set(sh.EXPRESSION_NAMES)) == E
    for name in ("jawOpen", "eyeBlinkLeft", "mouthSmileRight", "tongueOut", "browInnerUp", "cheekPuff"):
        assert name in sh.EXPRESSION_NAMES
    z = sh.neutral_code()
    assert z.dtype == torch.float32 and z.shape == (E,) and not z.any()


def test_segments_are_smooth_and_fixed():
    assert sh.SEGMENTS == ("neutral", "EXP_jaw003", "EXP_eye_wide", "EXP_tongue001", "EXP_smile", "EXP_blink")
    assert sh.ALL_SEGMENTS == sh.SEGMENTS + ("random",)
    assert not sh.segment_codes("neutral", 12).any()
    for seg in sh.SEGMENTS[1:]:
        c = sh.segment_codes(seg, 40)
        assert c.dtype == torch.float32 and c.shape == (40, E)
        assert float(c.min()) >= 0 and float(c.max()) <= 1 and float(c.max()) > 0.5
        assert float((c[1:] - c[:-1]).abs().max()) < 0.5  # raised-cosine ramps, no jumps (blinks are quick)
        assert float(c[0].abs().max()) < 0.05  # starts near neutral
        assert torch.equal(c, sh.segment_codes(seg, 40))
    jaw = sh.segment_codes("EXP_jaw003", 40)
    assert float((jaw[1:] - jaw[:-1]).abs().max()) < 0.2
    peak = sh.segment_codes("EXP_jaw003", 1)[0]
    assert float(peak[sh.EXPRESSION_NAMES.index("jawOpen")]) == pytest.approx(1.0)
    blink = sh.segment_codes("EXP_blink", 1)[0]
    assert float(blink[sh.EXPRESSION_NAMES.index("eyeBlinkLeft")]) == pytest.approx(1.0) and float(blink.sum()) == 2
    with pytest.raises(ValueError, match="unknown SynthHeads segment"):
        sh.segment_codes("EXP_nope", 3)


# -- identities and geometry ------------------------------------------------------------------------
def test_identity_is_deterministic_and_varied():
    a, b = sh.make_identity(3, 7), sh.make_identity(3, 7)
    assert a == b
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d and len(d) >= 14
    people = [sh.make_identity(3, p) for p in range(40)]
    assert len({p.skin_color for p in people}) == 40
    assert {p.hair_style for p in people} == set(sh.HAIR_STYLES)
    assert any(p.glasses for p in people) and any(not p.glasses for p in people)
    assert sh.make_identity(4, 7) != a
    assert sh.person_name(12) == "p0012"


def test_gaussian_counts_and_hair_volume():
    bald = find_person(lambda i: i.hair_style == "bald")
    hairy = find_person(lambda i: i.hair_style in ("long", "curly") and i.hair_volume > 0.5)
    gb = sh.head_gaussians(bald, sh.neutral_code())
    gh = sh.head_gaussians(hairy, sh.neutral_code())
    assert len(gb) >= 20_000
    assert len(gh) > len(gb) + 5_000
    for g in (gb, gh):
        assert g.means.dtype == torch.float32 and g.means.ndim == 2
        assert torch.isfinite(g.means).all() and (g.opacities > 0).all() and (g.opacities < 1).all()
        assert torch.allclose(g.quats.norm(dim=-1), torch.ones(len(g)), atol=1e-5)
        assert float(g.colors.min()) >= 0 and float(g.colors.max()) <= 1
    # head-centric frame: about 0.2 m wide with the ears, face towards +z
    skin = gb.means[part_mask(bald, "skin", "ear")]
    width = float(skin[:, 0].max() - skin[:, 0].min())
    assert 0.15 < width < 0.25
    nose = gb.means[part_mask(bald, "skin")][:, 2].max()
    assert float(nose) > 0.09 and float(gb.means[:, 2].min()) > -0.13


def test_neutral_geometry_is_rebuilt_bit_identically():
    ident = sh.make_identity(0, 5)
    g1 = sh.head_gaussians(ident, code(jawOpen=0.3))
    rigging._CACHE.clear()
    g2 = sh.head_gaussians(ident, code(jawOpen=0.3))
    for a, b in zip((g1.means, g1.quats, g1.scales, g1.colors), (g2.means, g2.quats, g2.scales, g2.colors)):
        assert torch.equal(a, b)


def test_rigid_parts_do_not_move_and_expressions_do():
    ident = find_person(lambda i: i.hair_style == "short" and i.glasses)
    rigid = part_mask(ident, *sh.RIGID_PARTS)
    g0 = sh.head_gaussians(ident, sh.neutral_code())
    full = sh.head_gaussians(ident, torch.ones(E))
    assert torch.equal(g0.means[rigid], full.means[rigid]) and torch.equal(g0.quats[rigid], full.quats[rigid])
    for k, name in enumerate(sh.EXPRESSION_NAMES):
        g = sh.head_gaussians(ident, code(**{name: 1.0}))
        moved = (g.means - g0.means).norm(dim=-1)
        assert float(moved.max()) > 0.003, name  # every parameter visibly deforms something (> 3 mm)
    lips = part_mask(ident, "lips")
    lower_lip = lips & (g0.means[:, 1] < float(g0.means[lips][:, 1].median()))
    jaw = sh.head_gaussians(ident, code(jawOpen=1.0))
    assert float((g0.means[lower_lip, 1] - jaw.means[lower_lip, 1]).mean()) > 0.015  # the jaw drops > 1.5 cm
    with pytest.raises(ValueError, match="expression code has"):
        sh.head_gaussians(ident, torch.zeros(E + 1))


# -- rendered effects -------------------------------------------------------------------------------
def test_expression_moves_mouth_pixels_not_hair_pixels():
    ident = find_person(lambda i: i.hair_style == "short" and not i.glasses and not i.headband)
    cam = front_camera(64)
    g0 = sh.head_gaussians(ident, sh.neutral_code())
    g1 = sh.head_gaussians(ident, code(jawOpen=1.0, mouthSmileLeft=1.0, mouthSmileRight=1.0))
    keep = g0.means[:, 2] > 0  # the same Gaussians in both renders: the face half of the head
    g0, g1 = g0.mask(keep), g1.mask(keep)
    hair, lips = part_mask(ident, "hair")[keep], part_mask(ident, "lips")[keep]
    rgb0, _, depth0 = sh.render_views(g0, cam)
    rgb1, _, _ = sh.render_views(g1, cam)
    # mouth region: the box around the projected lips
    uv, _ = project(cam, g0.means[lips][None])
    x0, y0 = uv[0].min(0).values.floor().int().tolist()
    x1, y1 = uv[0].max(0).values.ceil().int().tolist()
    mouth_change = (rgb1[0, y0:y1 + 4, x0:x1] - rgb0[0, y0:y1 + 4, x0:x1]).abs().mean()
    assert float(mouth_change) > 0.04
    # hair region: pixels where the hair alone is opaque and is the visible surface, above the eyes
    _, hair_alpha, hair_depth = sh.render_views(g0.mask(hair), cam)
    eyes, _ = project(cam, sh.head_gaussians(ident, sh.neutral_code()).means[part_mask(ident, "iris")][None])
    rows = torch.arange(64)[:, None].expand(64, 64)
    region = (hair_alpha[0] > 0.998) & ((hair_depth[0] - depth0[0]).abs() < 2e-3)
    region &= rows < float(eyes[0, :, 1].min()) - 4
    assert int(region.sum()) > 40
    diff = (rgb1[0] - rgb0[0]).abs().max(-1).values[region]
    assert float((diff < 1e-5).float().mean()) > 0.9  # bit-for-bit but for float rounding
    assert float(diff.max()) < 5e-3  # at most the light that leaks through the hair from the skin behind


def test_jaw_open_reveals_mouth_interior():
    ident = find_person(lambda i: i.facial_hair == "none" and i.skin_color[0] > 0.7)
    cam = front_camera(64, fov=9.0, target=(0.0, -0.04, 0.0))
    marker = (0.0, 1.0, 0.0)
    counts, dark = [], []
    for z in (sh.neutral_code(), code(jawOpen=1.0)):
        g, interior = front_half(sh.head_gaussians(ident, z), part_mask(ident, "cavity", "teeth", "tongue"))
        counts.append(count_color(sh.render_views(recolor(g, interior, marker), cam)[0][0], marker, 0.3))
        dark.append(count_color(sh.render_views(g, cam)[0][0], sh.CAVITY_COLOR.tolist(), 0.08))
    assert counts[0] == 0 and counts[1] > 15
    assert dark[1] > dark[0] + 5  # the dark cavity colour itself shows


def test_blink_covers_the_iris():
    ident = find_person(lambda i: not i.glasses)
    cam = front_camera(64, fov=9.0, target=(0.0, 0.01, 0.0))
    marker = (0.0, 1.0, 0.0)
    seen = {}
    for name, z in (("open", sh.neutral_code()), ("wide", code(eyeWideLeft=1.0, eyeWideRight=1.0)),
                    ("closed", code(eyeBlinkLeft=1.0, eyeBlinkRight=1.0)), ("left", code(eyeBlinkLeft=1.0))):
        g, eyes = front_half(sh.head_gaussians(ident, z), part_mask(ident, "iris", "pupil"))
        img = sh.render_views(recolor(g, eyes, marker), cam)[0][0]
        seen[name] = (count_color(img[:, :32], marker, 0.3), count_color(img[:, 32:], marker, 0.3))
    assert min(seen["open"]) > 5
    assert sum(seen["wide"]) > sum(seen["open"])
    assert seen["closed"] == (0, 0)
    # subject's left eye (+x) appears on the image's right in a front view; only it closes
    assert seen["left"][1] == 0 and seen["left"][0] == seen["open"][0]


# -- the rig and samples ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [64, 12])
def test_rig(n):
    names, cams = sh.make_rig(0, n, 64)
    assert len(names) == len(cams) == n and len(set(names)) == n
    assert all("." not in s and "/" not in s for s in names) and names[0] == "cam00"
    cams.validate(names)
    assert cams.image_size == (64, 64)
    back = is_back_only(cams)
    assert 1 <= int(back.sum()) < n // 4
    assert int((view_angle_degrees(cams) < 80).sum()) > n // 2  # frontal majority
    assert float(view_angle_degrees(cams)[0]) < 10
    dist = cams.centers.norm(dim=-1)
    assert float(dist.min()) >= 0.9 and float(dist.max()) <= 1.1
    aim = torch.nn.functional.cosine_similarity(cams.forward, -cams.centers, dim=-1)
    assert float(aim.min()) > np.cos(np.deg2rad(3)) and float(aim.max()) < 1 - 1e-9  # near the origin, jittered
    fill = cams.K[:, 0, 0] * 0.27 / dist / 64
    assert float(fill.min()) >= 0.6 - 1e-4 and float(fill.max()) <= 0.85 + 1e-4
    names2, cams2 = sh.make_rig(0, n, 64)
    assert names2 == names and torch.equal(cams2.w2c, cams.w2c)
    assert not torch.equal(sh.make_rig(1, n, 64)[1].w2c, cams.w2c)


def test_per_person_rigs_differ_within_capture_ranges():
    n = 12
    shared = sh.make_rig(0, n, 64)[1]
    rigs = [sh.make_rig(0, n, 64, person=p)[1] for p in range(6)]
    assert torch.equal(sh.make_rig(0, n, 64, person=3)[1].w2c, rigs[3].w2c)  # deterministic
    for cams in rigs:
        assert not torch.allclose(cams.w2c, shared.w2c)
        dist = cams.centers.norm(dim=-1)
        assert 0.8 * 0.95 - 1e-4 <= float(dist.min()) and float(dist.max()) <= 1.25 * 1.05 + 1e-4
        assert 1 <= int(is_back_only(cams).sum()) < n // 4
        aim = torch.nn.functional.cosine_similarity(cams.forward, -cams.centers, dim=-1)
        assert float(aim.min()) > np.cos(np.deg2rad(4))  # still aimed at the head
    dists = torch.stack([c.centers.norm(dim=-1).mean() for c in rigs])
    assert float(dists.max() - dists.min()) > 0.05  # distances (and so rigs) really vary between persons
    a = sh.render_sample(0, 2, "neutral", 0, 0, n_frames=1, n_cameras=8, res=32, person_rig=True)
    assert np.allclose(a["camera"]["w2c"], sh.make_rig(0, 8, 32, person=2)[1].w2c[0].double().numpy())


def test_random_segment_codes_vary_per_person_and_frame():
    codes = torch.stack([sh.random_code(0, p, f) for p in range(20) for f in range(10)])
    assert torch.equal(codes[7], sh.random_code(0, 0, 7))  # a pure function of (seed, person, frame)
    assert len({tuple(c.tolist()) for c in codes}) > 170  # ~1 in 10 frames is neutral, the rest distinct
    assert float(codes.min()) >= 0 and float(codes.max()) <= 1
    used = (codes > 0.3).float().mean(0)
    assert bool((used > 0.03).all())  # every parameter of the space is exercised
    tongue = codes[:, sh.EXPRESSION_NAMES.index("tongueOut")] > 0
    assert bool((codes[tongue, sh.EXPRESSION_NAMES.index("jawOpen")] >= 0.5).all())  # tongue shows: jaw open
    s = sh.render_sample(0, 4, "random", 3, 0, n_frames=5, n_cameras=8, res=32)
    assert np.array_equal(s["expr"], sh.random_code(0, 4, 3).numpy())


def test_render_sample_is_deterministic():
    args = {"n_frames": 5, "n_cameras": 8, "res": 32}
    a = sh.render_sample(0, 1, "EXP_jaw003", 2, 0, **args)
    rigging._CACHE.clear()
    b = sh.render_sample(0, 1, "EXP_jaw003", 2, "cam00", **args)
    c = sh.render_sample(0, 2, "EXP_jaw003", 2, 0, **args)
    assert digest(a) == digest(b) != digest(c)
    assert a["rgb"].dtype == np.uint8 and a["rgb"].shape == (32, 32, 3)
    assert a["mask"].dtype == np.uint8 and a["mask"].shape == (32, 32)
    assert a["depth"].dtype == np.float32 and a["depth"].shape == (32, 32)
    assert a["expr"].dtype == np.float32 and np.array_equal(a["expr"], sh.segment_codes("EXP_jaw003", 5)[2].numpy())
    cam = a["camera"]
    assert json.loads(json.dumps(cam)) == cam and cam["width"] == cam["height"] == 32
    assert 200 < int((a["mask"] > 128).sum()) < 32 * 32  # the head fills much of the frame, not all
    d = a["depth"][a["mask"] > 250]
    assert 0.8 < float(d.min()) and float(d.max()) < 1.2  # the head is about a metre away
    assert a["rgb"][a["mask"] == 0].max() == 0  # black background
    with pytest.raises(ValueError, match="outside"):
        sh.render_sample(0, 1, "neutral", 5, 0, **args)
    with pytest.raises(ValueError, match="camera"):
        sh.render_sample(0, 1, "neutral", 0, 8, **args)


def test_supersampled_renders_look_like_downscaled_photos():
    """Point-sampled renders change with the resolution (sub-pixel splats are dilated without losing opacity);
    area-sampled ones (``supersample``) are the block average of a finer render, as a downscaled photo is."""
    _, rig = sh.make_rig(0, 12, 32, person=3)
    g = sh.head_gaussians(sh.make_identity(0, 3), sh.neutral_code())
    cams = rig[:3]

    def pool(x):  # (V,H,W,C) → (V,H/2,W/2,C)
        return torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)

    def psnr(a, b):
        return float(-10 * torch.log10(((a - b) ** 2).mean()))

    fine, fine_alpha, fine_depth = sh.render_views(g, cams.resized(64, 64))
    rgb, alpha, depth = sh.render_views(g, cams, supersample=2)
    torch.testing.assert_close(rgb, pool(fine))
    torch.testing.assert_close(alpha, pool(fine_alpha[..., None])[..., 0])
    hit = alpha > 0  # depth: the alpha-weighted mean of the block's
    expect = pool((fine_alpha * fine_depth)[..., None])[..., 0] / alpha.clamp_min(1e-12)
    torch.testing.assert_close(depth[hit], expect[hit])
    assert not depth[~hit].any()
    # a 2× supersampled 32² render is near the block average of a 2× supersampled 64² one; a plain 32² render is not
    finer = pool(sh.render_views(g, cams.resized(64, 64), supersample=2)[0])
    plain = sh.render_views(g, cams)[0]
    assert psnr(rgb, finer) > psnr(plain, finer) + 5, (psnr(rgb, finer), psnr(plain, finer))
    sample = sh.render_sample(0, 3, "neutral", 0, 1, n_frames=1, n_cameras=12, res=32, person_rig=True,
                              supersample=2)
    assert np.array_equal(sample["rgb"], np.round(rgb[1].clamp(0, 1).numpy() * 255).astype(np.uint8))
