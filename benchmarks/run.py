"""Run every benchmark (or ``--only TOPIC``) and regenerate BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--only prune,quantize] [--assemble-only]
    python -m benchmarks.run --rerender quantize_lm     # the section's text again from its saved results

``--rerender`` measures nothing: it rebuilds a section's markdown from ``results/<topic>.json`` with the module's
``render(payload)``, keeping the machine, date and commit of the run that measured it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import time
from pathlib import Path

# idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads of two processes starve
# each other (as the CLI does; measured there: a LeNet step 540-740 ms spinning vs 120 ms passive under load)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from benchmarks._common import assemble, machine_info, write_section


def topics() -> list[str]:
    """Benchmark topics: the ``bench_<topic>.py`` modules beside this file."""
    here = Path(__file__).parent
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(here)])
                  if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer epochs/repeats: a smoke run")
    parser.add_argument("--only", help=f"comma-separated topics ({', '.join(topics())})")
    parser.add_argument("--assemble-only", action="store_true", help="rebuild BENCHMARKS.md from saved results")
    parser.add_argument("--rerender", metavar="TOPIC", help="rebuild one section's text from its saved results")
    args = parser.parse_args(argv)
    if args.rerender:
        return rerender(args.rerender)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    chosen = topics() if not args.only else [t.strip() for t in args.only.split(",")]
    unknown = sorted(set(chosen) - set(topics()))
    if unknown:
        print(f"unknown benchmark topic(s) {', '.join(unknown)}: choose from {', '.join(topics())}", file=sys.stderr)
        return 2
    if not args.assemble_only:
        for topic in chosen:
            module = importlib.import_module(f"benchmarks.bench_{topic}")
            began = time.perf_counter()
            logging.info("benchmark %s ...", topic)
            info = machine_info()  # the code as the run starts (later commits must not be credited with it)
            section = module.run(quick=args.quick)
            write_section(section, args.quick, info=info)
            logging.info("benchmark %s done in %.0f s", topic, time.perf_counter() - began)
    assemble()
    print("BENCHMARKS.md written")
    return 0


def rerender(topic: str) -> int:
    """Rebuild ``topic``'s section from ``results/<topic>.json`` (no measurement) and BENCHMARKS.md."""
    import json

    from benchmarks._common import RESULTS, Section

    module = importlib.import_module(f"benchmarks.bench_{topic}") if topic in topics() else None
    saved = RESULTS / f"{topic}.json"
    if module is None or not hasattr(module, "render") or not saved.is_file():
        print(f"cannot rerender '{topic}': it needs benchmarks/bench_{topic}.py with render(payload) and "
              f"{saved}", file=sys.stderr)
        return 2
    payload = json.loads(saved.read_text())
    markdown, data = module.render(payload)
    write_section(Section(topic, module.TITLE, markdown, data), payload.get("quick", False), info=payload["machine"])
    assemble()
    print(f"{topic} rendered again from {saved}; BENCHMARKS.md written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
