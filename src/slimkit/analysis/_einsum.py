"""``torch.einsum`` equations: operand and result subscripts, and the multiply-accumulates of one call (used by
:func:`~slimkit.analysis.profile` and by the pruning graph's MAC count)."""

from __future__ import annotations

import math


def einsum_letters(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str]:
    """Operand subscripts and the output's, with ``...`` expanded to fresh capital letters."""
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    spare = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    ellipsis = ""
    out_terms = []
    for term, shape in zip(terms, shapes, strict=True):
        if "..." in term:
            count = len(shape) - (len(term) - 3)
            if len(ellipsis) < count:
                ellipsis += "".join(next(spare) for _ in range(count - len(ellipsis)))
            term = term.replace("...", ellipsis[len(ellipsis) - count:])
        out_terms.append(term)
    if not rhs and "->" not in equation:
        letters = "".join(out_terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    rhs = rhs.replace("...", ellipsis)
    return out_terms, rhs


def einsum_macs(equation: str, shapes: list[tuple[int, ...]]) -> int:
    """Result elements × the product of the contracted sizes (letters of the operands missing from the result);
    0 for fewer than two operands (a permute or a reduction)."""
    if len(shapes) < 2:
        return 0
    terms, out = einsum_letters(equation, shapes)
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        for c, s in zip(term, shape, strict=True):
            sizes[c] = max(sizes.get(c, 1), s)  # a letter of size 1 in one operand broadcasts
    return math.prod(sizes[c] for c in out) * math.prod(sizes[c] for c in set("".join(terms)) if c not in out)
