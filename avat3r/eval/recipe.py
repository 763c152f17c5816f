"""Evaluation recipes: a protocol as a TOML file, so a paper's table is one command (`avat3r eval --recipe`).

    [eval]   manifest, split, examples, seed, inputs ("mixed" | "consistent" | "other"), input_segments,
             lpips_weights
    [video]  optional: one video per person from the frontal camera (frames, cameras, segment, fps, persons)

Unknown keys are refused with one line; command-line flags override the recipe's values (``--set
eval.examples=200`` does too, as in training recipes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ..errors import Avat3rError
from ..typed_values import table_to_dataclass
from .video import VideoProtocol

INPUT_MODES = ("mixed", "consistent", "other")


class EvalRecipeError(Avat3rError, ValueError):
    """An evaluation recipe is malformed; the message names the key."""


@dataclass
class EvalSection:
    manifest: str = ""
    split: str = "test"
    examples: int = 96
    seed: int = 0
    inputs: str = "mixed"
    input_segments: tuple = ()
    lpips_weights: str = ""


@dataclass
class VideoSection:
    frames: int = 100
    cameras: tuple = ()
    segment: str = ""
    fps: float = 7.5
    persons: int = 0

    def protocol(self, n_inputs: int = 4) -> VideoProtocol:
        return VideoProtocol(self.frames, tuple(str(c) for c in self.cameras), self.segment, self.fps, self.persons,
                             n_inputs)


@dataclass
class EvalRecipe:
    eval: EvalSection = field(default_factory=EvalSection)
    video: VideoSection | None = None
    source: str = "<recipe>"


def eval_recipe_from_dict(doc: dict, source: str = "<recipe>") -> EvalRecipe:
    unknown = sorted(set(doc) - {"eval", "video"})
    if unknown:
        raise EvalRecipeError(f"{source}: unknown section [{unknown[0]}] (known: eval, video)")
    ev = table_to_dataclass(EvalSection, doc.get("eval", {}), "eval", source, EvalRecipeError)
    video = table_to_dataclass(VideoSection, doc["video"], "video", source, EvalRecipeError) if "video" in doc else None
    problems = []
    if ev.inputs not in INPUT_MODES:
        problems.append(f"eval.inputs must be one of {', '.join(INPUT_MODES)}, got {ev.inputs!r}")
    if ev.examples < 0:
        problems.append(f"eval.examples must be 0 or more, got {ev.examples}")
    if video is not None:
        if video.frames < 1:
            problems.append(f"video.frames must be at least 1, got {video.frames}")
        if not video.fps > 0:
            problems.append(f"video.fps must be positive, got {video.fps}")
        if video.persons < 0:
            problems.append(f"video.persons must be 0 (all) or more, got {video.persons}")
    if problems:
        raise EvalRecipeError(f"{source}: {problems[0]}")
    return EvalRecipe(ev, video, source)


def load_eval_recipe(path: str | Path, overrides: list[str] | None = None) -> EvalRecipe:
    from ..train.recipe import RecipeError, apply_overrides

    path = Path(path)
    if not path.is_file():
        raise EvalRecipeError(f"recipe {path} does not exist", param="recipe")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise EvalRecipeError(f"{path}: not valid TOML ({err})") from None
    try:
        doc = apply_overrides(doc, overrides or [])
    except RecipeError as err:
        raise EvalRecipeError(str(err), param="overrides") from None
    return eval_recipe_from_dict(doc, str(path))
