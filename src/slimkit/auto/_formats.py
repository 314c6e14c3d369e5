"""Deployment formats: what file a plan deploys as, which knobs apply to it, and the recipe stages that make it.

- ``onnx``: an fp32 ONNX file. Knobs: channels (structured pruning), rank (low-rank factorisation).
- ``int8``: an int8 QDQ ONNX file run by ONNX Runtime's integer kernels (``slimkit.export.export_qdq``). Knobs:
  channels, rank, and per layer int8 or float (mixed precision, like NNCF's accuracy control reverting layers).
- ``container``: the Huffman-coded container of k-means weight sharing (Han et al. 2016; ``slimkit.share``). Knobs:
  channels (whole units removed first, which the container records as a pruned layout and rebuilds on load), then
  per-layer sparsity (magnitude pruning) and bits per cluster index. Factorisation does not apply: the container
  rebuilds its spec's layers, and a factorised layer is not one. Once decoded its model runs as a dense fp32 model
  at the pruned widths, so sparsity and bits lower its size only.

A format is a registered class, so a new deployment target is one class (``@register_format("name")``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from slimkit._cpu import resolve_reduce_range
from slimkit._registry import Registry
from slimkit.auto._plan import CONTAINER_FILE, TRAIN_SETTINGS, Plan, recovery_stage


class DeployFormat:
    """One way of deploying a model. Subclasses set the class attributes and implement :meth:`stages` and
    :meth:`write`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: the knobs of :data:`slimkit.auto.KNOBS` this format uses
    knobs: ClassVar[frozenset[str]] = frozenset()
    #: the budget dimensions its deployed file can go below the input's on, with all of its knobs (see
    #: :meth:`lowers_with`)
    lowers: ClassVar[frozenset[str]] = frozenset({"latency", "size", "macs"})
    #: the deployed file's name in a candidate's folder
    file_name: ClassVar[str] = "model.onnx"
    #: whether a plan's latency can be probed on its untrained architecture (the search's choices change it)
    probe_latency: ClassVar[bool] = True

    def unavailable(self, model: nn.Module, example: Any, spec: str | None) -> str | None:
        """Why this format cannot deploy ``model`` (None when it can)."""
        return None

    def knobs_for(self, model: nn.Module) -> frozenset[str]:
        """The knobs this format can use on ``model`` (all of :attr:`knobs` unless a model rules one out)."""
        return self.knobs

    def lowers_with(self, knobs: set[str] | frozenset[str]) -> frozenset[str]:
        """The budget dimensions a plan can lower with only ``knobs`` of this format's knobs."""
        return self.lowers

    def unusable_knobs(self, model: nn.Module, example: Any, spec: str | None, knobs: frozenset[str],
                       skip: tuple[str, ...]) -> dict[str, str]:
        """Of ``knobs``, those this format cannot carry out on ``model`` after all, each with the reason (checked
        once, on the input model, before any work; none by default)."""
        return {}

    def stages(self, plan: Plan, config: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def write(self, model: nn.Module, example: Any, path: Path, spec: str | None) -> Path:
        """Write the deployed file of ``model`` (a model made by :meth:`stages`) to ``path``."""
        raise NotImplementedError

    def timed(self, model: nn.Module, example: Any, written: Path, folder: Path) -> Path:
        """The ONNX file that is timed for the latency ratio (the deployed file itself for ONNX formats)."""
        return written


FORMATS: Registry[type[DeployFormat]] = Registry("deployment format")


def register_format(name: str) -> Callable[[type[DeployFormat]], type[DeployFormat]]:
    """Class decorator: make a :class:`DeployFormat` available to ``AutoConfig(formats=...)`` as ``name``."""

    def decorator(cls: type[DeployFormat]) -> type[DeployFormat]:
        cls.name = name
        return FORMATS.register(name)(cls)

    return decorator


def create_format(name: str) -> DeployFormat:
    return FORMATS.get(name)()


def format_knobs(name: str, model: nn.Module, knobs: Any) -> frozenset[str]:
    """The knobs of ``knobs`` (the run's) that format ``name`` uses on ``model``."""
    return frozenset(knobs) & create_format(name).knobs_for(model)


def format_lowers(name: str, model: nn.Module, knobs: Any) -> frozenset[str]:
    """The budget dimensions format ``name`` can lower on ``model`` with the run's ``knobs``."""
    return create_format(name).lowers_with(format_knobs(name, model, knobs))


def searched_knobs(base: dict[str, Any], name: str, model: nn.Module, knobs: Any) -> frozenset[str]:
    """The knobs a run searches in format ``name``: :func:`format_knobs` less those the input model's check
    ruled out (``base["knobs"]``, recorded by the run's baseline; a baseline kept before it: all of them)."""
    recorded = base.get("knobs", {}).get(name)
    return frozenset(recorded) if recorded is not None else format_knobs(name, model, knobs)


def _structural_stages(plan: Plan, config: Any) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    if plan.prune:
        stages.append({"prune": {"ratio": dict(plan.prune), "criterion": config.criterion, "seed": config.seed}})
    for ratio in sorted(set(plan.rank.values()), reverse=True):
        layers = [name for name, r in plan.rank.items() if r == ratio]
        stages.append({"decompose": {"layers": layers, "ratio": ratio, "method": ["tucker2", "svd"],
                                     "seed": config.seed}})
    if stages and config.recovery_epochs > 0:
        stages.append(recovery_stage(config.recovery, config.recovery_epochs, config.recovery_lr))
    return stages


@register_format("onnx")
class OnnxFormat(DeployFormat):
    summary = "fp32 ONNX"
    knobs = frozenset({"channels", "rank"})

    def lowers_with(self, knobs: set[str] | frozenset[str]) -> frozenset[str]:
        return self.lowers if knobs & self.knobs else frozenset()  # the input model as it is, otherwise

    def stages(self, plan: Plan, config: Any) -> list[dict[str, Any]]:
        return _structural_stages(plan, config)

    def write(self, model: nn.Module, example: Any, path: Path, spec: str | None) -> Path:
        from slimkit.export import export_onnx

        return export_onnx(model, example, path)


@register_format("int8")
class Int8Format(DeployFormat):
    summary = "int8 QDQ ONNX (ONNX Runtime integer kernels)"
    knobs = frozenset({"channels", "rank", "int8"})

    def lowers_with(self, knobs: set[str] | frozenset[str]) -> frozenset[str]:
        # int8 kernels lower the time and the bytes by themselves; the MACs only fewer channels or a lower rank do
        return self.lowers if knobs & {"channels", "rank"} else self.lowers - {"macs"}

    def stages(self, plan: Plan, config: Any) -> list[dict[str, Any]]:
        stages = _structural_stages(plan, config)
        # the layers the search never changes stay float, as the analysis priced them; the weight grid is the one
        # measured here, written out so that the recipe reproduces it on any CPU
        # a factorised layer kept float is its factors by the time the quantize stage runs (fc1 → fc1.0, fc1.1)
        floats = [f"{name}.*" if name in plan.rank else name for name in plan.float_layers]
        stages.append({"quantize": {"method": "ptq", "skip": [*config.skip, *floats],
                                    "reduce_range": resolve_reduce_range(None)}})
        return stages

    def write(self, model: nn.Module, example: Any, path: Path, spec: str | None) -> Path:
        from slimkit.export import export_qdq

        return export_qdq(model, example, path)


@register_format("container")
class ContainerFormat(DeployFormat):
    summary = "k-means weight sharing + Huffman-coded container"
    knobs = frozenset({"channels", "sparsity", "clusters"})
    # its latency is its decoded model's: dense layers at the pruned widths, whatever the sparsity and bits. Not
    # offered under a latency budget, where the fp32 and int8 formats prune channels without the container's
    # analysis (minutes of clustering every layer at every width) and its weight sharing buys no time
    lowers = frozenset({"size", "macs"})
    file_name = CONTAINER_FILE
    probe_latency = False  # only under a latency limit of 1, which a decoded model, never wider, keeps

    def knobs_for(self, model: nn.Module) -> frozenset[str]:
        from slimkit.prune import is_hf_model

        # a pruned Hugging Face model keeps its sizes in its config too, which a container does not record
        return self.knobs - {"channels"} if is_hf_model(model) else self.knobs

    def lowers_with(self, knobs: set[str] | frozenset[str]) -> frozenset[str]:
        # its clusters (8 bits at least) lower the bytes, as its sparsity does; the file decodes to dense layers,
        # so only removed channels lower the MACs
        return self.lowers if "channels" in knobs else self.lowers - {"macs"}

    def unusable_knobs(self, model: nn.Module, example: Any, spec: str | None, knobs: frozenset[str],
                       skip: tuple[str, ...]) -> dict[str, str]:
        from slimkit._errors import SlimkitError
        from slimkit.prune import PruneConfig, prune_channels
        from slimkit.share import ClusterConfig, cluster_weights

        if "channels" not in knobs:
            return {}
        # a channel-pruned model is saved only once its layout, rebuilt from the spec, computes what it computes:
        # found out here rather than after a candidate has trained
        try:
            pruned = prune_channels(model, example, PruneConfig(ratio=0.25, skip=skip))
        except SlimkitError as error:
            return {"channels": f"the container cannot hold this model channel-pruned ({error})"}
        refused = _refused_save(cluster_weights(pruned, None, ClusterConfig(bits=1)), spec)
        return {"channels": f"the container cannot hold this model channel-pruned ({refused})"} if refused else {}

    def unavailable(self, model: nn.Module, example: Any, spec: str | None) -> str | None:
        from slimkit.models import is_code_spec
        from slimkit.share import ClusterConfig, cluster_weights, clustered_layers

        probe = cluster_weights(model, None, ClusterConfig(bits=1))
        if not clustered_layers(probe):
            return "the model has no Linear or Conv2d layer to cluster"
        # a container names a registered model to rebuild (a file.py:factory is never stored), and a recipe's
        # export stage finds it the same way: a model it cannot name cannot be deployed as a container
        refused = _refused_save(probe, spec if spec is not None and not is_code_spec(spec) else None)
        return f"the container cannot record how to rebuild this model ({refused})" if refused else None

    def stages(self, plan: Plan, config: Any) -> list[dict[str, Any]]:
        stages: list[dict[str, Any]] = []
        if plan.prune:
            # whole units first, as the channel-pruning + Deep Compression recipe: the magnitude-pruning rounds'
            # fine-tunes recover from both; without them, the other formats' recovery does (no mask to hold yet)
            stages.append({"prune": {"ratio": dict(plan.prune), "criterion": config.criterion, "seed": config.seed}})
            if not plan.sparsity and config.recovery_epochs > 0:
                stages.append(recovery_stage(config.recovery, config.recovery_epochs, config.recovery_lr))
        rounds = config.prune_rounds
        if plan.sparsity:
            for i in range(1, rounds + 1):
                sparsity = {name: round(1 - (1 - s) ** (i / rounds), 6) for name, s in plan.sparsity.items()}
                stages.append({"prune_unstructured": {"sparsity": sparsity}})
                if config.recovery_epochs > 0:
                    stages.append({"finetune": {"epochs": config.recovery_epochs, "lr": config.recovery_lr,
                                                **TRAIN_SETTINGS}})
        # the mean centroid gradient: a 3-bit layer's centroids each hold thousands of weights, and the paper's sum
        # at the recovery's learning rate collapsed LeNet-5 to chance (slimkit.share._clustered)
        cluster: dict[str, Any] = {"bits": dict(plan.bits), "seed": config.seed, "centroid_gradient": "mean"}
        if config.skip:
            cluster["skip"] = list(config.skip)
        stages.append({"cluster": cluster})
        if config.cluster_epochs > 0:
            stages.append({"finetune": {"epochs": config.cluster_epochs, "lr": config.cluster_lr, **TRAIN_SETTINGS}})
        stages.append({"export": {"format": "compressed", "file": CONTAINER_FILE}})
        return stages

    def write(self, model: nn.Module, example: Any, path: Path, spec: str | None) -> Path:
        from slimkit.share import save_compressed

        save_compressed(model, path, spec)
        return path

    def timed(self, model: nn.Module, example: Any, written: Path, folder: Path) -> Path:
        # the decoded model: ordinary dense layers (the exporter folds codebook[indices] into constant weights)
        from slimkit.export import export_onnx
        from slimkit.share import finalize_clusters

        return export_onnx(finalize_clusters(model), example, folder / "decoded.onnx")


def _refused_save(clustered: nn.Module, spec: str | None) -> str | None:
    """Why ``save_compressed`` refuses ``clustered`` (saved to a temporary file), or None when it saves it."""
    from slimkit._errors import SlimkitError
    from slimkit.share import save_compressed

    with tempfile.TemporaryDirectory(prefix="slimkit-auto-") as tmp:
        try:
            save_compressed(clustered, Path(tmp) / "probe.slim", spec)
        except SlimkitError as error:
            return str(error)
    return None


def example_batch(example: Any, batch: int) -> tuple[torch.Tensor, ...]:
    """The example inputs repeated to ``batch`` rows (for timing at the deployed batch)."""
    from slimkit._inputs import input_tuple

    return tuple(x.expand(batch, *x.shape[1:]).contiguous().clone() if isinstance(x, torch.Tensor) and x.dim() > 0
                 else x for x in input_tuple(example))
