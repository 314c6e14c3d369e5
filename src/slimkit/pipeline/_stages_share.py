"""The weight-sharing stage: k-means clustering with the Huffman-coded container (slimkit.share)."""

from __future__ import annotations

from torch import nn

from slimkit.pipeline._stage_params import config_params
from slimkit.pipeline._stages import Stage, StageContext, register_stage
from slimkit.share import ClusterConfig


@register_stage("cluster")
class ClusterStage(Stage):
    """k-means weight sharing (Han et al. 2016). The runner measures a clustered model's bytes as the size of
    its Huffman-coded container (``model.slim`` in the stage folder), not the profile's pre-Huffman figure."""

    Params = config_params(ClusterConfig, "ClusterParams")
    structural = True
    compresses = True
    summary = "k-means weight sharing + Huffman-coded container (slimkit.share)"

    def preflight(self, input_model: nn.Module, ctx: StageContext) -> None:
        if ctx.layers_are_input:  # a layer name that is not a clusterable layer fails before the run folder is made
            from slimkit.share import layers_to_cluster

            layers_to_cluster(input_model, self.params.config())

    def rebuild(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        from slimkit.share import cluster_weights

        return cluster_weights(model, ctx.example_input, self.params.config())

    def run(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        return self.rebuild(model, ctx)
