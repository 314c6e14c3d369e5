"""The decompositions: truncated SVD (Linear and any groups=1 Conv2d), Tucker-2 and CP (k×k Conv2d).

Each one turns a layer into an ``nn.Sequential`` of ordinary layers, so the result trains, counts and exports to ONNX
like any model. They register in ``DECOMPOSITIONS`` by name ("svd", "tucker2", "cp"); a new one is a class with the
same five methods.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from slimkit._registry import Registry

T = TypeVar("T")


class Decomposition(Protocol):
    """What a decomposition must provide. ``ranks`` is a tuple with one entry per factorised mode."""

    def skip_reason(self, module: nn.Module) -> str | None:
        """Why this decomposition cannot (or should not) be applied to ``module``; None when it can."""

    def matrices(self, module: nn.Module) -> list[np.ndarray]:
        """The matrices whose spectra the energy and VBMF rank rules read, one per entry of ``ranks``."""

    def full_ranks(self, module: nn.Module) -> tuple[int, ...]:
        """The ranks at which the decomposition is exact (for SVD/Tucker-2 the matrix ranks' upper bounds)."""

    def params(self, module: nn.Module, ranks: tuple[int, ...]) -> int:
        """Weights + bias of the replacement at ``ranks`` (a hand count, checked against ``profile`` in tests)."""

    def build(self, module: nn.Module, ranks: tuple[int, ...], seed: int) -> nn.Sequential:
        """The replacement layers."""


DECOMPOSITIONS: Registry[Decomposition] = Registry("decomposition")


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Limit numpy's BLAS to ``threads`` while factorising: tensorly's small ALS/HOOI products run ~30× slower on a
    shared CPU when BLAS spawns a thread per core, and ``torch.set_num_threads`` does not reach numpy."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with scikit-learn; without it BLAS keeps its own default
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):  # PyTorch's own OpenMP pool is left alone
        yield


#: weights (or matrices) with fewer elements than this are factorised on one BLAS thread: their products are too
#: small to gain much from a second thread, and on a loaded machine a BLAS thread that waits for a descheduled
#: partner makes them 5-50× slower (a LeNet-5 conv's Tucker-2: 0.1 s on one thread, 0.2-6 s on two beside other
#: jobs). LeNet-5's 500×800 fc1 is below it, ResNet-50's 512×512×3×3 convs are above
SMALL_FACTORISATION = 1 << 20


def _size_of(args: tuple) -> int | None:
    for arg in args:
        weight = getattr(arg, "weight", None) if isinstance(arg, nn.Module) else arg
        if isinstance(weight, (torch.Tensor, np.ndarray)):
            return int(weight.size if isinstance(weight, np.ndarray) else weight.numel())
    return None


def limit_blas(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with numpy's BLAS limited to ``torch.get_num_threads()`` threads, or one for a small weight or
    matrix argument (:data:`SMALL_FACTORISATION`; see :func:`blas_threads`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        size = _size_of(args)
        threads = 1 if size is not None and size < SMALL_FACTORISATION else torch.get_num_threads()
        with blas_threads(threads):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def _quiet_tensorly() -> Iterator[None]:
    # SVD initialisation asks for more eigenvectors than a small mode has (e.g. CP rank > kernel size) and tensorly
    # warns before doing the right thing (random completion); the warning says nothing the caller can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs", category=UserWarning)
        warnings.filterwarnings("ignore", message="Given only one int for 'rank'", category=Warning)
        yield


def _weight(module: nn.Module) -> np.ndarray:
    return module.weight.detach().cpu().double().numpy()


def _bias_count(module: nn.Module) -> int:
    return 0 if module.bias is None else module.bias.numel()


def _to(tensor: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(tensor), dtype=like.dtype, device=like.device)


def _conv_problem(module: nn.Module) -> str | None:
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is not a Conv2d"
    if module.groups != 1:
        return f"grouped/depthwise conv (groups={module.groups}) has no dense kernel to factorise"
    if module.padding_mode != "zeros":
        return f"padding_mode '{module.padding_mode}' cannot be split across factors (only 'zeros' can)"
    return None


def _copy_bias(target: nn.Module, source: nn.Module) -> None:
    if source.bias is not None:
        target.bias.data.copy_(source.bias.detach())


class SVD:
    """Truncated SVD W ≈ (U_K √S_K)(√S_K V_Kᵀ) of a Linear N×M weight: Linear M→K (no bias) then Linear K→N with the
    original bias, no activation between; params K(N + M) (+ bias) instead of NM.

    A groups=1 Conv2d is treated as the O × (I·kh·kw) matrix (Zhang et al. 2016): a k×k conv I→K with the original
    stride/padding/dilation, no bias, then a 1×1 conv K→O with the bias. The √S split balances the two factors'
    scales, which helps fine-tuning.
    """

    def skip_reason(self, module: nn.Module) -> str | None:
        if isinstance(module, nn.Linear):
            return None
        return _conv_problem(module)

    def matrices(self, module: nn.Module) -> list[np.ndarray]:
        w = _weight(module)
        return [w.reshape(w.shape[0], -1)]

    def full_ranks(self, module: nn.Module) -> tuple[int, ...]:
        rows, cols = module.weight.shape[0], module.weight[0].numel()
        return (min(rows, cols),)

    def params(self, module: nn.Module, ranks: tuple[int, ...]) -> int:
        (k,) = ranks
        return k * (module.weight.shape[0] + module.weight[0].numel()) + _bias_count(module)

    @limit_blas
    def build(self, module: nn.Module, ranks: tuple[int, ...], seed: int) -> nn.Sequential:
        (k,) = ranks
        (w,) = self.matrices(module)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        root = np.sqrt(s[:k])
        first_w, last_w = root[:, None] * vt[:k], u[:, :k] * root[None, :]
        if isinstance(module, nn.Linear):
            first = nn.Linear(module.in_features, k, bias=False)
            last = nn.Linear(k, module.out_features, bias=module.bias is not None)
            first.weight.data = _to(first_w, module.weight)
            last.weight.data = _to(last_w, module.weight)
        else:
            first = nn.Conv2d(module.in_channels, k, module.kernel_size, module.stride, module.padding,
                              module.dilation, bias=False)
            last = nn.Conv2d(k, module.out_channels, 1, bias=module.bias is not None)
            first.weight.data = _to(first_w.reshape(k, *module.weight.shape[1:]), module.weight)
            last.weight.data = _to(last_w[:, :, None, None], module.weight)
        _copy_bias(last, module)
        return nn.Sequential(first, last)


def _spatial_problem(module: nn.Module) -> str | None:
    problem = _conv_problem(module)
    if problem is None and math.prod(module.kernel_size) == 1:
        return "1×1 conv: Tucker-2/CP add nothing over SVD here (use method 'svd')"
    return problem


class Tucker2:
    """Tucker-2 W ≈ G ×₀ U_out ×₁ U_in (Kim et al. 2016, Eq. 4): 1×1 conv I→R_in (U_inᵀ), core kh×kw conv
    R_in→R_out with the original stride/padding/dilation, 1×1 conv R_out→O (U_out) with the original bias.

    Computed by HOOI (``tensorly.decomposition.partial_tucker`` on modes 0 and 1, SVD init); ``ranks`` is
    (R_out, R_in). At full ranks the factors are orthogonal and the result is exact.
    """

    def skip_reason(self, module: nn.Module) -> str | None:
        return _spatial_problem(module)

    def matrices(self, module: nn.Module) -> list[np.ndarray]:
        w = _weight(module)
        return [w.reshape(w.shape[0], -1), np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)]

    def full_ranks(self, module: nn.Module) -> tuple[int, ...]:
        return module.out_channels, module.in_channels

    def params(self, module: nn.Module, ranks: tuple[int, ...]) -> int:
        r_out, r_in = ranks
        taps = math.prod(module.kernel_size)
        return module.in_channels * r_in + r_in * r_out * taps + r_out * module.out_channels + _bias_count(module)

    @limit_blas
    def build(self, module: nn.Module, ranks: tuple[int, ...], seed: int) -> nn.Sequential:
        import tensorly as tl
        from tensorly.decomposition import partial_tucker

        tl.set_backend("numpy")
        r_out, r_in = ranks
        with _quiet_tensorly():
            (core, (u_out, u_in)), _ = partial_tucker(_weight(module), rank=[r_out, r_in], modes=[0, 1], init="svd",
                                                      n_iter_max=100, tol=1e-8, random_state=seed)
        first = nn.Conv2d(module.in_channels, r_in, 1, bias=False)
        middle = nn.Conv2d(r_in, r_out, module.kernel_size, module.stride, module.padding, module.dilation,
                           bias=False)
        last = nn.Conv2d(r_out, module.out_channels, 1, bias=module.bias is not None)
        first.weight.data = _to(u_in.T[:, :, None, None], module.weight)
        middle.weight.data = _to(core, module.weight)
        last.weight.data = _to(u_out[:, :, None, None], module.weight)
        _copy_bias(last, module)
        return nn.Sequential(first, middle, last)


class CP:
    """Rank-R CP W[o,i,h,w] ≈ Σ_r A[o,r] B[i,r] C[h,r] D[w,r] (Lebedev et al. 2015, Eq. 2): 1×1 conv I→R (Bᵀ),
    depthwise kh×1 conv (C, vertical stride/padding/dilation), depthwise 1×kw conv (D, horizontal), 1×1 conv R→O
    (A) with the original bias, each factor carrying |λ_r|^(1/4). Zero padding splits exactly across the two
    depthwise convs because the first 1×1 conv has no bias.

    Computed by CP-ALS (``tensorly.decomposition.parafac``, SVD init, fixed seed); unlike SVD/Tucker it is not exact
    at any particular rank, and Lebedev et al. fine-tune afterwards. For the energy/VBMF rules R is the larger of the
    rules' ranks of the mode-0 and mode-1 unfoldings (a heuristic, as in common CP-for-CNN code).
    """

    def skip_reason(self, module: nn.Module) -> str | None:
        return _spatial_problem(module)

    def matrices(self, module: nn.Module) -> list[np.ndarray]:
        return Tucker2().matrices(module)

    def full_ranks(self, module: nn.Module) -> tuple[int, ...]:
        return (max(module.out_channels, module.in_channels),)

    def combine(self, ranks: tuple[int, ...]) -> tuple[int, ...]:
        return (max(ranks),)

    def params(self, module: nn.Module, ranks: tuple[int, ...]) -> int:
        (r,) = ranks
        kh, kw = module.kernel_size
        return r * (module.in_channels + kh + kw + module.out_channels) + _bias_count(module)

    @limit_blas
    def build(self, module: nn.Module, ranks: tuple[int, ...], seed: int) -> nn.Sequential:
        import tensorly as tl
        from tensorly.decomposition import parafac

        tl.set_backend("numpy")
        (r,) = ranks
        with _quiet_tensorly():
            weights, (a, b, c, d) = parafac(_weight(module), rank=r, init="svd", n_iter_max=200, tol=1e-9,
                                            random_state=seed, normalize_factors=True)
        # Unit-norm factors each scaled by |λ_r|^(1/4) (sign on A): CP-ALS often yields large cancelling components,
        # and putting all of λ in one factor makes fine-tuning diverge at ordinary learning rates.
        root = np.abs(weights) ** 0.25
        a, b, c, d = a * (np.sign(weights) * root)[None, :], b * root[None, :], c * root[None, :], d * root[None, :]
        (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
        if isinstance(module.padding, str):
            pad_v = pad_h = module.padding
        else:
            pad_v, pad_h = (module.padding[0], 0), (0, module.padding[1])
        first = nn.Conv2d(module.in_channels, r, 1, bias=False)
        vertical = nn.Conv2d(r, r, (kh, 1), (sh, 1), pad_v, (dh, 1), groups=r, bias=False)
        horizontal = nn.Conv2d(r, r, (1, kw), (1, sw), pad_h, (1, dw), groups=r, bias=False)
        last = nn.Conv2d(r, module.out_channels, 1, bias=module.bias is not None)
        first.weight.data = _to(b.T[:, :, None, None], module.weight)
        vertical.weight.data = _to(c.T[:, None, :, None], module.weight)
        horizontal.weight.data = _to(d.T[:, None, None, :], module.weight)
        last.weight.data = _to(a[:, :, None, None], module.weight)
        _copy_bias(last, module)
        return nn.Sequential(first, vertical, horizontal, last)


# Registered as instances: the methods hold no state, and the registry hands out the object to call.
DECOMPOSITIONS.register("svd", paper="Denton et al. 2014; Zhang et al. 2016 (channel decomposition)")(SVD())
DECOMPOSITIONS.register("tucker2", paper="Kim et al. 2016 (ICLR), Tucker-2 on output and input modes")(Tucker2())
DECOMPOSITIONS.register("cp", paper="Lebedev et al. 2015 (ICLR), CP decomposition of the 4-D kernel")(CP())
