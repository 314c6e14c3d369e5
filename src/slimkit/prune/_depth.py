"""Depth pruning: remove whole transformer blocks by their measured importance, keeping the model's class.

A block's importance is measured on calibration data by one of the registered criteria (:data:`DEPTH_CRITERIA`):

- ``angular`` — the angular distance between the hidden states entering and leaving the block,
  ``arccos(cos(x_in, x_out)) / π`` averaged over tokens (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the
  Deeper Layers", Eq. 7). With ``contiguous=True`` it scores a run of ``n`` blocks by the distance between the
  input of its first block and the output of its last, and removes the run with the smallest (Gromov et al. §3.2).
- ``bi`` — ShortGPT's Block Influence, ``1 − E[cos(x_in, x_out)]`` (Men et al. 2024, Eq. 2): the same idea on the
  cosine itself.
- ``loss`` — how much the calibration loss rises when the block (or run) is skipped, its output replaced by its
  input (the "drop in loss" measure of Gromov et al. §4 and of Kim et al. 2024, Shortened LLaMA, PPL criterion).

The blocks with the smallest scores are removed (one shot, as ShortGPT does), ``n_blocks`` of them or as many as
come closest to ``param_ratio`` of the model's parameters. The result is a copy of the user's model, same class,
with the block list shortened; for a Hugging Face model the config is rewritten (``num_hidden_layers`` and its
aliases, ``layer_types`` and other per-layer lists, ``max_window_layers``; a stage's entry of ``depths`` when the
blocks are one stage of a staged model such as Swin) and every ``layer_idx`` renumbered, so
``save_pretrained`` → ``from_pretrained`` gives the same outputs and ``generate`` (with its KV cache) still works.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit._errors import ConfigError
from slimkit._registry import Registry
from slimkit._select import matches
from slimkit.analysis import is_token_output, output_logits, token_cross_entropy

log = logging.getLogger(__name__)

#: block-importance criteria by name: ``criterion(model, blocks, batches, runs) -> score per run`` (lower = removable)
DEPTH_CRITERIA: Registry[Callable[..., list[float]]] = Registry("depth criterion")


@dataclass(frozen=True)
class DepthPruneConfig:
    """What :func:`prune_depth` removes.

    n_blocks: how many blocks to remove; or ``param_ratio``: the fraction of the model's parameters to remove,
        met by the block count whose removal comes closest to it (give exactly one of the two).
    criterion: ``"angular"`` (Gromov et al. 2024), ``"bi"`` (ShortGPT, Men et al. 2024) or ``"loss"`` (drop in
        calibration loss when skipped; needs ``data`` with targets).
    contiguous: remove one run of consecutive blocks (Gromov et al.) instead of the individually least important.
    blocks: the module name (or glob / ``re:``) of the block list; default: found automatically (the model's
        ``ModuleList``/``Sequential`` of same-class blocks, the one that matches ``config.num_hidden_layers``).
    keep: block indices never removed (e.g. ``(0,)``: the first block, which every criterion finds important).
    batches: calibration batches used from ``data``.
    """

    n_blocks: int | None = None
    param_ratio: float | None = None
    criterion: str = "angular"
    contiguous: bool = False
    blocks: str | None = None
    keep: tuple[int, ...] = ()
    batches: int = 8

    def __post_init__(self) -> None:
        if (self.n_blocks is None) == (self.param_ratio is None):
            raise ConfigError("give n_blocks (blocks to remove) or param_ratio (fraction of parameters), exactly one")
        if self.n_blocks is not None and (isinstance(self.n_blocks, bool) or not isinstance(self.n_blocks, int)
                                          or self.n_blocks < 1):
            raise ConfigError(f"n_blocks={self.n_blocks!r}: use a positive number of blocks to remove")
        if self.param_ratio is not None and (isinstance(self.param_ratio, bool)
                                             or not isinstance(self.param_ratio, int | float)
                                             or not 0 < self.param_ratio < 1):
            raise ConfigError(f"param_ratio={self.param_ratio!r}: use a fraction in (0, 1), e.g. 0.25")
        if self.criterion not in DEPTH_CRITERIA:
            choices = ", ".join(DEPTH_CRITERIA.names())
            raise ConfigError(f"criterion '{self.criterion}' is unknown: use one of {choices}")
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise ConfigError(f"batches={self.batches!r}: use a positive number of calibration batches")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.keep):
            raise ConfigError(f"keep={self.keep!r}: give block indices (non-negative integers)")


@dataclass(frozen=True)
class BlockImportance:
    """Scores of the candidate removals (one per block, or per run of ``n`` blocks when contiguous) and the choice."""

    blocks_name: str
    num_blocks: int
    runs: list[tuple[int, ...]]
    scores: list[float]
    removed: tuple[int, ...]
    removed_params: int
    total_params: int

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_blocks) if i not in self.removed)

    @property
    def param_reduction(self) -> float:
        return self.removed_params / self.total_params


# ----------------------------------------------------------------------------------------------- finding the blocks
def _block_lists(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList | nn.Sequential) and len(module) >= 2:
            children = list(module)
            if all(type(c) is type(children[0]) for c in children) and any(True for _ in children[0].parameters()):
                found.append((name, module))
    return found


def find_blocks(model: nn.Module, pattern: str | None = None) -> tuple[str, nn.Module]:
    """The block list depth pruning works on: the one named by ``pattern``, else the list of same-class blocks whose
    length is the HF config's ``num_hidden_layers`` (else the longest such list)."""
    candidates = _block_lists(model)
    if pattern is not None:
        chosen = [(n, m) for n, m in candidates if matches(n, pattern)]
        if len(chosen) != 1:
            names = ", ".join(n for n, _ in candidates) or "(none)"
            what = "no" if not chosen else "several"
            raise ConfigError(f"blocks='{pattern}' matches {what} block list: choose one of {names}")
        return chosen[0]
    if not candidates:
        raise ConfigError(f"{type(model).__name__} has no ModuleList/Sequential of ≥ 2 same-class blocks to remove "
                          "blocks from: name the block list with blocks='...'")
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    matching = [(n, m) for n, m in candidates if len(m) == layers]
    pool = matching or candidates
    return max(pool, key=lambda item: (len(item[1]), -item[0].count(".")))


# ------------------------------------------------------------------------------------------------ running the model
def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def _calibration(example_inputs: Any, data: Iterable | None, batches: int, need_targets: bool) -> list[tuple]:
    if data is None:
        if need_targets:
            raise ConfigError("the 'loss' depth criterion measures the calibration loss: pass data= batches of "
                              "(inputs, targets), e.g. the dataset's calibration loader")
        return [(example_inputs, None)]
    out = []
    for batch in data:
        if isinstance(batch, tuple | list) and len(batch) == 2:
            out.append((batch[0], batch[1]))
        elif need_targets:
            raise ConfigError("the 'loss' depth criterion needs (inputs, targets) batches in data=")
        else:
            out.append((batch, None))
        if len(out) >= batches:
            break
    if not out:
        raise ConfigError("data= yielded no batches: check the calibration loader")
    return out


def _hidden(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    hidden = getattr(value, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise ConfigError(f"a block returned {type(value).__name__}: depth pruning needs blocks that return the hidden "
                      "states (a tensor or a tuple starting with it)")


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "hidden_state", "x"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise ConfigError("cannot find a block's input hidden states (first argument or hidden_states=)")


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise ConfigError(f"cannot skip a block that returns {type(output).__name__}")


def _capture_hidden(model: nn.Module, blocks: nn.Module, batches: list[tuple]) -> list[list[torch.Tensor]]:
    """For each batch, the hidden states entering block 0, 1, ... and leaving the last block (L + 1 tensors)."""
    per_batch: list[list[torch.Tensor]] = []
    current: dict[int, torch.Tensor] = {}
    last = len(blocks) - 1
    handles = []
    for index, block in enumerate(blocks):
        def pre(module, args, kwargs, index=index):
            current[index] = _block_input(args, kwargs).detach().float()

        def post(module, args, kwargs, output, index=index):
            if index == last:
                current[last + 1] = _hidden(output).detach().float()

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                current.clear()
                _call(model, inputs)
                if len(current) != last + 2:
                    raise ConfigError("the block list was not run in order on every batch: name the blocks that "
                                      "the model's forward runs one after another with blocks='...'")
                per_batch.append([current[i] for i in range(last + 2)])
    finally:
        for handle in handles:
            handle.remove()
    return per_batch


def _mean_over_tokens(values: list[torch.Tensor]) -> float:
    total = sum(float(v.sum()) for v in values)
    count = sum(v.numel() for v in values)
    return total / max(count, 1)


def _cosines(hidden: list[list[torch.Tensor]], first: int, last: int) -> list[torch.Tensor]:
    if any(states[first].shape != states[last].shape for states in hidden):
        raise ConfigError(f"blocks {first}..{last - 1} change the hidden states' shape "
                          f"({tuple(hidden[0][first].shape)} → {tuple(hidden[0][last].shape)}), so they cannot be "
                          "dropped (e.g. Swin's down-sampling stages): name a list of shape-preserving blocks with "
                          "blocks='...'")
    # float64: arccos is steep near 1, where float32 rounding alone would put a do-nothing block at ~3e-4
    return [F.cosine_similarity(states[first].flatten(0, -2).double(), states[last].flatten(0, -2).double(),
                                dim=-1).clamp(-1, 1) for states in hidden]


@DEPTH_CRITERIA.register("angular")
def angular_scores(model: nn.Module, blocks: nn.Module, batches: list[tuple],
                   runs: list[tuple[int, ...]]) -> list[float]:
    """Gromov et al. 2024, Eq. 7: ``arccos(cos(x_first_in, x_last_out)) / π`` averaged over every token."""
    hidden = _capture_hidden(model, blocks, batches)
    return [_mean_over_tokens([torch.arccos(c) / math.pi for c in _cosines(hidden, run[0], run[-1] + 1)])
            for run in runs]


@DEPTH_CRITERIA.register("bi")
def block_influence_scores(model: nn.Module, blocks: nn.Module, batches: list[tuple],
                           runs: list[tuple[int, ...]]) -> list[float]:
    """ShortGPT's Block Influence (Men et al. 2024, Eq. 2): ``1 − cos(x_in, x_out)`` averaged over every token."""
    hidden = _capture_hidden(model, blocks, batches)
    return [_mean_over_tokens([1 - c for c in _cosines(hidden, run[0], run[-1] + 1)]) for run in runs]


def _loss(model: nn.Module, batches: list[tuple]) -> float:
    total = count = 0.0
    with torch.no_grad():
        for inputs, targets in batches:
            logits = output_logits(_call(model, inputs))
            if is_token_output(logits, targets):
                n = float((targets != -100).sum())
                total += float(token_cross_entropy(logits, targets, reduction="sum"))
            else:
                n = float(targets.shape[0])
                total += float(F.cross_entropy(logits, targets, reduction="sum"))
            count += n
    return total / max(count, 1.0)


@DEPTH_CRITERIA.register("loss")
def loss_scores(model: nn.Module, blocks: nn.Module, batches: list[tuple], runs: list[tuple[int, ...]]) -> list[float]:
    """The rise in mean calibration loss when the run of blocks is skipped (each block's output replaced by its
    input): Gromov et al. 2024 §4's and Kim et al. 2024's (Shortened LLaMA, PPL criterion) direct measure."""
    base = _loss(model, batches)
    scores = []
    for run in runs:
        handles = []
        for index in run:
            def skip(module, args, kwargs, output):
                return _replace_hidden(output, _block_input(args, kwargs))

            handles.append(blocks[index].register_forward_hook(skip, with_kwargs=True))
        try:
            scores.append(_loss(model, batches) - base)
        finally:
            for handle in handles:
                handle.remove()
    return scores


# ------------------------------------------------------------------------------------------------------ choosing
def _unique_params(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def _block_count(config: DepthPruneConfig, block_params: list[int], total: int, removable: int) -> int:
    if config.n_blocks is not None:
        if config.n_blocks > removable:
            raise ConfigError(f"n_blocks={config.n_blocks} but only {removable} of the model's blocks may be removed "
                              "(all blocks minus those in keep, at least one left): use a smaller n_blocks")
        return config.n_blocks
    target = config.param_ratio * total
    mean_block = sum(block_params) / len(block_params)
    best = min(range(1, removable + 1), key=lambda n: abs(n * mean_block - target))
    return best


def block_importance(model: nn.Module, example_inputs: Any, config: DepthPruneConfig, *,
                     data: Iterable | None = None) -> BlockImportance:
    """Score every candidate removal with ``config.criterion`` and choose the blocks :func:`prune_depth` removes.

    Without ``data`` the hidden-state criteria measure on ``example_inputs`` alone."""
    blocks_name, blocks = find_blocks(model, config.blocks)
    count = len(blocks)
    keep = set(config.keep)
    if any(i >= count for i in keep):
        raise ConfigError(f"keep={config.keep}: the model has blocks 0..{count - 1}")
    removable = count - max(len(keep), 1)
    block_params = [_unique_params(b) for b in blocks]
    total = _unique_params(model)
    n = _block_count(config, block_params, total, removable)
    if config.contiguous:
        runs = [tuple(range(s, s + n)) for s in range(count - n + 1) if not keep.intersection(range(s, s + n))]
        if not runs:
            raise ConfigError(f"no run of {n} consecutive blocks avoids keep={config.keep}: remove fewer blocks")
    else:
        runs = [(i,) for i in range(count) if i not in keep]
    batches = _calibration(example_inputs, data, config.batches, need_targets=config.criterion == "loss")
    was_training = model.training
    model.eval()
    try:
        scores = DEPTH_CRITERIA.get(config.criterion)(model, blocks, batches, runs)
    finally:
        model.train(was_training)
    order = sorted(range(len(runs)), key=lambda i: (scores[i], runs[i]))
    removed = runs[order[0]] if config.contiguous else tuple(sorted(runs[i][0] for i in order[:n]))
    return BlockImportance(blocks_name, count, runs, scores, removed, sum(block_params[i] for i in removed), total)


# ------------------------------------------------------------------------------------------------------- removing
_LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
_PER_LAYER_LISTS = ("layer_types", "no_rope_layers", "sliding_window_pattern_list", "attention_chunk_sizes")


def _rewrite_stage_depth(config: Any, blocks_name: str, old_count: int, new_count: int) -> bool:
    """A staged model (Swin: ``encoder.layers.<k>.blocks``, ``config.depths[k]``): rewrite stage k's depth."""
    match = re.search(r"\.(\d+)\.[A-Za-z_]+$", blocks_name)
    depths = getattr(config, "depths", None)
    if match is None or not isinstance(depths, list | tuple):
        return False
    stage = int(match.group(1))
    if stage >= len(depths) or depths[stage] != old_count:
        return False
    config.depths = type(depths)(new_count if i == stage else d for i, d in enumerate(depths))
    return True


def _rewrite_config(config: Any, kept: tuple[int, ...], old_count: int, blocks_name: str = "") -> None:
    new_count = len(kept)
    if _rewrite_stage_depth(config, blocks_name, old_count, new_count):
        return
    attribute_map = getattr(type(config), "attribute_map", {})
    names = {attribute_map.get(a, a) for a in _LAYER_COUNT_ATTRS if hasattr(config, a)}
    for name in names:
        if getattr(config, name, None) == old_count:
            setattr(config, name, new_count)
    for name in _PER_LAYER_LISTS:
        value = getattr(config, name, None)
        if isinstance(value, list | tuple) and len(value) == old_count:
            setattr(config, name, type(value)(value[i] for i in kept))
    window_layers = getattr(config, "max_window_layers", None)
    if isinstance(window_layers, int) and not isinstance(window_layers, bool):
        config.max_window_layers = sum(1 for i in kept if i < window_layers)


def _renumber(blocks: nn.Module) -> None:
    for new_index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index


def remove_blocks(model: nn.Module, removed: Iterable[int], *, blocks: str | None = None) -> nn.Module:
    """A copy of ``model`` without the blocks at the ``removed`` indices (the others keep their weights), with a
    Hugging Face config and layer indices rewritten to match, as ``from_pretrained`` would number them (attention
    that scales by its layer index, GPT-2's ``scale_attn_by_inverse_layer_idx``, follows the new numbering). The
    caller's model is not modified."""
    pruned = copy.deepcopy(model)
    blocks_name, block_list = find_blocks(pruned, blocks)
    old_count = len(block_list)
    drop = set(removed)
    if not drop or any(i < 0 or i >= old_count for i in drop) or len(drop) >= old_count:
        raise ConfigError(f"cannot remove blocks {sorted(drop)} of {old_count}: give indices in 0..{old_count - 1}, "
                          "leaving at least one")
    kept = tuple(i for i in range(old_count) if i not in drop)
    new_list = type(block_list)([block_list[i] for i in kept])
    parent_name, _, attr = blocks_name.rpartition(".")
    parent = pruned.get_submodule(parent_name) if parent_name else pruned
    setattr(parent, attr, new_list)
    for name in _LAYER_COUNT_ATTRS:  # e.g. DistilBERT's Transformer.n_layers
        if getattr(parent, name, None) == old_count:
            setattr(parent, name, len(kept))
    _renumber(new_list)
    config = getattr(pruned, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        _rewrite_config(config, kept, old_count, blocks_name)
    return pruned


def prune_depth(model: nn.Module, example_inputs: Any, config: DepthPruneConfig, *,
                data: Iterable | None = None) -> nn.Module:
    """Remove whole blocks of a transformer by block importance (Gromov et al. 2024; Men et al. 2024, ShortGPT).

    ``example_inputs`` is a tensor, tuple or dict of keyword inputs (``input_ids``, ``pixel_values``); ``data``
    yields calibration batches of ``(inputs, targets)`` (needed by ``criterion="loss"``; the hidden-state criteria
    use ``example_inputs`` when it is None). Returns a copy of the model, same class, with the chosen blocks gone
    and the remaining blocks' weights untouched; a Hugging Face model's config is rewritten so it saves and reloads
    with ``save_pretrained`` / ``from_pretrained`` and keeps ``generate``. The caller's model is not modified.
    """
    importance = block_importance(model, example_inputs, config, data=data)
    log.info("depth pruning %s: removing blocks %s of %d (%s scores %s), %.1f%% of parameters",
             importance.blocks_name, list(importance.removed), importance.num_blocks, config.criterion,
             [round(s, 4) for s in importance.scores], 100 * importance.param_reduction)
    pruned = remove_blocks(model, importance.removed, blocks=config.blocks or importance.blocks_name)
    try:  # blocks that change the shape (e.g. Swin's down-sampling stages) cannot simply be dropped
        with torch.no_grad():
            _call(pruned.eval(), example_inputs)
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        raise ConfigError(f"{type(model).__name__} does not run without blocks {list(importance.removed)} of "
                          f"'{importance.blocks_name}' ({str(error).splitlines()[0]}): its blocks change the hidden "
                          "states' shape; name a list of shape-preserving blocks with blocks='...'") from None
    return pruned.train(model.training)
