"""The Avat3r network: shapes, parameter count, cross-view attention, expression path, masking, the
encode/decode split, the step-0 reprojection baseline, checkpoints and gradients."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from avat3r.cameras import Cameras, intrinsics_from_fov, look_at, project, rays
from avat3r.model import Avat3r, Avat3rConfig, ConfigError, ModelInputError
from avat3r.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, weights_sha256
from avat3r.render import rasterize

SPHERE_RADIUS = 0.12


def sphere_scene(res: int, views: int = 4, seed: int = 0):
    """A textured sphere seen by ``views`` cameras on a frontal arc: exact position maps, confidence 1 on the
    sphere and 0.1 off it, black background. Returns images (1,V,R,R,3), cameras, pos, conf."""
    eyes = []
    for i in range(views):
        a = math.radians(-60 + 120 * i / max(views - 1, 1))
        eyes.append(torch.tensor([0.7 * math.sin(a), 0.1 * (i % 2), 0.7 * math.cos(a)]))
    K = intrinsics_from_fov(30.0, res, res)
    cams = Cameras.cat([Cameras(K, look_at(e), res, res) for e in eyes])
    o, d = rays(cams)
    b = (o * d).sum(-1)
    disc = b ** 2 - ((o * o).sum(-1) - SPHERE_RADIUS ** 2)
    hit = disc > 0
    t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), -b)  # off the sphere: the point nearest the origin
    pos = o + t[..., None] * d
    tex = 0.5 + 0.4 * torch.sin(torch.stack([20 * pos[..., 0], 25 * pos[..., 1] + 1, 15 * pos[..., 2] + 2], -1))
    images = torch.where(hit[..., None], tex, torch.zeros_like(tex))
    conf = torch.where(hit, torch.ones_like(t), torch.full_like(t, 0.1))
    return images[None].float(), cams, pos[None].float(), conf[None].float()


def tiny(**overrides) -> Avat3rConfig:
    return Avat3rConfig.preset("tiny", **{"input_res": 32, **overrides})


def make_model(config: Avat3rConfig, seed: int = 0) -> Avat3r:
    torch.manual_seed(seed)
    return Avat3r(config).eval()


def analytic_param_count(c: Avat3rConfig) -> int:
    """Parameter count from the layer shapes (DESIGN §3), written independently of the modules."""
    D, E, H, S = c.dim, c.expression_dim, c.expression_hidden, c.expression_tokens
    mlp = int(D * c.mlp_ratio)

    def block(w: int, cross: bool) -> int:  # pre-norm block: LNs, attention projections, MLP
        h = int(w * c.mlp_ratio)
        norms = (3 if cross else 2) * 2 * w
        return norms + 4 * w * w + 4 * w + (w * h + h + h * w + w)

    n = c.input_channels * c.patch ** 2 * D + c.tokens_per_view * D + 2 * D  # patchify, pos-emb, LN
    if c.use_features:
        n += (D + c.feature_dim) * D + D
    n += c.self_layers * block(D, cross=False)
    assert block(D, False) == 12 * D * D + 13 * D and mlp == 4 * D
    if c.use_expression:
        n += E * H + H + H * S * D + S * D + c.cross_layers * block(D, cross=True)
    n += 2 * D  # LN before the upsampler
    w_in = D
    for w in c.upsampler_widths():
        n += w_in * 4 * w + 4 * w + c.upsampler_layers * block(w, cross=False)
        w_in = w
    n += 2 * w_in  # upsampler's final LN
    channels = (3 if c.use_position_prior else 1) + 3 + 3 + 4 + 1
    n += w_in * channels * c.unpatch ** 2 + channels * c.unpatch ** 2
    n += 0 if c.use_position_prior else 1  # learned depth offset
    return n


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- config ---------------------------------------------------------------------------------------
def test_config_presets_and_json_round_trip():
    paper, t = Avat3rConfig.preset("paper"), Avat3rConfig.preset("tiny")
    assert (paper.dim, paper.heads, paper.self_layers, paper.cross_layers) == (768, 12, 8, 8)
    assert (paper.expression_dim, paper.expression_hidden, paper.feature_dim, paper.input_res) == (256, 256, 1920, 512)
    assert paper.upsample_steps == 1 and paper.upsampler_widths() == [384] and paper.unpatch == 8
    assert t.expression_dim == 13 and not t.use_features and t.input_res == 64 and t.patch == 8
    for c in (paper, t, tiny(use_position_prior=False)):
        assert Avat3rConfig.from_json(c.to_json()) == c and Avat3rConfig.from_dict(c.to_dict()).hash() == c.hash()
    assert paper.hash() != t.hash()
    with pytest.raises(ConfigError, match="multiple of patch"):
        Avat3rConfig.preset("tiny", input_res=60)
    with pytest.raises(ConfigError, match="unknown fields: bogus"):
        Avat3rConfig.from_dict({**t.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="unknown model preset"):
        Avat3rConfig.preset("huge")


def test_parameter_count_matches_analytic_formula():
    for c in (tiny(), tiny(use_features=True, feature_dim=16, upsample_steps=2), tiny(use_position_prior=False),
              tiny(use_expression=False)):
        assert n_params(Avat3r(c)) == analytic_param_count(c)
    paper = Avat3rConfig.preset("paper")
    with torch.device("meta"):  # no memory: only the shapes matter
        count = n_params(Avat3r(paper))
    print(f"\nparameters: paper preset {count:,} (analytic {analytic_param_count(paper):,}), "
          f"tiny {n_params(Avat3r(Avat3rConfig.preset('tiny'))):,}")
    assert count == analytic_param_count(paper)
    assert 100e6 < count < 200e6


# -- shapes ---------------------------------------------------------------------------------------
def test_tiny_output_shapes():
    cfg = tiny()
    images, cams, pos, conf = sphere_scene(32)
    model = make_model(cfg)
    with torch.no_grad():
        g = model(images, cams, pos, conf, torch.zeros(1, cfg.expression_dim))
    N = 4 * 32 * 32
    assert g.means.shape == (1, N, 3) and g.quats.shape == (1, N, 4) and g.scales.shape == (1, N, 3)
    assert g.opacities.shape == (1, N) and g.colors.shape == (1, N, 3) and g.valid.shape == (1, N)
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(1, N), atol=1e-6)
    assert ((g.opacities > 0) & (g.opacities < 1)).all() and ((g.colors >= 0) & (g.colors <= 1)).all()
    assert g.means.dtype == torch.float32


def test_paper_preset_runs_on_a_small_input():
    cfg = Avat3rConfig.preset("paper", input_res=32)  # patch 16: 2×2 tokens per view, unpatchify ×8
    model = make_model(cfg)
    images, cams, pos, conf = sphere_scene(32)
    feats = torch.randn(1, 4, cfg.feature_dim, 4, 4).half()  # feat.npy is float16 (DESIGN §4)
    with torch.no_grad():
        state = model.encode(images, cams, pos, conf, feats)
        g = model.decode(state, torch.zeros(2, 256))
    assert state.tokens.shape == (1, 4 * 4, 768)
    assert g.means.shape == (2, 4 * 32 * 32, 3) and g.valid.shape == (2, 4 * 32 * 32)
    assert torch.equal(g.means[0], pos.reshape(-1, 3)) and torch.equal(g.means[1], pos.reshape(-1, 3))
    with pytest.raises(ModelInputError, match="Sapiens features"):
        model.encode(images, cams, pos, conf)


def test_input_errors_are_one_line():
    cfg = tiny()
    model = make_model(cfg)
    images, cams, pos, conf = sphere_scene(32)
    for call, match in [(lambda: model.encode(images[:, :, :16], cams, pos, conf), "32x32 inputs"),
                        (lambda: model.encode(images, cams[:3], pos, conf), "3 cameras for 1x4"),
                        (lambda: model.encode(images, cams, None, conf), "position prior"),
                        (lambda: model.decode(model.encode(images, cams, pos, conf), torch.zeros(2, 5)), r"\(F, 13\)")]:
        with pytest.raises(ModelInputError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


# -- behaviour ------------------------------------------------------------------------------------
def test_upsampler_shuffles_each_view_on_its_own_grid():
    from avat3r.model.upsampler import TransformerUpsampler, pixel_shuffle_tokens

    x = torch.randn(3, 4, 5, 2 * 2 * 6)
    ref = torch.nn.PixelShuffle(2)(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.equal(pixel_shuffle_tokens(x, 2), ref)
    torch.manual_seed(0)
    up = TransformerUpsampler(128, [64, 64], layers=2, head_dim=64, window=16, mlp_ratio=4.0).eval()
    views = torch.randn(4, 4, 4, 128)
    changed = views.clone()
    changed[1] += 1.0
    with torch.no_grad():
        a, b = up(views), up(changed)
    assert a.shape == (4, 16, 16, 64)
    assert (a[1] - b[1]).abs().max() > 1e-3  # the changed view changes ...
    for v in (0, 2, 3):  # ... and windows never mix views
        assert torch.equal(a[v], b[v])


def test_feature_sampling_to_the_token_grid():
    from avat3r.model.embed import sample_to_grid

    f = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sample_to_grid(f, 4), f, atol=1e-6)  # same grid: unchanged
    fine = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    pooled = torch.nn.functional.avg_pool2d(fine, 2)  # token centres sit between 2×2 feature pixels
    assert torch.allclose(sample_to_grid(fine, 4), pooled, atol=1e-6)
    assert torch.allclose(sample_to_grid(f.half(), 4), f.half().float(), atol=1e-6)


def test_each_view_influences_every_views_tokens():
    cfg = tiny()
    model = make_model(cfg)
    images, cams, pos, conf = sphere_scene(32)
    with torch.no_grad():
        a = model.encode(images, cams, pos, conf).tokens
        changed = images.clone()
        changed[0, 2] = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))
        b = model.encode(changed, cams, pos, conf).tokens
    T = cfg.tokens_per_view
    for v in range(4):  # every view's tokens change, not just view 2's
        diff = (a[0, v * T:(v + 1) * T] - b[0, v * T:(v + 1) * T]).abs().max()
        assert diff > 1e-4, f"view {v} tokens unchanged"


def test_expression_changes_decoded_gaussians_not_identity_state():
    cfg = tiny()
    model = make_model(cfg)
    with torch.no_grad():  # give the zero-initialised Δ heads and cross-attention outputs weights, as after training
        model.decoder.heads.unpatchify.weight.normal_(0, 0.02)
        for blk in model.decoder.blocks:
            blk.attn.proj.weight.normal_(0, 0.02)
    images, cams, pos, conf = sphere_scene(32)
    gen = torch.Generator().manual_seed(3)
    za, zb = torch.randn(1, 13, generator=gen), torch.randn(1, 13, generator=gen)
    with torch.no_grad():
        state = model.encode(images, cams, pos, conf)
        tokens = state.tokens.clone()
        ga, gb = model.decode(state, za), model.decode(state, zb)
        assert torch.equal(model.encode(images, cams, pos, conf).tokens, tokens)
    assert torch.equal(state.tokens, tokens)  # decode leaves the state untouched
    for name in ("means", "colors", "scales", "opacities", "quats"):
        assert (getattr(ga, name) - getattr(gb, name)).abs().max() > 1e-6, name
    assert torch.equal(ga.valid, gb.valid)  # the mask depends only on the confidence


def test_conditioned_path_starts_closed_but_learns():
    """Zero-initialised cross-attention outputs: an untrained decoder ignores the code exactly (no
    code-dependent noise), yet the code's gradient reaches the output projections at once."""
    model = make_model(tiny())
    with torch.no_grad():
        model.decoder.heads.unpatchify.weight.normal_(0, 0.02)
    images, cams, pos, conf = sphere_scene(32)
    state = model.encode(images, cams, pos, conf)
    ga, gb = model.decode(state, torch.zeros(1, 13)), model.decode(state, torch.ones(1, 13))
    assert torch.equal(ga.means, gb.means) and torch.equal(ga.colors, gb.colors)
    (gb.means.square().sum() + gb.colors.sum()).backward()
    assert all(blk.attn.proj.weight.grad.abs().max() > 0 for blk in model.decoder.blocks)


def test_constant_conditioning_is_the_same_network_without_the_code():
    full, const = make_model(tiny()), make_model(tiny(expression_conditioning="constant"))
    assert n_params(full) == n_params(const)
    const.load_state_dict(full.state_dict())  # same architecture, parameter for parameter
    with torch.no_grad():
        for m in (full, const):
            m.decoder.heads.unpatchify.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
            for i, blk in enumerate(m.decoder.blocks):
                blk.attn.proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(2 + i))
    images, cams, pos, conf = sphere_scene(32)
    z = torch.rand(1, 13, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        sf, sc = full.encode(images, cams, pos, conf), const.encode(images, cams, pos, conf)
        assert torch.equal(const.decode(sc, z).means, full.decode(sf, torch.zeros(1, 13)).means)
        assert not torch.equal(full.decode(sf, z).means, full.decode(sf, torch.zeros(1, 13)).means)
    with pytest.raises(ConfigError, match="expression_conditioning"):
        tiny(expression_conditioning="shuffled")


def test_static_model_ignores_expression():
    cfg = tiny(use_expression=False)
    model = make_model(cfg)
    images, cams, pos, conf = sphere_scene(32)
    with torch.no_grad():
        state = model.encode(images, cams, pos, conf)
        ga, gb = model.decode(state, torch.zeros(1, 13)), model.decode(state, torch.ones(1, 13))
    assert torch.equal(ga.scales, gb.scales)


def test_mask_keeps_exactly_confidence_above_tau():
    cfg = tiny()
    tau = torch.tensor(cfg.confidence_threshold, dtype=torch.float32)
    model = make_model(cfg)
    images, cams, pos, _ = sphere_scene(32)
    conf = torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    conf[0, 0, :4] = tau  # exactly τ: dropped (Eq. 13 keeps confidence > τ)
    conf[0, 1, :4] = torch.nextafter(tau, torch.tensor(2.0))
    with torch.no_grad():
        g = model(images, cams, pos, conf, torch.zeros(1, 13))
    assert torch.equal(g.valid, (conf > tau).reshape(1, -1))
    assert not g.valid.reshape(4, 32, 32)[0, :4].any() and g.valid.reshape(4, 32, 32)[1, :4].all()
    kept = g.valid.sum().item()
    assert kept == int((conf > tau).sum()) and 0 < kept < conf.numel()
    assert len(g[0].compact()) == kept


def test_encode_decode_equals_forward_bit_exactly():
    cfg = tiny(use_features=True, feature_dim=8)
    model = make_model(cfg)
    images, cams, pos, conf = sphere_scene(32)
    images = torch.cat([images, images.flip(1)])  # B = 2
    cams2 = Cameras.cat([cams, cams[[3, 2, 1, 0]]])
    pos, conf = torch.cat([pos, pos.flip(1)]), torch.cat([conf, conf.flip(1)])
    feats = torch.randn(2, 4, 8, 5, 5, generator=torch.Generator().manual_seed(2))
    codes = torch.randn(2, 13, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(images, cams2, pos, conf, codes, feats)
        split = model.decode(model.encode(images, cams2, pos, conf, feats), codes)
        for name in ("means", "quats", "scales", "opacities", "colors", "valid"):
            assert torch.equal(getattr(full, name), getattr(split, name)), name
        # many frames of one identity per call ≈ one frame per call
        state = model.encode(images[:1], cams, pos[:1], conf[:1], feats[:1])
        many = model.decode(state, codes)
        for f in range(2):
            one = model.decode(state, codes[f:f + 1])
            assert torch.allclose(many.scales[f], one.scales[0], atol=1e-5, rtol=1e-5)
            assert torch.allclose(many.opacities[f], one.opacities[0], atol=1e-5)
        # k frames of every identity of a batch, frame-major: code j·B + b is frame j of identity b
        model.decoder.heads.unpatchify.weight.normal_(0, 0.02)  # so that the code moves the Gaussians
        for blk in model.decoder.blocks:
            blk.attn.proj.weight.normal_(0, 0.02)
        both = model.encode(images, cams2, pos, conf, feats)
        more = torch.randn(2, 13, generator=torch.Generator().manual_seed(5))
        paired = model.decode(both, torch.cat([codes, more]))
        for j, frame_codes in enumerate((codes, more)):
            alone = model.decode(both, frame_codes)
            for b in range(2):
                assert torch.allclose(paired.means[j * 2 + b], alone.means[b], atol=1e-5, rtol=1e-5)
                assert torch.allclose(paired.colors[j * 2 + b], alone.colors[b], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(paired.means[0], paired.means[2], atol=1e-4)  # two codes, two frames
    with pytest.raises(ModelInputError, match="identity batch of 2; pass a multiple of 2"):
        model.decode(model.encode(images, cams2, pos, conf, feats), codes[:1].expand(3, -1))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_untrained_model_reprojects_its_inputs():
    cfg = tiny()
    model = make_model(cfg)
    images, cams, pos, conf = sphere_scene(32)
    with torch.no_grad():
        g = model(images, cams, pos, conf, torch.zeros(1, 13))
    # Eq. 11-12 with zero-initialised Δ heads: means are P_v and colours are the input pixels, exactly
    assert torch.equal(g.means[0], pos.reshape(-1, 3))
    eps = cfg.color_eps
    assert torch.allclose(g.colors[0], images.reshape(-1, 3).clamp(eps, 1 - eps), atol=1e-6, rtol=0)
    # scales: σ ≈ exp(scale_offset) pixel footprints
    z = project(cams[:1], g.means[0, :32 * 32][None])[1][0]
    footprint = z / cams.K[0, 0, 0]
    ratio = g.scales[0, :32 * 32] / footprint[:, None]
    assert torch.allclose(ratio.median(), torch.tensor(math.exp(cfg.scale_offset)), rtol=0.2)
    # rendering the union of the views' Gaussians from each input camera gives back roughly its image;
    # the full frame is dominated by the 1-2 px soft silhouette against black (the input mask is binary)
    full, inside = [], []
    for v in (0, 2):
        rgb, _, _ = rasterize(g[0], cams[v:v + 1], backend="torch")
        hit = conf[0, v] > cfg.confidence_threshold
        full.append(psnr(rgb[0], images[0, v]))
        inside.append(psnr(rgb[0][hit], images[0, v][hit]))
    print(f"\nstep-0 reprojection PSNR (tiny, 32², views 0/2): full frame {full[0]:.1f}/{full[1]:.1f} dB, "
          f"inside the silhouette {inside[0]:.1f}/{inside[1]:.1f} dB")
    assert min(inside) > 22.0 and min(full) > 14.0


def test_position_prior_off_places_gaussians_on_pixel_rays():
    cfg = tiny(use_position_prior=False)
    model = make_model(cfg)
    images, cams, _, _ = sphere_scene(32)
    with torch.no_grad():
        state = model.encode(images, cams, None, None)
        g = model.decode(state, torch.zeros(1, 13))
    assert g.valid.all()  # without confidence every pixel spawns a Gaussian
    means = g.means[0].reshape(4, 32 * 32, 3)
    uv, z = project(cams, means)
    centres = torch.stack(torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="xy"), -1)
    assert torch.allclose(uv, centres.reshape(1, -1, 2).expand(4, -1, -1).float(), atol=1e-3)
    # depth ≈ camera-to-origin distance at init (GRM's anchor; raw depth outputs are ~1.6 cm at init)
    dist = cams.centers.norm(dim=-1)[:, None]
    assert (z - dist).abs().max() < 0.1 and (z - dist).abs().mean() < 0.03


def test_gradient_reaches_every_parameter():
    for cfg in (tiny(use_features=True, feature_dim=8), tiny(use_position_prior=False)):
        model = make_model(cfg).train()
        with torch.no_grad():  # zero-initialised cross-attention outputs open after the first step (tested above)
            for blk in model.decoder.blocks:
                blk.attn.proj.weight.normal_(0, 0.02)
        images, cams, pos, conf = sphere_scene(32)
        feats = torch.randn(1, 4, 8, 4, 4) if cfg.use_features else None
        g = model(images, cams, pos if cfg.use_position_prior else None, conf, torch.randn(1, 13), feats)
        w = torch.Generator().manual_seed(9)
        loss = sum((getattr(g, n) * torch.randn(getattr(g, n).shape, generator=w)).sum()
                   for n in ("means", "colors", "scales", "opacities", "quats"))
        loss.backward()
        dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not dead, dead


def test_heads_run_in_float32_under_autocast():
    cfg = tiny()
    model = make_model(cfg)
    images, cams, pos, conf = sphere_scene(32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        g = model(images, cams, pos, conf, torch.zeros(1, 13))
    assert g.means.dtype == torch.float32 and g.colors.dtype == torch.float32
    assert torch.equal(g.means[0], pos.reshape(-1, 3))  # the skip survives bf16 autocast exactly


# -- checkpoints ----------------------------------------------------------------------------------
META = {"expression_space": "synthheads-v1", "expression_names": [f"e{i}" for i in range(13)],
        "neutral": [0.0] * 13, "position_prior": "geometric", "feature_prior": "none", "step": 7}


def test_lifted_weights_are_the_model_on_block_averages():
    """input_res and patch × 2: tokens equal the original's on 2×2 block averages, each Gaussian becomes a 2×2
    block with the original's raw attributes, and on a block-constant scene the two models render alike."""
    from avat3r.model.upres import upres_factor, upres_state

    small = tiny()
    big = small.replace(input_res=64, patch=16)
    assert upres_factor(small, big) == 2 and upres_factor(big, small) is None
    assert upres_factor(small, small.replace(input_res=64)) is None  # a new token grid is not a lift
    assert upres_factor(small, small.replace(input_res=128, patch=32)) == 4  # 4× the side and the patch
    assert upres_factor(small, small.replace(input_res=128, patch=16)) is None
    model = make_model(small)
    with torch.no_grad():  # a trained-looking model: every Δ head and cross-attention output non-zero
        model.decoder.heads.unpatchify.weight.normal_(0, 0.05)
        for blk in model.decoder.blocks:
            blk.attn.proj.weight.normal_(0, 0.02)
    lifted = Avat3r(big).eval()
    lifted.load_state_dict(upres_state(model.state_dict(), small, 2))
    x = torch.randn(3, small.input_channels, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(lifted.encoder.embed(x), model.encoder.embed(torch.nn.functional.avg_pool2d(x, 2)),
                              atol=1e-5)
        t = torch.randn(3, 8, 8, small.out_width, generator=torch.Generator().manual_seed(2))
        raw_small, raw_big = model.decoder.heads.split(t), lifted.decoder.heads.split(t)
        for name, m in raw_small.items():
            assert torch.equal(raw_big[name], m.repeat_interleave(2, 1).repeat_interleave(2, 2)), name
        # a scene seen at 32² and, block-constant, at 64²: the Gaussians agree block for block (the Plücker
        # rays of the finer pixels differ only at second order), the splats at half the pixel footprint
        images, cams, pos, conf = sphere_scene(32)
        up = lambda a: a.repeat_interleave(2, 2).repeat_interleave(2, 3)  # noqa: E731
        from avat3r.cameras import intrinsics_from_fov

        K2 = intrinsics_from_fov(30.0, 64, 64).expand(len(cams), 3, 3)
        cams2 = Cameras(K2, cams.w2c, 64, 64)
        codes = torch.tensor([[0.8, 0.0, 0.3] + [0.0] * 10])
        g1 = model.decode(model.encode(images, cams, pos, conf), codes)
        g2 = lifted.decode(lifted.encode(up(images), cams2, up(pos), up(conf)), codes)
        shape = (1, 4, 32, 32)
        for name, tol in (("means", 2e-3), ("colors", 2e-2), ("opacities", 2e-2)):
            a = getattr(g1, name).reshape(*shape, -1)
            b = getattr(g2, name).reshape(1, 4, 64, 64, -1)[:, :, ::2, ::2]
            assert (a - b).abs().max() < tol, name
        ratio = g2.scales.reshape(1, 4, 64, 64, 3)[:, :, ::2, ::2] / g1.scales.reshape(*shape, 3)
        assert torch.allclose(ratio, torch.full_like(ratio, 0.5), rtol=2e-2)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    cfg = tiny()
    model = make_model(cfg, seed=11)
    digest = save_checkpoint(tmp_path / "ck", model, META)
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp folders left behind
    assert digest == weights_sha256(tmp_path / "ck")
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert loaded.config == cfg and meta["sha256"] == digest and meta["step"] == 7
    assert meta["expression_names"] == META["expression_names"] and meta["position_prior"] == "geometric"
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    images, cams, pos, conf = sphere_scene(32)
    with torch.no_grad():
        a = model(images, cams, pos, conf, torch.ones(1, 13))
        b = loaded(images, cams, pos, conf, torch.ones(1, 13))
    assert torch.equal(a.scales, b.scales) and torch.equal(a.opacities, b.opacities)
    # saving again into the same folder (which may hold train_state/) keeps the other files
    (tmp_path / "ck" / "train_state").mkdir()
    save_checkpoint(tmp_path / "ck", make_model(cfg, seed=12), {**META, "step": 8})
    assert (tmp_path / "ck" / "train_state").is_dir() and load_checkpoint(tmp_path / "ck")[1]["step"] == 8


def test_checkpoint_errors(tmp_path, monkeypatch):
    cfg = tiny()
    model = make_model(cfg)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(tmp_path / "ck", model, META)
    (tmp_path / "ck" / "model.safetensors").rename(tmp_path / "w")
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "w").rename(tmp_path / "ck" / "model.safetensors")
    # weights of another config under this config.json: sha256 mismatch
    other = tmp_path / "other"
    save_checkpoint(other, make_model(tiny(dim=192, heads=4)), META)
    (other / "model.safetensors").replace(tmp_path / "ck" / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match config.json"):
        load_checkpoint(tmp_path / "ck")
    # same, with the sha256 check out of the way: the shape mismatch is named
    doc = json.loads((tmp_path / "ck" / "config.json").read_text())
    del doc["weights_sha256"]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="has shape") as err:
        load_checkpoint(tmp_path / "ck")
    assert "\n" not in str(err.value)
    doc["version"] = 99
    (tmp_path / "ck" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "ck")
    # a save killed before its final rename leaves neither a checkpoint nor a temp folder
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new", model, META)
    monkeypatch.undo()
    assert not (tmp_path / "new").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
