"""Depth pruning: remove whole blocks (transformer layers, a CNN's residual blocks) by their measured importance,
keeping the model's class.

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

A model without a Hugging Face config (a CNN such as ResNet-20, whose residual blocks sit in one ``Sequential`` per
stage) is searched across all its block lists at once. Only blocks whose output has their input's shape and which
run once per forward are candidates: a stage's first, down-sampling block stays, and dropping a residual block
leaves its identity shortcut (Veit et al. 2016 showed residual networks behave like ensembles of shallower paths
and tolerate losing single blocks; dropping whole blocks for speed, e.g. Chen & Zhao 2018, "Shallowing Deep
Networks"). Every candidate removal takes all of a block's time, so the speed-up follows the MACs removed more
closely than channel pruning's does.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    blocks: the module name (or glob / ``re:``) of the block list(s); default: found automatically — for a Hugging
        Face model its ``ModuleList`` of same-class blocks that matches ``config.num_hidden_layers``, for any
        other model every ``ModuleList``/``Sequential`` of same-class blocks (a CNN's stages).
    keep: candidate indices never removed (e.g. ``(0,)``: the first block, which every criterion finds important);
        candidates are the blocks of the list(s) that keep their input's shape, in order
        (``BlockImportance.names``).
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
    """Scores of the candidate removals (one per block, or per run of ``n`` blocks when contiguous) and the choice.

    Indices (in ``runs``, ``removed``, ``kept``) count the candidate blocks, named in order by ``names``; for a
    transformer's block list they are its layer indices."""

    blocks_name: str
    num_blocks: int
    runs: list[tuple[int, ...]]
    scores: list[float]
    removed: tuple[int, ...]
    removed_params: int
    total_params: int
    names: tuple[str, ...] = ()

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_blocks) if i not in self.removed)

    @property
    def removed_names(self) -> tuple[str, ...]:
        """The removed blocks' module names (e.g. ``layer3.2``), what :func:`remove_blocks` takes."""
        return tuple(self.names[i] for i in self.removed)

    @property
    def param_reduction(self) -> float:
        return self.removed_params / self.total_params


# ----------------------------------------------------------------------------------------------- finding the blocks
def _block_lists(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList | nn.Sequential) and len(module) >= 2:
            children = list(module)
            if (all(type(c) is type(children[0]) for c in children)
                    and not isinstance(children[0], nn.ModuleList | nn.Sequential)  # a list of lists holds no blocks
                    and any(True for _ in children[0].parameters())):
                found.append((name, module))
    return found


def _outermost(lists: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The lists not inside another list's blocks (a block's own list of sub-blocks is part of that block)."""
    def inside(name: str, outer: str) -> bool:
        return name != outer and (not outer or name.startswith(f"{outer}."))

    return [(n, m) for n, m in lists if not any(inside(n, o) for o, _ in lists)]


def _no_block_lists(model: nn.Module) -> ConfigError:
    return ConfigError(f"{type(model).__name__} has no ModuleList/Sequential of ≥ 2 same-class blocks to remove "
                       "blocks from: name the block list with blocks='...'")


def find_blocks(model: nn.Module, pattern: str | None = None) -> tuple[str, nn.Module]:
    """The block list depth pruning works on: the one named by ``pattern``, else the list of same-class blocks whose
    length is the HF config's ``num_hidden_layers`` (else the longest such list)."""
    candidates = _block_lists(model)
    if pattern is None and not candidates:
        raise _no_block_lists(model)
    if pattern is not None:
        chosen = [(n, m) for n, m in candidates if matches(n, pattern)]
        if len(chosen) != 1:
            names = ", ".join(n for n, _ in candidates) or "(none)"
            what = "no" if not chosen else "several"
            raise ConfigError(f"blocks='{pattern}' matches {what} block list: choose one of {names}")
        return chosen[0]
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    matching = [(n, m) for n, m in candidates if len(m) == layers]
    pool = matching or candidates
    return max(pool, key=lambda item: (len(item[1]), -item[0].count(".")))


def _has_hf_config(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "to_dict")


def find_block_lists(model: nn.Module, pattern: str | None = None) -> list[tuple[str, nn.Module]]:
    """Every block list depth pruning searches: those ``pattern`` names (one or several, e.g. ``"layer*"``); else a
    Hugging Face model's one list (:func:`find_blocks`), else every outermost list of same-class blocks — a CNN's
    stages — in the model's order."""
    if _has_hf_config(model):
        return [find_blocks(model, pattern)]
    candidates = _block_lists(model)
    if pattern is not None:
        chosen = [(n, m) for n, m in candidates if matches(n, pattern)]
        if not chosen:
            names = ", ".join(n for n, _ in candidates) or "(none)"
            raise ConfigError(f"blocks='{pattern}' matches no block list: choose among {names}")
        return _outermost(chosen)
    if not candidates:
        raise _no_block_lists(model)
    return _outermost(candidates)


def _removable(model: nn.Module, blocks: list[tuple[str, nn.Module]], inputs: Any) -> list[bool]:
    """Which blocks may be dropped: run exactly once on ``inputs``, with an output of their input's shape."""
    calls = [0] * len(blocks)
    same_shape = [False] * len(blocks)
    handles = []
    for index, (_, block) in enumerate(blocks):
        def record(module, args, kwargs, output, index=index):
            calls[index] += 1
            try:
                same_shape[index] = _block_input(args, kwargs).shape == _hidden(output).shape
            except ConfigError:  # no tensor in or out: not a block that can be skipped
                same_shape[index] = False

        handles.append(block.register_forward_hook(record, with_kwargs=True))
    try:
        with torch.no_grad():
            _call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [n == 1 and same for n, same in zip(calls, same_shape)]


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


def _capture_hidden(model: nn.Module, blocks: Sequence[nn.Module], batches: list[tuple],
                    runs: list[tuple[int, ...]]) -> list[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]]:
    """For each batch, the hidden states entering each run's first block and leaving each run's last block."""
    starts, ends = {run[0] for run in runs}, {run[-1] for run in runs}
    per_batch: list[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]] = []
    entering: dict[int, torch.Tensor] = {}
    leaving: dict[int, torch.Tensor] = {}
    handles = []
    for index in sorted(starts | ends):
        def pre(module, args, kwargs, index=index):
            entering[index] = _block_input(args, kwargs).detach().float()

        def post(module, args, kwargs, output, index=index):
            leaving[index] = _hidden(output).detach().float()

        if index in starts:
            handles.append(blocks[index].register_forward_pre_hook(pre, with_kwargs=True))
        if index in ends:
            handles.append(blocks[index].register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                entering, leaving = {}, {}
                _call(model, inputs)
                if set(entering) != starts or set(leaving) != ends:
                    raise ConfigError("the blocks were not all run on every batch: name the blocks that the model's "
                                      "forward runs with blocks='...'")
                per_batch.append((entering, leaving))
    finally:
        for handle in handles:
            handle.remove()
    return per_batch


def _mean_over_tokens(values: list[torch.Tensor]) -> float:
    total = sum(float(v.sum()) for v in values)
    count = sum(v.numel() for v in values)
    return total / max(count, 1)


def _as_tokens(states: torch.Tensor) -> torch.Tensor:
    """Rows of feature vectors: a transformer's ``(…, hidden)`` by its last dimension, a CNN's ``(N, C, H, W)`` by
    its channels (one row per position)."""
    if states.dim() == 4:
        states = states.movedim(1, -1)
    return states.flatten(0, -2)


def _cosines(hidden: list[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]],
             run: tuple[int, ...]) -> list[torch.Tensor]:
    first, last = run[0], run[-1]
    if any(entering[first].shape != leaving[last].shape for entering, leaving in hidden):
        entering, leaving = hidden[0]
        raise ConfigError(f"blocks {first}..{last} change the hidden states' shape "
                          f"({tuple(entering[first].shape)} → {tuple(leaving[last].shape)}), so they cannot be "
                          "dropped (e.g. Swin's down-sampling stages): name a list of shape-preserving blocks with "
                          "blocks='...'")
    # float64: arccos is steep near 1, where float32 rounding alone would put a do-nothing block at ~3e-4
    return [F.cosine_similarity(_as_tokens(entering[first]).double(), _as_tokens(leaving[last]).double(),
                                dim=-1).clamp(-1, 1) for entering, leaving in hidden]


@DEPTH_CRITERIA.register("angular")
def angular_scores(model: nn.Module, blocks: Sequence[nn.Module], batches: list[tuple],
                   runs: list[tuple[int, ...]]) -> list[float]:
    """Gromov et al. 2024, Eq. 7: ``arccos(cos(x_first_in, x_last_out)) / π`` averaged over every token (over
    every position of a CNN's feature map, the cosine taken across channels)."""
    hidden = _capture_hidden(model, blocks, batches, runs)
    return [_mean_over_tokens([torch.arccos(c) / math.pi for c in _cosines(hidden, run)]) for run in runs]


@DEPTH_CRITERIA.register("bi")
def block_influence_scores(model: nn.Module, blocks: Sequence[nn.Module], batches: list[tuple],
                           runs: list[tuple[int, ...]]) -> list[float]:
    """ShortGPT's Block Influence (Men et al. 2024, Eq. 2): ``1 − cos(x_in, x_out)`` averaged over every token."""
    hidden = _capture_hidden(model, blocks, batches, runs)
    return [_mean_over_tokens([1 - c for c in _cosines(hidden, run)]) for run in runs]


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
def loss_scores(model: nn.Module, blocks: Sequence[nn.Module], batches: list[tuple],
                runs: list[tuple[int, ...]]) -> list[float]:
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


def _block_count(config: DepthPruneConfig, block_params: list[int], total: int, removable: int,
                 fixed: int = 0) -> int:
    if config.n_blocks is not None:
        if config.n_blocks > removable:
            why = (f"; {fixed} more change the hidden states' shape or run more than once, so they stay"
                   if fixed else "")
            raise ConfigError(f"n_blocks={config.n_blocks} but only {removable} of the model's blocks may be removed "
                              f"(all blocks minus those in keep, at least one left{why}): use a smaller n_blocks")
        return config.n_blocks
    if removable < 1:
        raise ConfigError("no block may be removed (all blocks minus those in keep, at least one left): "
                          "name other blocks with blocks='...' or keep fewer")
    target = config.param_ratio * total
    mean_block = sum(block_params) / len(block_params)
    best = min(range(1, removable + 1), key=lambda n: abs(n * mean_block - target))
    return best


def _candidates(model: nn.Module, config: DepthPruneConfig, inputs: Any) -> tuple[str, list[tuple[str, nn.Module]],
                                                                                 int]:
    """(the lists' names, the removable blocks by module name in order, how many blocks are not removable)."""
    lists = find_block_lists(model, config.blocks)
    blocks = [(f"{name}.{i}" if name else str(i), block) for name, module in lists for i, block in enumerate(module)]
    removable = _removable(model, blocks, inputs)
    names = ", ".join(name for name, _ in lists)
    if not any(removable):
        raise ConfigError(f"every block of '{names}' changes the hidden states' shape (or does not run once per "
                          "forward), so none can be dropped (e.g. Swin's down-sampling stages): name a list of "
                          "shape-preserving blocks with blocks='...'")
    first_name, first_list = lists[0]
    if not all(removable) and _has_hf_config(model) and _stage_index(model.config, first_name,
                                                                     len(first_list)) is None:
        raise ConfigError(f"some blocks of '{names}' change the hidden states' shape, and the model's config "
                          "counts them all (e.g. Swin's down-sampling stages): name a list of shape-preserving "
                          "blocks with blocks='...'")
    return names, [b for b, ok in zip(blocks, removable) if ok], removable.count(False)


def _plan(model: nn.Module, config: DepthPruneConfig, example_inputs: Any) -> tuple[str, list[tuple[str, nn.Module]],
                                                                               list[tuple[int, ...]], int, list[int]]:
    """(the lists' names, the candidate blocks, the candidate runs, how many to remove, each candidate's params)."""
    blocks_name, candidates, fixed = _candidates(model, config, example_inputs)
    count = len(candidates)
    keep = set(config.keep)
    if any(i >= count for i in keep):
        raise ConfigError(f"keep={config.keep}: the model has candidate blocks 0..{count - 1} "
                          f"({', '.join(n for n, _ in candidates)})")
    removable = count - len(keep) if fixed else count - max(len(keep), 1)
    block_params = [_unique_params(b) for _, b in candidates]
    n = _block_count(config, block_params, _unique_params(model), removable, fixed)
    if config.contiguous:
        def consecutive(run: range) -> bool:  # one list, adjacent indices
            names = [candidates[i][0].rpartition(".") for i in run]
            return (len({parent for parent, _, _ in names}) == 1
                    and all(int(b[2]) == int(a[2]) + 1 for a, b in itertools.pairwise(names)))

        runs = [tuple(range(s, s + n)) for s in range(count - n + 1)
                if not keep.intersection(range(s, s + n)) and consecutive(range(s, s + n))]
        if not runs:
            raise ConfigError(f"no run of {n} consecutive blocks avoids keep={config.keep}: remove fewer blocks")
    else:
        runs = [(i,) for i in range(count) if i not in keep]
    return blocks_name, candidates, runs, n, block_params


def depth_candidates(model: nn.Module, example_inputs: Any, config: DepthPruneConfig) -> tuple[str, ...]:
    """The blocks ``config`` chooses among (module names), checked as :func:`prune_depth` would check them — too
    many blocks asked for, ``keep`` out of range, no shape-preserving block — without measuring any importance:
    a recipe's check before it runs."""
    was_training = model.training
    model.eval()
    try:
        return tuple(name for name, _ in _plan(model, config, example_inputs)[1])
    finally:
        model.train(was_training)


def block_importance(model: nn.Module, example_inputs: Any, config: DepthPruneConfig, *,
                     data: Iterable | None = None) -> BlockImportance:
    """Score every candidate removal with ``config.criterion`` and choose the blocks :func:`prune_depth` removes.

    Without ``data`` the hidden-state criteria measure on ``example_inputs`` alone."""
    was_training = model.training
    model.eval()
    try:
        blocks_name, candidates, runs, n, block_params = _plan(model, config, example_inputs)
        total = _unique_params(model)
        count = len(candidates)
        batches = _calibration(example_inputs, data, config.batches, need_targets=config.criterion == "loss")
        scores = DEPTH_CRITERIA.get(config.criterion)(model, [b for _, b in candidates], batches, runs)
    finally:
        model.train(was_training)
    order = sorted(range(len(runs)), key=lambda i: (scores[i], runs[i]))
    removed = runs[order[0]] if config.contiguous else tuple(sorted(runs[i][0] for i in order[:n]))
    return BlockImportance(blocks_name, count, runs, scores, removed, sum(block_params[i] for i in removed), total,
                           tuple(name for name, _ in candidates))


# ------------------------------------------------------------------------------------------------------- removing
_LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
_PER_LAYER_LISTS = ("layer_types", "no_rope_layers", "sliding_window_pattern_list", "attention_chunk_sizes")


def _stage_index(config: Any, blocks_name: str, count: int) -> int | None:
    """Which stage of a staged model (Swin: ``encoder.layers.<k>.blocks``, ``config.depths[k]``) the block list is."""
    match = re.search(r"\.(\d+)\.[A-Za-z_]+$", blocks_name)
    depths = getattr(config, "depths", None)
    if match is None or not isinstance(depths, list | tuple):
        return None
    stage = int(match.group(1))
    return stage if stage < len(depths) and depths[stage] == count else None


def _rewrite_stage_depth(config: Any, blocks_name: str, old_count: int, new_count: int) -> bool:
    """A staged model's block list: rewrite its stage's entry of ``config.depths``."""
    stage = _stage_index(config, blocks_name, old_count)
    if stage is None:
        return False
    depths = config.depths
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


def _drop_from_list(pruned: nn.Module, blocks_name: str, drop: set[int]) -> None:
    block_list = pruned.get_submodule(blocks_name)
    old_count = len(block_list)
    kept = tuple(i for i in range(old_count) if i not in drop)
    # renumbered in place (the list's own class, ModuleList or Sequential, and any subclass, stays)
    children = list(block_list)
    block_list._modules = OrderedDict((str(position), children[i]) for position, i in enumerate(kept))
    parent_name = blocks_name.rpartition(".")[0]
    parent = pruned.get_submodule(parent_name) if parent_name else pruned
    for name in _LAYER_COUNT_ATTRS:  # e.g. DistilBERT's Transformer.n_layers
        if getattr(parent, name, None) == old_count:
            setattr(parent, name, len(kept))
    _renumber(block_list)
    config = getattr(pruned, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        _rewrite_config(config, kept, old_count, blocks_name)


def remove_blocks(model: nn.Module, removed: Iterable[int] | Iterable[str], *, blocks: str | None = None) -> nn.Module:
    """A copy of ``model`` without the ``removed`` blocks (the others keep their weights), with a Hugging Face config
    and layer indices rewritten to match, as ``from_pretrained`` would number them (attention that scales by its
    layer index, GPT-2's ``scale_attn_by_inverse_layer_idx``, follows the new numbering). The caller's model is not
    modified.

    ``removed``: indices into the block list :func:`find_blocks` finds (or ``blocks`` names), or the blocks' module
    names in any of the model's block lists (``BlockImportance.removed_names``, e.g. ``["layer2.1", "layer3.2"]``).
    """
    pruned = copy.deepcopy(model)
    removed = list(removed)
    if removed and all(isinstance(r, str) for r in removed):
        by_list: dict[str, set[int]] = {}
        lists = dict(_block_lists(pruned))
        for name in removed:
            parent, _, index = name.rpartition(".")
            if parent not in lists or not index.isdigit() or int(index) >= len(lists[parent]):
                raise ConfigError(f"cannot remove block '{name}': give blocks of the model's block lists "
                                  f"({', '.join(lists) or 'none'}), e.g. '{next(iter(lists), 'layers')}.0'")
            by_list.setdefault(parent, set()).add(int(index))
        if sum(len(lists[n]) - len(d) for n, d in by_list.items()) < 1:
            raise ConfigError(f"cannot remove every block of {', '.join(by_list)}: leave at least one")
        for blocks_name, drop in by_list.items():
            _drop_from_list(pruned, blocks_name, drop)
        return pruned
    blocks_name, block_list = find_blocks(pruned, blocks)
    old_count = len(block_list)
    drop = set(removed)
    if (not drop or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 or i >= old_count for i in drop)
            or len(drop) >= old_count):
        raise ConfigError(f"cannot remove blocks {sorted(drop, key=str)} of {old_count}: give indices in "
                          f"0..{old_count - 1}, leaving at least one")
    _drop_from_list(pruned, blocks_name, drop)
    return pruned


def prune_depth(model: nn.Module, example_inputs: Any, config: DepthPruneConfig, *,
                data: Iterable | None = None, importance: BlockImportance | None = None) -> nn.Module:
    """Remove whole blocks of a transformer or a CNN's residual blocks by block importance (Gromov et al. 2024;
    Men et al. 2024, ShortGPT).

    ``example_inputs`` is a tensor, tuple or dict of keyword inputs (``input_ids``, ``pixel_values``); ``data``
    yields calibration batches of ``(inputs, targets)`` (needed by ``criterion="loss"``; the hidden-state criteria
    use ``example_inputs`` when it is None). Returns a copy of the model, same class, with the chosen blocks gone
    and the remaining blocks' weights untouched; a Hugging Face model's config is rewritten so it saves and reloads
    with ``save_pretrained`` / ``from_pretrained`` and keeps ``generate``. The caller's model is not modified.
    ``importance``: the scores :func:`block_importance` already measured for this model and config (not measured
    again).
    """
    if importance is None:
        importance = block_importance(model, example_inputs, config, data=data)
    log.info("depth pruning %s: removing blocks %s of %d candidates (%s scores %s), %.1f%% of parameters",
             importance.blocks_name, list(importance.removed_names), importance.num_blocks, config.criterion,
             [round(s, 4) for s in importance.scores], 100 * importance.param_reduction)
    pruned = remove_blocks(model, importance.removed_names)
    try:  # blocks that change the shape (e.g. Swin's down-sampling stages) cannot simply be dropped
        with torch.no_grad():
            _call(pruned.eval(), example_inputs)
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        raise ConfigError(f"{type(model).__name__} does not run without blocks "
                          f"{', '.join(importance.removed_names)} ({str(error).splitlines()[0]}): its blocks "
                          "change the hidden states' shape; name a list of shape-preserving blocks with "
                          "blocks='...'") from None
    return pruned.train(model.training)
