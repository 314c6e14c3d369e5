"""Recipes: a validated YAML file names a model, data and an ordered list of stages; the runner runs them with
measurements and a checkpoint after each stage, resumes interrupted runs, and writes a report.

``run_recipe(load_recipe("recipes/deep-compression-lenet5.yaml"), "out/")``; ``slimkit compress RECIPE --out DIR``.
"""

# every technique family's stages register themselves on import, so recipes and `slimkit compress --list-stages`
# see all of them
from slimkit.pipeline import (  # noqa: F401
    _stages_convert,
    _stages_decompose,
    _stages_distill,
    _stages_prune,
    _stages_quantize,
    _stages_share,
)
from slimkit.pipeline._exporting import FORMATS, export_model
from slimkit.pipeline._recipe import RECIPE_VERSION, Recipe, RecipeSchema, StageCall, load_recipe, parse_recipe
from slimkit.pipeline._runner import RunResult, check_recipe, load_run, run_recipe, structure_fingerprint
from slimkit.pipeline._stages import STAGES, Stage, StageContext, StageParams, register_stage, stage_names
from slimkit.pipeline._yaml import RecipeError, load_located_yaml

__all__ = [
    "FORMATS",
    "RECIPE_VERSION",
    "STAGES",
    "Recipe",
    "RecipeError",
    "RecipeSchema",
    "RunResult",
    "Stage",
    "StageCall",
    "StageContext",
    "StageParams",
    "check_recipe",
    "export_model",
    "load_located_yaml",
    "load_recipe",
    "load_run",
    "parse_recipe",
    "register_stage",
    "run_recipe",
    "stage_names",
    "structure_fingerprint",
]
