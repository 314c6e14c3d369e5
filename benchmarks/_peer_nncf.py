"""NNCF's post-training quantization of an fp32 ONNX file (its ONNX backend), run in a subprocess of its own.

    python -m benchmarks._peer_nncf FP32.onnx OUT.onnx CALIBRATION.npy [--preset performance|mixed] [--python PY]

NNCF (PyPI ``nncf``, the ``bench`` extra) patches torch when its PyTorch backend is imported, so the benchmark never
imports it in-process: :func:`nncf_quantize` runs this module with the interpreter given (a separate venv where NNCF
needs other package versions; the current interpreter by default). The calibration images are one ``.npy`` array;
NNCF sees them one image per sample, all of them (``subset_size`` = their number).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def nncf_version(python: str | None = None) -> str | None:
    """NNCF's version in ``python``'s environment, or None when it is not installed there."""
    result = subprocess.run([python or sys.executable, "-c", "import nncf; print(nncf.__version__)"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def nncf_quantize(fp32: Path, out: Path, calibration: Path, *, preset: str = "performance",
                  python: str | None = None) -> float:
    """Run NNCF in a subprocess; returns its wall time in seconds (raises on failure with NNCF's message)."""
    command = [python or sys.executable, "-m", "benchmarks._peer_nncf", str(fp32), str(out), str(calibration),
               "--preset", preset]
    began = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"NNCF failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("fp32")
    parser.add_argument("out")
    parser.add_argument("calibration")
    parser.add_argument("--preset", choices=("performance", "mixed"), default="performance")
    args = parser.parse_args(argv)
    import nncf
    import numpy as np
    import onnx

    model = onnx.load(args.fp32)
    images = np.load(args.calibration).astype(np.float32)
    name = model.graph.input[0].name
    dataset = nncf.Dataset(list(images), lambda image: {name: image[None]})
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    quantized = nncf.quantize(model, dataset, preset=preset[args.preset], subset_size=len(images))
    onnx.save(quantized, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
