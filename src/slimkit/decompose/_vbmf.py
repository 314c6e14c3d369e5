"""Empirical variational Bayes matrix factorisation (EVBMF), the analytic global solution.

Nakajima, Sugiyama, Babacan & Tomioka, "Global analytic solution of fully-observed variational Bayesian matrix
factorization", JMLR 14 (2013). For an observed L×M matrix ``V = U Aᵀ + noise`` (L ≤ M, noise variance σ²) with
empirical (hyperparameter-learning) priors, the EVB estimator keeps exactly the singular components whose singular
value exceeds the threshold

    γ̲ᴱⱽᴮ = σ · sqrt(M (1 + τ̄)(1 + α/τ̄)),   α = L/M                               (Theorem 2 / Eq. 27)

where τ̄ is the unique zero of the decreasing function Ξ(τ; α) = Φ(τ) + Φ(τ/α), Φ(z) = log(z + 1)/z − 1/2 (Eq. 26).
When σ² is unknown it is estimated by minimising the EVB free energy over σ², which with x_h = γ_h²/(Mσ²) is, up
to constants (Section 4.2, the objective of the authors' code):

    Σ_{x_h ≤ x̄} (x_h − log x_h) + Σ_{x_h > x̄} (x_h − τ_h + log((τ_h + 1)/x_h) + α log(τ_h/α + 1))
        with x̄ = (1 + τ̄)(1 + α/τ̄) and τ_h = τ(x_h; α) = ½ (x_h − (1 + α) + sqrt((x_h − (1 + α))² − 4α)).

Kim et al. (2016) use the number of kept components of each unfolding of a kernel as its Tucker-2 rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimkit._errors import ConfigError
from slimkit.decompose._methods import limit_blas


@dataclass(frozen=True)
class VBMFResult:
    """The EVBMF estimate: ``rank`` kept components, noise variance ``sigma2``, the singular-value ``threshold``,
    the observed ``singular_values`` and the EVB-shrunk ones (``estimates``, zero beyond ``rank``)."""

    rank: int
    sigma2: float
    threshold: float
    singular_values: np.ndarray
    estimates: np.ndarray


def tau_bar(alpha: float) -> float:
    """τ̄(α): the zero of Ξ(τ; α) = Φ(τ) + Φ(τ/α), Φ(z) = log(1 + z)/z − 1/2 (Nakajima et al. 2013, Eq. 26).

    τ̄(1) = 2.5129..., and the often-used approximation is 2.5129·sqrt(α).
    """
    from scipy.optimize import brentq

    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha = L/M = {alpha} must be in (0, 1]: pass the matrix with L ≤ M")

    def phi(z: float) -> float:
        return np.log1p(z) / z - 0.5

    def xi(tau: float) -> float:
        return phi(tau) + phi(tau / alpha)

    # Ξ is decreasing from +1 (τ → 0) to −1 (τ → ∞); τ̄ lies between √α and 2.5129 (Nakajima et al. 2013, Lemma 9).
    return float(brentq(xi, 1e-9, 1e3, xtol=1e-12))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    b = x - (1 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4 * alpha, 0.0)))


def _free_energy(sigma2: float, s: np.ndarray, m: int, alpha: float, xbar: float) -> float:
    x = s**2 / (m * sigma2)
    small, large = x[x <= xbar], x[x > xbar]
    tau = _tau(large, alpha)
    return float(
        np.sum(small - np.log(small))
        + np.sum(large - tau + np.log((tau + 1) / large) + alpha * np.log(tau / alpha + 1))
    )


@limit_blas
def evbmf(matrix: np.ndarray, sigma2: float | None = None) -> VBMFResult:
    """Estimate the rank of ``matrix`` (any L×M, transposed internally so that L ≤ M) by analytic EVBMF.

    ``sigma2`` is the noise variance; None estimates it by minimising the EVB free energy over the bounds of
    Nakajima et al. (2013, Section 4.2): from max(γ²_{ē+1}/(M x̄), mean_{h>ē} γ_h²/M), ē = ceil(L/(1+α)) − 1, up to
    ‖V‖²/(LM).
    """
    from scipy.optimize import minimize_scalar

    v = np.asarray(matrix, dtype=np.float64)
    if v.ndim != 2 or min(v.shape) < 1:
        raise ConfigError(f"EVBMF needs a non-empty 2-D matrix, got shape {v.shape}")
    if v.shape[0] > v.shape[1]:
        v = v.T
    big_l, m = v.shape
    alpha = big_l / m
    tbar = tau_bar(alpha)
    xbar = (1 + tbar) * (1 + alpha / tbar)
    s = np.linalg.svd(v, compute_uv=False)
    if not np.any(s > 0):
        return VBMFResult(0, 0.0, 0.0, s, np.zeros_like(s))
    if sigma2 is None:
        # ē: the largest number of components EVB can keep (Nakajima et al. 2013, Eq. 28); the noise-only tail
        # beyond it bounds σ² from below.
        e_max = int(min(np.ceil(big_l / (1 + alpha)) - 1, big_l - 1))
        tail = s[e_max:]
        lower = max(tail[0] ** 2 / (m * xbar), float(np.mean(tail**2)) / m)
        upper = float(np.sum(s**2)) / (big_l * m)
        lower = min(lower, upper)
        if upper <= 0:
            sigma2 = 0.0
        elif np.isclose(lower, upper):
            sigma2 = upper
        else:
            sigma2 = float(minimize_scalar(_free_energy, args=(s, m, alpha, xbar), bounds=(lower, upper),
                                           method="bounded", options={"xatol": 1e-12 * upper}).x)
    elif sigma2 <= 0:
        raise ConfigError(f"noise variance sigma2 = {sigma2} must be > 0 (or None to estimate it)")
    threshold = float(np.sqrt(sigma2 * m * xbar))
    keep = s > threshold
    rank = int(np.sum(keep))
    estimates = np.zeros_like(s)
    if rank:
        # The EVB estimate of each kept singular value (Nakajima et al. 2013, Eq. 25).
        g = s[keep]
        q = 1 - (big_l + m) * sigma2 / g**2
        estimates[keep] = g / 2 * (q + np.sqrt(np.maximum(q * q - 4 * big_l * m * sigma2**2 / g**4, 0.0)))
    return VBMFResult(rank, float(sigma2), threshold, s, estimates)
