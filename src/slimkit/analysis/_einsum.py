"""``torch.einsum`` equations: operand and result subscripts, and the multiply-accumulates of one call (used by
:func:`~slimkit.analysis.profile` and by the pruning graph's MAC count)."""

from __future__ import annotations

import math

#: letters for the dims an ellipsis stands for: never in an equation (torch accepts only a-z and A-Z)
_SPARE = "".join(chr(c) for c in range(0x3B1, 0x3C9 + 1)) + "".join(chr(c) for c in range(0x391, 0x3A9 + 1))


def einsum_operands(args: tuple | list) -> list:
    """The operands of ``torch.einsum(equation, *operands)`` or ``torch.einsum(equation, [operands])``."""
    return list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])


def einsum_letters(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str]:
    """Operand subscripts and the output's, with ``...`` expanded to letters that cannot clash with the equation's,
    aligned from the right (as broadcasting aligns dims) when operands have different numbers of them."""
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    counts = [len(shape) - (len(term) - 3) if "..." in term else 0
              for term, shape in zip(terms, shapes, strict=True)]
    ellipsis = _SPARE[:max(counts, default=0)]
    out_terms = [term.replace("...", ellipsis[len(ellipsis) - count:]) if "..." in term else term
                 for term, count in zip(terms, counts, strict=True)]
    if not rhs and "->" not in equation:
        letters = "".join(out_terms)
        rhs = ellipsis + "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ellipsis))
    rhs = rhs.replace("...", ellipsis)
    return out_terms, rhs


def einsum_macs(equation: str, shapes: list[tuple[int, ...]]) -> int:
    """Multiply-accumulates of ``torch.einsum(equation, *operands)``: operands contracted left to right, as torch
    does without opt_einsum, each pairwise product costing the product of every size it involves (its result's
    elements × its contracted sizes); 0 for one operand (a permute, trace or reduction)."""
    if len(shapes) < 2:
        return 0
    terms, out = einsum_letters(equation, shapes)
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        for c, s in zip(term, shape, strict=True):
            sizes[c] = max(sizes.get(c, 1), s)  # a letter of size 1 in one operand broadcasts
    total, current = 0, set(terms[0])
    for i, term in enumerate(terms[1:], start=1):
        involved = current | set(term)
        total += math.prod(sizes[c] for c in involved)
        needed = set(out).union(*terms[i + 1:])
        current = involved & needed
    return total
