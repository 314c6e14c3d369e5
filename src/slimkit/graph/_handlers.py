"""One small handler per layer type (Torch-Pruning style): how channel ids pass through the layer, and how to
build the physically smaller layer once some channels are removed. Register a new type with
``@register_handler(MyLayer)``; a subclass uses its nearest registered base class's handler."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

_HANDLERS: dict[type, LayerHandler] = {}


def register_handler(*types: type):
    """Class decorator: ``@register_handler(nn.Conv2d)`` on a :class:`LayerHandler` subclass."""

    def decorator(cls):
        for t in types:
            _HANDLERS[t] = cls()
        return cls

    return decorator


def handler_for(module: nn.Module) -> LayerHandler | None:
    for klass in type(module).__mro__:
        if klass in _HANDLERS:
            return _HANDLERS[klass]
    return None


def _take(t: torch.Tensor | None, dim: int, keep: np.ndarray) -> torch.Tensor | None:
    if t is None:
        return None
    return t.index_select(dim, torch.as_tensor(np.flatnonzero(keep), dtype=torch.long)).clone()


def _param(t: torch.Tensor | None, like: Any) -> Any:
    if t is None:
        return None
    return nn.Parameter(t, requires_grad=like.requires_grad) if isinstance(like, nn.Parameter) else t


class LayerHandler:
    """``trace`` returns the output ids and records the layer's in/out channel maps; ``prune`` returns the new
    layer given boolean keep-masks over its input and output channels; ``out_weights`` gives the per-output-channel
    parameters (rows aligned with the output map) that importance criteria score."""

    leaf = False

    def trace(self, b, node, module: nn.Module, out: Any) -> Any:
        raise NotImplementedError

    def prune(self, module: nn.Module, keep_in: np.ndarray | None, keep_out: np.ndarray | None) -> nn.Module:
        return module

    def out_weights(self, module: nn.Module) -> list[torch.Tensor]:
        return []


def _shape_for(out: torch.Tensor, channels: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * out.dim()
    shape[dim] = channels.numel()
    return channels.reshape(shape)


@register_handler(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvHandler(LayerHandler):
    """groups=1: new output ids. Depthwise (groups = in_channels): outputs inherit their input channel's id.
    Other group convs: input slot i of every group is one unit and output slot j of every group is one unit,
    so every group keeps the same width (the group count never changes)."""

    def trace(self, b, node, module, out):
        cin, cout, g = module.in_channels, module.out_channels, module.groups
        in_map = b.channel_map(node.args[0], 1)
        if g == 1:
            out_map = b.uf.fresh(cout)
            kind = "dense"
        elif g == cin and cout % cin == 0:
            out_map = in_map.repeat_interleave(cout // cin)
            kind = "depthwise"
        else:
            slots = in_map.reshape(g, cin // g)
            b.uf.union(slots[:1], slots)
            out_map = b.uf.fresh(cout // g).repeat(g)
            kind = "slots"
        b.record(node.target, module, in_map, out_map, kind=kind)
        return b.compress(_shape_for(out, out_map, 1))

    def prune(self, module, keep_in, keep_out):
        new = copy.deepcopy(module)
        g, cin = module.groups, module.in_channels
        w = module.weight
        out_dim, in_dim = (1, 0) if module.transposed else (0, 1)
        new_g = g
        if g == 1:
            w = _take(_take(w, out_dim, keep_out), in_dim, keep_in)
        elif g == cin and module.out_channels % cin == 0:
            w = _take(w, 0, keep_out if not module.transposed else keep_in)
            new_g = int(keep_in.sum())
        elif not module.transposed:
            w = _take(_take(w, 0, keep_out), 1, keep_in.reshape(g, -1)[0])
        else:
            w = _take(_take(w, 0, keep_in), 1, keep_out.reshape(g, -1)[0])
        new.weight = _param(w, module.weight)
        if module.bias is not None:
            new.bias = _param(_take(module.bias, 0, keep_out), module.bias)
        new.in_channels, new.out_channels, new.groups = int(keep_in.sum()), int(keep_out.sum()), new_g
        return new

    def out_weights(self, module):
        rows = []
        if not module.transposed:
            rows.append(module.weight.reshape(module.out_channels, -1))
        elif module.groups == 1:
            rows.append(module.weight.transpose(0, 1).reshape(module.out_channels, -1))
        if module.bias is not None:
            rows.append(module.bias.reshape(-1, 1))
        return rows


@register_handler(nn.Linear)
class LinearHandler(LayerHandler):
    """Inputs along the last dim (after ``flatten`` each conv channel owns H×W of them); new output ids."""

    def trace(self, b, node, module, out):
        in_map = b.channel_map(node.args[0], -1)
        out_map = b.uf.fresh(module.out_features)
        b.record(node.target, module, in_map, out_map, kind="dense")
        return b.compress(_shape_for(out, out_map, out.dim() - 1))

    def prune(self, module, keep_in, keep_out):
        new = copy.deepcopy(module)
        new.weight = _param(_take(_take(module.weight, 0, keep_out), 1, keep_in), module.weight)
        if module.bias is not None:
            new.bias = _param(_take(module.bias, 0, keep_out), module.bias)
        new.in_features, new.out_features = int(keep_in.sum()), int(keep_out.sum())
        return new

    def out_weights(self, module):
        rows = [module.weight]
        if module.bias is not None:
            rows.append(module.bias.reshape(-1, 1))
        return rows


class _ChannelwiseHandler(LayerHandler):
    """Per-channel layers (BN, LN, GN): output channel c is input channel c."""

    dim = 1

    def trace(self, b, node, module, out):
        in_map = b.channel_map(node.args[0], self.dim)
        self.couple(b, module, in_map)
        b.record(node.target, module, in_map, in_map, kind="channelwise")
        return b.compress(_shape_for(out, b.uf.roots(in_map), self.dim % out.dim()))

    def couple(self, b, module, in_map) -> None:
        pass

    def prune(self, module, keep_in, keep_out):
        new = copy.deepcopy(module)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(module, attr, None)
            if isinstance(t, torch.Tensor):
                taken = _take(t, 0, keep_out)
                if isinstance(t, nn.Parameter):
                    setattr(new, attr, _param(taken, t))
                else:
                    setattr(new, attr, taken)
        return self.resize(new, int(keep_out.sum()))

    def resize(self, new, channels):
        return new

    def out_weights(self, module):
        return [t.reshape(-1, 1) for t in (getattr(module, "weight", None), getattr(module, "bias", None))
                if isinstance(t, torch.Tensor)]


@register_handler(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)
class BatchNormHandler(_ChannelwiseHandler):
    def resize(self, new, channels):
        new.num_features = channels
        return new


@register_handler(nn.LayerNorm)
class LayerNormHandler(_ChannelwiseHandler):
    """LayerNorm over the last dim (pruning changes its statistics slightly, as in every structured pruner)."""

    dim = -1

    def trace(self, b, node, module, out):
        if len(module.normalized_shape) != 1:
            return b.opaque(node, out)
        return super().trace(b, node, module, out)

    def resize(self, new, channels):
        new.normalized_shape = (channels,)
        return new


@register_handler(nn.GroupNorm)
class GroupNormHandler(_ChannelwiseHandler):
    """Channel slot i of every group is one unit, so every group keeps the same width."""

    def couple(self, b, module, in_map):
        slots = in_map.reshape(module.num_groups, -1)
        b.uf.union(slots[:1], slots)

    def resize(self, new, channels):
        new.num_channels = channels
        return new


_PASSTHROUGH = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.PReLU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.MaxPool1d,
    nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.Upsample, nn.ZeroPad2d, nn.Hardtanh,
)


@register_handler(*_PASSTHROUGH)
class PassthroughHandler(LayerHandler):
    """Activations, dropout, pooling: channels pass through unchanged (PReLU with one slope per channel aside,
    handled by blocking)."""

    def trace(self, b, node, module, out):
        src = node.args[0]
        if isinstance(module, nn.PReLU) and module.num_parameters > 1:
            return b.opaque(node, out)
        if tuple(out.shape) == b.shape_of(src):
            return b.ids_of(src)
        cmap = b.channel_map(src, 1)
        return b.compress(_shape_for(out, cmap, 1))


@register_handler(nn.Softmax, nn.LogSoftmax)
class SoftmaxHandler(LayerHandler):
    def trace(self, b, node, module, out):
        ids = b.expand(node.args[0])
        dim = module.dim if module.dim is not None else -1
        return b.compress(b.merge_along(ids, [dim]))


@register_handler(nn.Flatten, nn.Unflatten)
class FlattenHandler(LayerHandler):
    def trace(self, b, node, module, out):
        ids = b.expand(node.args[0])
        if isinstance(module, nn.Flatten):
            result = ids.flatten(module.start_dim, module.end_dim)
        else:
            result = ids.unflatten(module.dim, module.unflattened_size)
        b.constrain_reshape(ids, result)
        return b.compress(result)


@register_handler(nn.ChannelShuffle)
class ShuffleHandler(LayerHandler):
    """``nn.ChannelShuffle`` (a leaf for torch.fx): the (groups, C/groups) transpose replayed on the ids."""

    def trace(self, b, node, module, out):
        ids = b.expand(node.args[0])
        split = ids.unflatten(1, (module.groups, -1))
        b.constrain_reshape(ids, split)
        return b.compress(b.uf.roots(split).transpose(1, 2).flatten(1, 2))


@register_handler(nn.MultiheadAttention)
class MultiheadAttentionHandler(LayerHandler):
    """``nn.MultiheadAttention`` stays a leaf. Its embed width is tied to its input and output (PyTorch requires
    embed_dim = query width = num_heads × head_dim), so the unit is head-dim slot d of every head: pruning keeps
    the head count and shrinks head_dim. (Hand-written attention prunes whole heads instead.)"""

    leaf = True

    def trace(self, b, node, module, out):
        if not module._qkv_same_embed_dim:
            return b.opaque(node, out)
        query = node.args[0]
        in_map = b.channel_map(query, -1)
        for other in node.args[1:3]:
            if hasattr(other, "op") and isinstance(b.ids.get(other), torch.Tensor):
                b.uf.union(in_map, b.channel_map(other, -1))
        slots = in_map.reshape(module.num_heads, -1)
        b.uf.union(slots[:1], slots)
        b.record(node.target, module, in_map, in_map, kind="mha")
        attn_out, weights = out
        return (b.compress(_shape_for(attn_out, b.uf.roots(in_map), attn_out.dim() - 1)),
                b.blocked_like(weights))

    def prune(self, module, keep_in, keep_out):
        keep = keep_in
        e = int(keep.sum())
        new = nn.MultiheadAttention(e, module.num_heads, dropout=module.dropout, bias=module.in_proj_bias is not None,
                                    batch_first=module.batch_first)
        rows = np.concatenate([keep, keep, keep])
        with torch.no_grad():
            new.in_proj_weight.copy_(_take(_take(module.in_proj_weight, 0, rows), 1, keep))
            if module.in_proj_bias is not None:
                new.in_proj_bias.copy_(_take(module.in_proj_bias, 0, rows))
            new.out_proj.weight.copy_(_take(_take(module.out_proj.weight, 0, keep), 1, keep))
            if module.out_proj.bias is not None:
                new.out_proj.bias.copy_(_take(module.out_proj.bias, 0, keep))
        return new.train(module.training)

    def out_weights(self, module):
        return [module.out_proj.weight]
