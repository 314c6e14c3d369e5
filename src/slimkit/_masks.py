"""How an unstructured-pruning mask is named on its layer: a ``<param>_mask`` buffer beside the parameter it zeroes.

Three packages read the name and none may import another for it: ``prune`` writes the masks, ``graph`` slices a
mask with its parameter when channels are removed, ``quantize`` (GPTQ) keeps the masked weights at zero."""

from __future__ import annotations

#: the suffix of a mask buffer's name: ``weight_mask`` masks ``weight``
MASK_SUFFIX = "_mask"
#: the buffer unstructured pruning registers on each layer it prunes
WEIGHT_MASK = "weight" + MASK_SUFFIX
