import random

import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.analysis import AA_BAND, TOO_NOISY, compare_latency, compare_latency_many, format_ratio, latency
from slimkit.analysis._latency import median_ci_ranks
from slimkit.export import export_onnx


def _model():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10)).eval()


class FakeClock:
    """A clock that only moves when a fake model runs: each call costs ``cost`` ms times a noise factor."""

    def __init__(self, noise=None):
        self.now, self.noise, self.calls = 0.0, noise, []

    def __call__(self) -> float:
        return self.now

    def spend(self, who, ms: float) -> None:
        self.calls.append(who)
        self.now += ms * 1e-3 * (self.noise(who) if self.noise else 1.0)


def _fakes(clock, base_ms, cand_ms):
    """Two modules whose forward advances the fake clock (the clock is reached through a closure, so the deep copy
    compare_latency makes for the A/A control shares it)."""

    def spend(who, ms):
        clock.spend(who, ms)

    class Fake(nn.Module):
        def __init__(self, ms):
            super().__init__()
            self.ms = ms

        def forward(self, x):
            spend(id(self), self.ms)
            return x

    return Fake(base_ms), Fake(cand_ms)


def test_a_deterministic_two_times_slower_candidate_gives_two_with_a_tight_spread():
    clock = FakeClock()
    base, cand = _fakes(clock, 1.0, 2.0)
    cmp = compare_latency(base, cand, torch.zeros(1), warmup=2, repeats=30, clock=clock)
    assert cmp.status == "ok" and cmp.ok
    assert cmp.ratio == pytest.approx(2.0) and cmp.ratio_p10 == pytest.approx(2.0) and cmp.ratio_p90 == pytest.approx(2)
    assert cmp.ratio_ci == pytest.approx((2.0, 2.0)) and cmp.aa_ci == pytest.approx((1.0, 1.0))
    assert cmp.aa_ratio == pytest.approx(1.0) and cmp.speedup == pytest.approx(0.5)
    assert cmp.candidate.median_ms == pytest.approx(2.0) and cmp.control.median_ms == pytest.approx(1.0)
    assert cmp.text() == "2.00 (2.00–2.00)" and cmp.to_dict()["status"] == "ok"


def test_rounds_interleave_a_separate_control_in_a_seeded_random_order():
    clock = FakeClock()
    base, cand = _fakes(clock, 1.0, 1.0)
    compare_latency(base, cand, torch.zeros(1), warmup=1, repeats=40, seed=3, clock=clock)
    calls = clock.calls
    assert len(set(calls)) == 3 and id(base) in calls and id(cand) in calls  # A′ is a third, separate instance
    rounds = [tuple(calls[i:i + 3]) for i in range(0, len(calls), 3)]
    assert all(len(set(r)) == 3 for r in rounds)  # every round runs A, A′ and B once
    assert len(set(rounds[1:])) == 6  # every order occurs: no model always runs first
    again = FakeClock()
    base2, cand2 = _fakes(again, 1.0, 1.0)
    compare_latency(base2, cand2, torch.zeros(1), warmup=1, repeats=40, seed=3, clock=again)
    ids = {id(base): "A", id(cand): "B"}
    ids2 = {id(base2): "A", id(cand2): "B"}
    assert [ids.get(c, "A'") for c in calls] == [ids2.get(c, "A'") for c in again.calls]  # same seed, same order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_noisy_timer_makes_the_comparison_refuse(seed):
    rng = random.Random(seed)
    clock = FakeClock(noise=lambda who: rng.lognormvariate(0.0, 1.5))  # a machine shared with bursty jobs
    base, cand = _fakes(clock, 1.0, 2.0)
    cmp = compare_latency(base, cand, torch.zeros(1), warmup=1, repeats=9, seed=seed, clock=clock)
    lo, hi = cmp.aa_ci
    assert lo < AA_BAND[0] or hi > AA_BAND[1]  # the median may land near 1.0 by luck; its interval cannot
    assert cmp.status == TOO_NOISY and not cmp.ok
    assert cmp.ratio is None and cmp.ratio_p10 is None and cmp.speedup is None
    assert cmp.text() == "too noisy" and cmp.aa_text() != "too noisy"


def test_several_candidates_share_one_run_paired_with_the_baseline_in_each_round():
    """k candidates timed in one interleaved run: every round runs the baseline, the control and each candidate
    once (k + 2 calls, not 3k), and each candidate's ratio is its own time over the baseline's in the same round."""
    clock = FakeClock()
    base, half = _fakes(clock, 1.0, 0.5)
    _, triple = _fakes(clock, 1.0, 3.0)
    cmps = compare_latency_many(base, [half, triple], torch.zeros(1), warmup=1, repeats=30, seed=5, clock=clock)
    assert [c.ratio for c in cmps] == pytest.approx([0.5, 3.0]) and all(c.status == "ok" for c in cmps)
    assert cmps[0].aa_ratio == cmps[1].aa_ratio == pytest.approx(1.0)  # one control serves both
    rounds = [clock.calls[i:i + 4] for i in range(0, len(clock.calls), 4)]
    assert len(rounds) == 31 and all(len(set(r)) == 4 for r in rounds)  # warm-up + 30 rounds of A, A′, B1, B2
    assert len({tuple(r) for r in rounds[1:]}) > 6  # the order is drawn per round
    # a load spike on round r hits the baseline and the candidates of round r alike: the paired ratio ignores it
    spiky, spikes = FakeClock(), iter(range(10 ** 6))
    spiky.noise = lambda who: 5.0 if (next(spikes) // 4) % 7 == 3 else 1.0
    base, half = _fakes(spiky, 1.0, 0.5)
    _, triple = _fakes(spiky, 1.0, 3.0)
    cmps = compare_latency_many(base, [half, triple], torch.zeros(1), warmup=0, repeats=28, clock=spiky)
    assert [c.ratio_p10 for c in cmps] == pytest.approx([0.5, 3.0]) and [c.ratio_p90 for c in cmps] == \
        pytest.approx([0.5, 3.0])
    assert compare_latency_many(base, [], torch.zeros(1)) == []
    with pytest.raises(ConfigError, match="repeats"):  # arguments are checked even with no candidate
        compare_latency_many(base, [], torch.zeros(1), repeats=0)


@pytest.mark.parametrize(("n", "rank"), [(6, 1), (9, 2), (20, 6), (50, 18), (100, 40)])
def test_median_interval_ranks_match_the_binomial_table(n, rank):
    """Conover (1999) Table A3: the 1-based lower rank r of the 95 % interval for the median."""
    assert median_ci_ranks(n) == (rank - 1, n - rank)


def test_a_contended_session_is_caught_by_the_control():
    """One live instance of the baseline slowed 1.3× by a neighbour (e.g. its thread shares a core with a busy
    process): without the control the comparison would report a 1.3× error as a result."""
    clock = FakeClock()
    base, cand = _fakes(clock, 1.0, 0.5)
    clock.noise = lambda who: 1.0 if who in (id(base), id(cand)) else 1.3
    cmp = compare_latency(base, cand, torch.zeros(1), warmup=1, repeats=20, clock=clock)
    assert cmp.aa_ratio == pytest.approx(1.3) and cmp.status == TOO_NOISY and cmp.ratio is None


def test_compare_latency_leaves_the_callers_models_as_they_came():
    model = _model().train()
    threads = torch.get_num_threads()
    cmp = compare_latency(model, _model(), torch.zeros(1, 1, 28, 28), threads=1, warmup=1, repeats=3)
    assert model.training and all(m.training for m in model.modules())
    assert torch.get_num_threads() == threads
    assert cmp.baseline.repeats == cmp.control.repeats == cmp.candidate.repeats == 3 and cmp.baseline.threads == 1


def test_onnxruntime_comparison_of_files_runs_three_sessions(tmp_path):
    x = torch.zeros(2, 1, 28, 28)
    a = export_onnx(_model(), x, tmp_path / "a.onnx")
    b = export_onnx(_model(), x, tmp_path / "b.onnx")
    cmp = compare_latency(a, b, x, backend="onnxruntime", threads=1, warmup=1, repeats=4)
    assert cmp.status in ("ok", TOO_NOISY) and cmp.aa_ratio > 0  # real timings: no threshold asserted
    assert cmp.candidate.backend == "onnxruntime" and cmp.candidate.batch_size == 2 and cmp.control.repeats == 4


def _fake_sessions(monkeypatch, clock, session_ms):
    """ONNX Runtime sessions replaced by fakes: the k-th session made of a file costs ``session_ms[file][k]`` on
    ``clock``; returns the list of files in the order their sessions were made."""
    import slimkit.analysis._latency as latency_module

    made = []

    def fake_runner(path, inputs, threads):
        ms, who = session_ms[str(path)][made.count(str(path))], (str(path), made.count(str(path)))
        made.append(str(path))
        return lambda: clock.spend(who, ms)

    monkeypatch.setitem(latency_module._ONNX_RUNNERS, "onnxruntime", fake_runner)
    return made


def test_each_model_runs_in_several_sessions_and_a_slow_session_counts_by_its_share(tmp_path, monkeypatch):
    """ONNX Runtime sessions of one file can differ for their whole life (LeNet-5 int8: 2.4 ms or 3.4 ms per
    session): each model's round time is the mean over its sessions, so one unlucky session moves the ratio by its
    share instead of deciding it."""
    x = torch.zeros(2, 1, 28, 28)
    a, b = export_onnx(_model(), x, tmp_path / "a.onnx"), export_onnx(_model(), x, tmp_path / "b.onnx")
    clock = FakeClock()
    session_ms = {str(a): [1.0] * 6, str(b): [2.4, 2.4, 3.4]}  # the baseline's 3 sessions and its control's 3
    made = _fake_sessions(monkeypatch, clock, session_ms)
    cmp = compare_latency(a, b, x, backend="onnxruntime", threads=1, warmup=1, repeats=12, clock=clock)
    assert made == [str(a)] * 6 + [str(b)] * 3 and cmp.sessions == 3
    rounds = [clock.calls[i:i + 9] for i in range(9, len(clock.calls), 9)]  # after the warm-up round
    assert all(len(set(r)) == 9 for r in rounds)  # every session runs once a round
    assert cmp.ratio == pytest.approx((2.4 + 2.4 + 3.4) / 3) and cmp.aa_ratio == pytest.approx(1.0)
    assert cmp.candidate.median_ms == pytest.approx((2.4 + 2.4 + 3.4) / 3)
    made.clear()
    single = compare_latency(a, b, x, backend="onnxruntime", threads=1, warmup=1, repeats=12, clock=clock, sessions=1)
    assert single.ratio == pytest.approx(2.4) and single.sessions == 1  # one session: whichever draw it got
    with pytest.raises(ConfigError, match="sessions=0"):
        compare_latency(a, b, x, backend="onnxruntime", sessions=0)


def test_several_candidates_in_several_sessions_each_read_their_own_sessions(tmp_path, monkeypatch):
    """With 3 sessions per model and two candidates, each candidate's time is the mean of its own 3 sessions."""
    x = torch.zeros(2, 1, 28, 28)
    a, b, c = (export_onnx(_model(), x, tmp_path / f"{n}.onnx") for n in "abc")
    clock = FakeClock()
    session_ms = {str(a): [1.0] * 6, str(b): [2.0, 2.0, 5.0], str(c): [0.5, 0.5, 0.5]}
    made = _fake_sessions(monkeypatch, clock, session_ms)
    cmps = compare_latency_many(a, [b, c], x, backend="onnxruntime", threads=1, warmup=1, repeats=12, clock=clock)
    assert made == [str(a)] * 6 + [str(b)] * 3 + [str(c)] * 3
    assert [cmp.ratio for cmp in cmps] == pytest.approx([3.0, 0.5]) and all(cmp.sessions == 3 for cmp in cmps)
    assert [cmp.aa_ratio for cmp in cmps] == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_latency_returns_ordered_percentiles(backend):
    result = latency(_model(), torch.zeros(2, 1, 28, 28), backend=backend, threads=1, warmup=2, repeats=9)
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms
    assert result.batch_size == 2 and result.repeats == 9 and result.backend == backend and result.threads == 1


def test_format_ratio_is_what_every_printer_shows():
    assert format_ratio(0.4567, "ok") == "0.46"
    assert format_ratio(0.4567, "ok", 0.41, 0.5) == "0.46 (0.41–0.50)"
    assert format_ratio(None, TOO_NOISY) == "too noisy" and format_ratio(0.5, TOO_NOISY) == "too noisy"
    assert format_ratio(None, None) == "–"


def test_bad_latency_arguments_are_rejected_before_work(tmp_path):
    with pytest.raises(ConfigError, match="threads"):
        latency(_model(), torch.zeros(1, 1, 28, 28), threads=0)
    with pytest.raises(ConfigError, match="backend"):
        latency(_model(), torch.zeros(1, 1, 28, 28), backend="tvm")
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        latency("model.onnx", torch.zeros(1, 1, 28, 28), backend="torch")
    with pytest.raises(ConfigError, match="repeats"):
        compare_latency(_model(), _model(), torch.zeros(1, 1, 28, 28), repeats=0)
    with pytest.raises(ConfigError, match="no ONNX file"):
        compare_latency(tmp_path / "missing.onnx", _model(), torch.zeros(1, 1, 28, 28), backend="onnxruntime")
