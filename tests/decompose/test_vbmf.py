import numpy as np
import pytest

from slimkit import ConfigError
from slimkit.decompose import evbmf, tau_bar


def test_tau_bar_solves_the_papers_equation():
    # Nakajima et al. 2013: τ̄(1) = 2.5129, and τ̄(α) ≈ 2.5129·sqrt(α).
    assert tau_bar(1.0) == pytest.approx(2.5129, abs=1e-4)
    for alpha in (0.1, 0.25, 0.5):
        t = tau_bar(alpha)
        assert np.log1p(t) / t - 0.5 + np.log1p(t / alpha) / (t / alpha) - 0.5 == pytest.approx(0, abs=1e-9)
        assert t == pytest.approx(2.5129 * np.sqrt(alpha), rel=0.05)


@pytest.mark.parametrize(("rows", "cols", "rank", "noise"), [
    (60, 100, 7, 0.1), (100, 60, 12, 0.5), (50, 50, 3, 1.0), (128, 576, 20, 0.05), (300, 784, 25, 0.2),
])
def test_evbmf_recovers_the_true_rank_and_noise_variance(rows, cols, rank, noise):
    rng = np.random.default_rng(rank)
    signal = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))
    result = evbmf(signal + noise * rng.standard_normal((rows, cols)))
    assert result.rank == rank
    assert result.sigma2 == pytest.approx(noise**2, rel=0.1)
    # The EVB estimates shrink the kept singular values and zero the rest.
    assert np.all(result.estimates[:rank] < result.singular_values[:rank])
    assert np.all(result.estimates[rank:] == 0)


def test_evbmf_keeps_nothing_of_pure_noise_and_honours_a_given_variance():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((40, 80))
    assert evbmf(noise).rank == 0
    signal = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 80))
    assert evbmf(signal + 0.1 * noise, sigma2=0.01).rank == 4
    # A huge assumed noise variance hides the signal.
    assert evbmf(signal + 0.1 * noise, sigma2=1e4).rank == 0


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.ones(5)])
def test_evbmf_rejects_non_matrices(bad):
    with pytest.raises(ConfigError):
        evbmf(bad)


def test_evbmf_rejects_a_negative_variance():
    with pytest.raises(ConfigError, match="sigma2"):
        evbmf(np.eye(4), sigma2=-1.0)
