"""What GPTQ costs to calibrate: wall time and memory of ``quantize(..., method="gptq")`` on the tiny Llama (int4
g128 weight-only, 128 blocks of 256 tokens) and on ResNet-20 (w4a8, 1,024 MNIST images), each in a fresh process
so the memory is GPTQ's own: the resident size sampled every 5 ms while it runs, and how far it rises above the
size with model and data loaded.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import Section, markdown_table

TITLE = "GPTQ calibration cost: wall time and memory"


def _cost_child(kind: str, quick: bool) -> dict[str, Any]:
    """Run in a child process: load the model and calibration data, then time GPTQ and read the peak RSS."""
    from slimkit.quantize import QuantConfig, quantize

    torch.set_num_threads(2)
    if kind == "resnet20":
        from slimkit import models
        from slimkit.data import create_data

        data = create_data("mnist", batch_size=256, calibration_size=128 if quick else 1024)
        model = models.create("resnet20").eval()
        config = QuantConfig(method="gptq", weight_bits=4)
        calibration, example = data.calibration, data.example_input()
        units = f"{128 if quick else 1024} images"
    else:
        from benchmarks._lm_baselines import lm_data
        from benchmarks.bench_quantize_lm import _trained, _weight_only

        data = lm_data()
        model, _ = _trained(kind, data, quick)
        config = _weight_only(4, "gptq", False)
        calibration = [next(iter(data.calibration))] if quick else data.calibration
        example = None
        units = f"{sum(len(b[0]) for b in calibration)} blocks of {data.block_size} tokens"
    # ru_maxrss is the process's peak since it started (loading the corpus can be the highest point): GPTQ's own
    # memory is the resident size sampled while it runs, above the size just before it starts
    before = _rss_mb()
    with _RssSampler() as sampler:
        began = time.perf_counter()
        quantize(model, example, config, data=calibration)
        seconds = time.perf_counter() - began
    return {"model": kind, "calibration": units, "seconds": seconds, "peak_mb": sampler.peak_mb,
            "peak_over_loaded_mb": sampler.peak_mb - before, "loaded_mb": before,
            "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": 2}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler:
    """The highest resident size of this process while the ``with`` block runs, sampled every 5 ms."""

    def __enter__(self) -> _RssSampler:
        import threading

        self.peak_mb, self._stop = _rss_mb(), threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self.peak_mb = max(self.peak_mb, _rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def _cost(kind: str, quick: bool) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.bench_gptq_cost", "--cost", kind] + (["--quick"] if quick else [])
    done = subprocess.run(args, capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        return {"model": kind, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool) -> Section:
    costs = [_cost("llama_tiny", quick), _cost("resnet20", quick)]
    rows = [[c["model"], c.get("calibration", "–"), f"{c['seconds']:.1f}" if "seconds" in c else "–",
             f"{c['loaded_mb']:.0f}" if "loaded_mb" in c else "–", f"{c['peak_mb']:.0f}" if "peak_mb" in c else "–",
             f"{c['peak_over_loaded_mb']:.0f}" if "peak_over_loaded_mb" in c else c.get("error", "–")]
            for c in costs]
    markdown = ("A fresh process per model, 2 PyTorch threads; memory is the process's resident size (RSS).\n\n"
                + markdown_table(["model", "calibration", "wall s", "loaded MB", "peak while GPTQ runs MB",
                                  "GPTQ's own MB"], rows))
    return Section("gptq_cost", TITLE, markdown, {"costs": costs})


if __name__ == "__main__":
    if "--cost" in sys.argv:
        kind = sys.argv[sys.argv.index("--cost") + 1]
        logging.disable(logging.WARNING)
        print(json.dumps(_cost_child(kind, "--quick" in sys.argv)))
    else:
        print("run through benchmarks.run: python -m benchmarks.run --only gptq_cost")
