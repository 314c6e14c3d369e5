from types import SimpleNamespace

import torch

import slimkit.analysis
from slimkit.analysis import TOO_NOISY
from slimkit.auto._measure import CANDIDATES_PER_RUN, OrtLatency


def test_ort_latency_times_candidates_a_few_to_a_run_and_repeats_a_noisy_run(monkeypatch):
    """compare_many: runs of at most CANDIDATES_PER_RUN candidates (files where given, else the modules); a run whose
    shared A/A was too noisy is repeated once at twice the rounds; compare is the one-candidate case."""
    runs = []

    def fake_many(baseline, candidates, inputs, *, backend, threads, warmup, repeats):
        runs.append((baseline, list(candidates), repeats))
        noisy = len(runs) == 1  # the first run's control was too noisy
        return [SimpleNamespace(status=TOO_NOISY if noisy else "ok",
                                record=lambda c=c, noisy=noisy: {"ratio": None if noisy else c, "status": "x"})
                for c in candidates]

    monkeypatch.setattr(slimkit.analysis, "compare_latency_many", fake_many)
    meter = OrtLatency(repeats=7)
    modules = [torch.nn.Identity() for _ in range(CANDIDATES_PER_RUN + 2)]
    candidates = [(m, f"file{k}" if k % 2 else None) for k, m in enumerate(modules)]
    records = meter.compare_many("base.onnx", "base.onnx", candidates, (torch.zeros(1),), threads=1)
    timed = [f if f is not None else m for m, f in candidates]
    assert [r["ratio"] for r in records] == timed  # in order, each the file where given
    assert [(len(c), repeats) for _, c, repeats in runs] == [(CANDIDATES_PER_RUN, 7), (CANDIDATES_PER_RUN, 14),
                                                             (2, 7)]
    runs.clear()
    module = torch.nn.Identity()
    assert meter.compare(module, module, None, "cand.onnx", (torch.zeros(1),), threads=1)["ratio"] == "cand.onnx"
    assert [(b, c, r) for b, c, r in runs] == [(module, ["cand.onnx"], 7), (module, ["cand.onnx"], 14)]


def test_a_subclass_that_overrides_compare_is_asked_one_candidate_at_a_time(monkeypatch):
    """OrtLatency.compare_many shares runs only when compare is OrtLatency's own: a subclass's compare (a user's
    timing, here one that adjusts the shared-run reading it gets from super()) is called for every candidate."""
    runs = []

    def fake_many(baseline, candidates, inputs, *, backend, threads, warmup, repeats):
        runs.append(list(candidates))
        return [SimpleNamespace(status="ok", record=lambda c=c: {"ratio": c}) for c in candidates]

    monkeypatch.setattr(slimkit.analysis, "compare_latency_many", fake_many)

    class Mine(OrtLatency):
        def compare(self, baseline, candidate, baseline_file, candidate_file, inputs, *, threads):
            record = super().compare(baseline, candidate, baseline_file, candidate_file, inputs, threads=threads)
            return {"ratio": f"mine:{record['ratio']}"}

    candidates = [(torch.nn.Identity(), "a.onnx"), (torch.nn.Identity(), "b.onnx")]
    records = Mine().compare_many(None, "base.onnx", candidates, (torch.zeros(1),), threads=1)
    assert records == [{"ratio": "mine:a.onnx"}, {"ratio": "mine:b.onnx"}] and runs == [["a.onnx"], ["b.onnx"]]
