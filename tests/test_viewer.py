"""The browser viewer: the page is self-contained (nothing fetched at view time), and in real headless Chromium
(software WebGL2) it draws what avat3r's own renderer draws for the same rig, camera and code, and the jaw
slider moves the mouth."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from rig_helpers import shipped_avatar

from avat3r.expressions import builtin_sequence
from avat3r.imageio import decode_png
from avat3r.render import rasterize
from avat3r.rig import rig_from_avatar
from avat3r.stages.animate import load_animatable
from avat3r.stages.camera_path import CameraPath
from avat3r.viewer import viewer_html, write_viewer
from avat3r.viewer.chromium import Chromium, find_chromium

SIZE = 192
PSNR_BOUND = 30.0  # measured ≈ 53 dB (8-bit screenshot vs float render; back-to-front vs front-to-back blending)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    avatar = load_animatable(shipped_avatar(tmp_path_factory.mktemp("viewer") / "head.avt"), device="cpu")
    return rig_from_avatar(avatar, n_samples=48, n_eval=0)


def test_the_page_is_self_contained(rig):
    page = viewer_html(rig, builtin_sequence("demo", "synthheads-v1", 25.0, n_frames=10))
    assert not re.search(r"https?://", page)  # no URL at all: nothing to fetch, no CDN
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)\s*=", page, re.I)
    assert page.count("<script") == 2  # the data and the inlined viewer
    data = json.loads(re.search(r'id="avat3r-data">(.*?)</script>', page, re.S).group(1))
    assert data["names"] == list(rig.names) and len(data["sequence"]["codes"]) == 10


chromium = pytest.mark.skipif(find_chromium() is None, reason="no chromium binary found (apt-get install chromium)")


@pytest.fixture(scope="module")
def page(rig, tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "viewer.html"
    write_viewer(path, rig, builtin_sequence("demo", "synthheads-v1", 25.0, n_frames=10), size=SIZE)
    browser = Chromium(width=SIZE + 300, height=SIZE + 100, offline=True)
    try:
        browser.open(path.as_uri())
        yield browser, path
    finally:
        browser.close()


def _screenshot(browser, rig, code, camera) -> torch.Tensor:
    browser.evaluate(f"window.avat3r.setCamera({json.dumps(camera.K[0].tolist())}, "
                     f"{json.dumps(camera.w2c[0].tolist())}, {SIZE}, {SIZE})")
    browser.evaluate(f"window.avat3r.setCode({json.dumps([float(x) for x in code])})")
    browser.evaluate("window.avat3r.renderOnce()")
    img = np.asarray(decode_png(browser.screenshot(0, 0, SIZE, SIZE)), dtype=np.float32)
    return torch.from_numpy(img[..., :3] / 255.0 if img.max() > 1.5 else img[..., :3])


def _reference(rig, code, camera) -> torch.Tensor:
    with torch.inference_mode():
        rgb, _, _ = rasterize(rig(code), camera, backend="torch")
    return rgb[0].clamp(0, 1)


def _psnr(a, b) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@chromium
def test_the_page_draws_what_the_torch_renderer_draws(page, rig):
    browser, _ = page
    camera = CameraPath("orbit", SIZE, 1.0).camera(5, 60)  # 30° off the front: not the page's start view
    code = rig.neutral.clone()
    code[list(rig.names).index("jawOpen")] = 0.6
    code[list(rig.names).index("mouthSmileLeft")] = 0.4
    shot, ref = _screenshot(browser, rig, code, camera), _reference(rig, code, camera)
    assert float(ref.mean()) > 0.05  # the head is in view
    assert _psnr(shot, ref) >= PSNR_BOUND


@chromium
def test_the_jaw_slider_moves_the_mouth(page, rig):
    browser, _ = page
    camera = CameraPath("frontal", SIZE, 1.0).camera(0, 1)
    jaw = rig.neutral.clone()
    jaw[list(rig.names).index("jawOpen")] = 1.0
    neutral_shot, jaw_shot = _screenshot(browser, rig, rig.neutral, camera), _screenshot(browser, rig, jaw, camera)
    # where the page changed: the region the torch renders say the jaw moves, in the lower half of the face
    region = (_reference(rig, jaw, camera) - _reference(rig, rig.neutral, camera)).abs().amax(-1) > 0.1
    assert int(region.sum()) > 50
    rows = region.nonzero()[:, 0].float()
    assert float(rows.mean()) > SIZE * 0.5  # the mouth, below the image centre
    change = (jaw_shot - neutral_shot).abs().amax(-1)
    assert float(change[region].mean()) > 0.1
    assert float(change[~region].mean()) < 0.02
    top = change[: SIZE // 3]  # forehead and hair stay put
    assert float(top.mean()) < 0.01


@chromium
def test_the_page_loads_offline_and_fetches_nothing(page):
    browser, path = page
    assert browser.requests() == [path.as_uri()]
    assert browser.exceptions() == []
    assert browser.evaluate("window.avat3r.count") > 1000
    # playback of the embedded sequence runs without errors
    browser.evaluate("document.getElementById('play').click()")
    stats = browser.evaluate("new Promise(r => setTimeout(() => r(document.getElementById('stats').textContent), 500))")
    assert "sort" in stats and "draw" in stats
    assert browser.exceptions() == []
