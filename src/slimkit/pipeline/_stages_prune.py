"""Pruning stages: structured channel removal, whole blocks, and unstructured magnitude masks (slimkit.prune)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import field_validator
from torch import nn

from slimkit._errors import CheckpointError
from slimkit.pipeline._stage_params import Fraction, config_params
from slimkit.pipeline._stages import Stage, StageContext, register_stage
from slimkit.prune import DepthPruneConfig, PruneConfig, UnstructuredConfig

# the ratio range and the criterion name are also checked here, so that they are recipe errors with a line
_PruneBase = config_params(PruneConfig, "_PruneBase", ratio=(Fraction | dict[str, Fraction], 0.5))

class PruneParams(_PruneBase):  # type: ignore[misc, valid-type]
    schedule: Literal["oneshot", "layerwise"] = "oneshot"

    @field_validator("criterion")
    @classmethod
    def _check_criterion(cls, value: str) -> str:
        from slimkit.prune import CRITERIA

        CRITERIA.get(value)  # ConfigError (a ValueError) listing the criteria
        return value

def _saved_keeps(notes: object) -> dict[int, int] | None:
    """The units a finished latency-target stage kept per group, from its saved notes; None when it saved none (a
    run from before they were saved: the search runs again). Malformed ones are a damaged run folder."""
    if not isinstance(notes, dict) or "keeps" not in notes:
        return None
    keeps = notes["keeps"]
    if not isinstance(keeps, dict) or not all(isinstance(k, str) and k.isdigit() and type(v) is int and v >= 1
                                              for k, v in keeps.items()):
        raise CheckpointError("a prune stage's saved latency_target.keeps are damaged (group index → units kept): "
                              "run the recipe again with --force")
    return {int(k): v for k, v in keeps.items()}


@register_stage("prune")
class PruneStage(Stage):
    """Structured pruning: whole channels/filters are removed, so the layers become physically smaller."""

    Params = PruneParams
    structural = True
    keeps_layers = True
    compresses = True
    summary = "remove channels (slimkit.prune.prune_channels: l1, l2, taylor, fpgm, bn_scale, thinet, ...)"

    def _config(self, ctx: StageContext) -> PruneConfig:
        """The stage's config, its latency target (if any) in the run's runtime unless it names its own."""
        import dataclasses

        from slimkit.prune import as_latency_target

        config = self.params.config()
        if config.target_latency is not None:
            target = as_latency_target(config.target_latency)
            if target.backend is None:
                target = dataclasses.replace(target, backend=ctx.runtime)
            config = dataclasses.replace(config, target_latency=target)
        return config

    def _runtime_option(self) -> str:
        """How the user chose the runtime of the stage's latency target: its own field, or the evaluation's."""
        from slimkit.prune import as_latency_target

        own = as_latency_target(self.params.config().target_latency).backend is not None
        return "target_latency.backend" if own else "evaluation.runtime (--runtime)"

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        config = self._config(ctx)
        if config.target_latency is not None:  # the runtime it is timed in is installed: said before any work
            from slimkit._runtimes import require_runtime

            require_runtime(config.target_latency.runtime, self._runtime_option())
        if ctx.model_is_input:  # names in skip / layers / a per-layer ratio: layers with weights of the model
            from slimkit._select import check_names, weighted_layer_names
            from slimkit.prune import config_graph

            ratios = list(config.ratio) if isinstance(config.ratio, Mapping) else None
            check_names(weighted_layer_names(input_model), config.skip, config.layers, ratios, kind="prunable")
            config_graph(input_model, ctx.example_input, config)  # its own checks: options that prune nothing

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.prune import prune_channels, prune_layerwise, prune_to_latency

        config = self._config(ctx)
        if config.target_latency is not None:
            # a finished stage's widths, pruned to again (a run folder's replay): nothing timed, no runtime needed;
            # the first run searches and times them
            keeps = _saved_keeps(ctx.notes.get("latency_target"))
            return prune_to_latency(model, ctx.example_input, config, data=ctx.data.calibration, keeps=keeps,
                                    runtime_option=self._runtime_option())
        prune = prune_layerwise if self.params.schedule == "layerwise" else prune_channels
        return prune(model, ctx.example_input, config, data=ctx.data.calibration)

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.prune import pruning_info

        pruned = self.rebuild(model, ctx)
        latency = (pruning_info(pruned) or {}).get("latency")
        if latency:  # a latency target: what the table predicted and what was measured
            ctx.notes["latency_target"] = {k: latency[k] for k in ("target", "batch", "threads", "backend",
                                                                   "predicted", "measured", "rounds", "keeps")}
        return pruned

@register_stage("prune_depth")
class PruneDepthStage(Stage):
    """Depth pruning: whole blocks go — a CNN's residual blocks, a transformer's layers — the least important by
    the criterion on the calibration data. Each removed block takes all its time with it."""

    Params = config_params(DepthPruneConfig, "PruneDepthParams")
    structural = True
    compresses = True
    summary = "remove whole blocks: residual blocks, transformer layers (slimkit.prune.prune_depth: angular, bi, loss)"

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        if ctx.model_is_input:  # too many blocks, keep out of range, no block that keeps its input's shape
            from slimkit.prune import depth_candidates

            depth_candidates(input_model, ctx.example_input, self.params.config())

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.prune import block_importance, prune_depth, remove_blocks

        saved = ctx.notes.get("removed_blocks")
        if isinstance(saved, list) and saved and all(isinstance(name, str) for name in saved):
            return remove_blocks(model, saved)  # the blocks the finished stage chose, not measured again
        config = self.params.config()
        importance = block_importance(model, ctx.example_input, config, data=ctx.data.calibration)
        ctx.notes["removed_blocks"] = list(importance.removed_names)
        return prune_depth(model, ctx.example_input, config, importance=importance)

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        return self.rebuild(model, ctx)


@register_stage("prune_unstructured")
class PruneUnstructuredStage(Stage):
    """Magnitude pruning (Han et al. 2015): the smallest weights become zero and stay zero (masks) while later
    ``finetune`` stages train; saves bytes in sparse/compressed formats, not dense-kernel time."""

    Params = config_params(UnstructuredConfig, "PruneUnstructuredParams")
    structural = True  # the masks are not in the state dict: replaying the stage re-attaches them
    keeps_layers = True
    compresses = True
    summary = "zero the smallest weights, kept zero by masks during fine-tuning (slimkit.prune.magnitude_prune)"

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        if ctx.layers_are_input:
            from slimkit.prune import layer_sparsities

            layer_sparsities(input_model, self.params.config())  # a layer name that is not one fails here

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.prune import attached_masks, magnitude_prune

        pruned = magnitude_prune(model, ctx.example_input, self.params.config())
        ctx.notes["sparsity"] = {name: float(1 - m.float().mean()) for name, m in attached_masks(pruned).items()}
        return pruned

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        return self.rebuild(model, ctx)
