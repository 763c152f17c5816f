"""Build avat3r/face/canonical_face.npz: the 3D positions of mediapipe's 478 face-mesh landmarks in avat3r's
head-centric world (origin at the head centre, +y up, +z out of the face, metres), the model the face tracker
solves head poses against (solvePnP).

mediapipe's wheel carries the face mesh network but not its canonical face geometry, so the model is measured:
neutral SynthHeads persons are filmed from a grid of known cameras around the front (yaw ±40°, pitch ±16°), the
tracker's landmarks are triangulated per person (linear least squares over the views, views whose reprojection
error exceeds 3 px dropped), the median over persons is mirrored onto itself (the mesh is symmetric) and the
result is scaled about the head centre so that the iris centres are EYE_DISTANCE apart, the average adult
interpupillary distance. Being measured in SynthHeads' world, the origin is where avat3r's models expect the
head centre.

    python recipes/build_face_model.py [--persons 24] [--res 320]
    python recipes/build_face_model.py --gains     # the landmarks extractor's GAINS (avat3r/face/expressions.py)

``--gains`` films neutral and full-strength (1.0) expressions of SynthHeads persons (another seed) from near the
front and prints, per measure of the landmarks extractor, the median change at a coefficient of 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

EYE_DISTANCE = 0.063  # metres between the iris centres: the average adult interpupillary distance (≈ 63 mm)
OUT = Path(__file__).resolve().parents[1] / "avat3r" / "face" / "canonical_face.npz"


def grid_cameras(res: int, dist: float = 1.0, fill: float = 0.8):
    from avat3r.cameras import Cameras, intrinsics, look_at
    from avat3r.data.synth.rig import HEAD_EXTENT

    eyes = []
    for pitch in (-16.0, 0.0, 16.0):
        for yaw in (-40.0, -20.0, 0.0, 20.0, 40.0):
            y, p = np.deg2rad(yaw), np.deg2rad(pitch)
            eyes.append([dist * np.cos(p) * np.sin(y), dist * np.sin(p), dist * np.cos(p) * np.cos(y)])
    f = fill * res * dist / HEAD_EXTENT
    K = intrinsics(f, f, res / 2, res / 2).expand(len(eyes), 3, 3).clone()
    return Cameras(K, look_at(torch.tensor(eyes, dtype=torch.float32)), res, res)


def triangulate(P: np.ndarray, uv: np.ndarray, ok: np.ndarray, max_err: float = 3.0) -> np.ndarray:
    """P (V, 3, 4) projections, uv (V, L, 2) pixels, ok (V,) → (L, 3) points (NaN where under 2 views)."""
    V, L, _ = uv.shape
    X = np.full((L, 3), np.nan)
    for j in range(L):
        use = ok.copy()
        for _ in range(3):
            if use.sum() < 2:
                break
            rows = []
            for v in np.flatnonzero(use):
                rows.append(uv[v, j, 0] * P[v, 2] - P[v, 0])
                rows.append(uv[v, j, 1] * P[v, 2] - P[v, 1])
            A = np.asarray(rows)
            x = np.linalg.lstsq(A[:, :3], -A[:, 3], rcond=None)[0]
            proj = np.einsum("vij,j->vi", P, np.append(x, 1.0))
            err = np.linalg.norm(proj[:, :2] / proj[:, 2:] - uv[:, j], axis=-1)
            X[j] = x
            keep = use & (err <= max_err)
            if keep.sum() == use.sum() or keep.sum() < 2:
                break
            use = keep
    return X


def mirror_pairs(X: np.ndarray) -> np.ndarray:
    """For each landmark, the index of its mirror image across the x = 0 plane (nearest mirrored point)."""
    mirrored = X * np.array([-1.0, 1.0, 1.0])
    d = np.linalg.norm(X[:, None] - mirrored[None], axis=-1)
    return d.argmin(1)


GAIN_EXPRESSIONS = {"gap": "jawOpen", "chin": "jawOpen", "blink": "eyeBlinkLeft", "wide": "eyeWideLeft",
                    "smile": "mouthSmileLeft", "width": "mouthFunnel", "protrusion": "mouthFunnel",
                    "brow_in": "browInnerUp", "brow_out": "browOuterUpLeft", "cheek": "cheekPuff"}


def measure_gains(persons: int, seed: int, res: int) -> dict[str, float]:
    from avat3r.cameras import Cameras
    from avat3r.data.synth.expressions import EXPR_INDEX, neutral_code
    from avat3r.data.synth.identity import make_identity
    from avat3r.data.synth.render import head_gaussians, render_views
    from avat3r.face.expressions import FEATURES, measure
    from avat3r.face.tracker import FaceTracker, track_faces

    cams = grid_cameras(res)
    cams = Cameras(cams.K[[6, 7, 8]], cams.w2c[[6, 7, 8]], res, res)  # yaw −20°, 0°, 20° at pitch 0
    k = {n: i for i, n in enumerate(FEATURES)}
    column = {"gap": "gap", "chin": "chin", "blink": "eye_l", "wide": "eye_l", "smile": "smile_l", "width": "width",
              "protrusion": "protrusion", "brow_in": "brow_in", "brow_out": "brow_out_l", "cheek": "cheek"}
    changes: dict[str, list[float]] = {g: [] for g in GAIN_EXPRESSIONS}
    with FaceTracker(static=True) as tracker:
        for person in range(persons):
            identity = make_identity(seed, person)

            def feats(code):
                rgb, _, _ = render_views(head_gaussians(identity, code), cams)
                frames = [(im.numpy() * 255 + 0.5).astype(np.uint8) for im in rgb]
                t = track_faces(frames, K=cams.K.double().numpy(), video=False, tracker=tracker)
                return measure(t.head_landmarks())

            base = feats(neutral_code())
            for gain, expression in GAIN_EXPRESSIONS.items():
                code = neutral_code()
                code[EXPR_INDEX[expression]] = 1.0
                d = feats(code)[:, k[column[gain]]] - base[:, k[column[gain]]]
                if gain in ("blink", "wide"):
                    d = d / base[:, k[column[gain]]]
                if gain in ("blink", "width"):
                    d = -d
                changes[gain] += [float(x) for x in d if np.isfinite(x)]
            print(f"person {person} measured", flush=True)
    return {g: float(np.median(v)) for g, v in changes.items()}


def main() -> None:
    from avat3r.data.synth.expressions import neutral_code
    from avat3r.data.synth.identity import make_identity
    from avat3r.data.synth.render import head_gaussians, render_views
    from avat3r.face.tracker import FaceTracker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=24)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--res", type=int, default=320)
    ap.add_argument("--gains", action="store_true", help="measure the landmarks extractor's gains instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.gains:
        gains = measure_gains(min(args.persons, 8), args.seed + 1, args.res)
        print("GAINS = {" + ", ".join(f'"{g}": {v:.4g}' for g, v in gains.items()) + "}")
        return
    cams = grid_cameras(args.res)
    P = (cams.K @ cams.w2c[:, :3]).double().numpy()
    per_person = []
    with FaceTracker(static=True) as tracker:
        for person in range(args.persons):
            rgb, _, _ = render_views(head_gaussians(make_identity(args.seed, person), neutral_code()), cams)
            dets = [tracker.detect((im.numpy() * 255 + 0.5).astype(np.uint8)) for im in rgb]
            ok = np.array([d is not None for d in dets])
            uv = np.stack([d[0] if d is not None else np.zeros((478, 2)) for d in dets])
            X = triangulate(P, uv, ok)
            print(f"person {person}: {ok.sum()}/{len(ok)} views, {np.isfinite(X[:, 0]).sum()} landmarks", flush=True)
            per_person.append(X)
    X = np.nanmedian(np.stack(per_person), axis=0)
    pairs = mirror_pairs(X)
    X = 0.5 * (X + X[pairs] * np.array([-1.0, 1.0, 1.0]))
    ipd = float(np.linalg.norm(X[468] - X[473]))
    scale = EYE_DISTANCE / ipd
    X = X * scale
    print(f"iris distance measured {ipd * 1000:.1f} mm, scaled by {scale:.3f}; nose tip at {X[1].round(3)}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, landmarks=X.astype(np.float32), mirror=pairs.astype(np.int16),
                        eye_distance=np.float32(EYE_DISTANCE), persons=np.int32(args.persons),
                        seed=np.int32(args.seed))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
