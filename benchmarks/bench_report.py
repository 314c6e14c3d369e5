"""The report a user opens, checked in a real browser: ``slimkit demo --quick``'s report.html rendered by headless
Chromium (Debian's ``chromium``), a screenshot kept beside the results, and the rendered page checked for raw
Markdown, missing plots and the subset banner. (That labels never overlap is asserted from the plot geometry in
tests/report/test_plots.py; the screenshot shows it.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._common import RESULTS, Section, markdown_table

TITLE = "The demo report in a headless browser"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser(binary: str, page: Path, *extra: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


def run(quick: bool = False) -> Section:
    binary = _chromium()
    work = Path(tempfile.mkdtemp(prefix="slimkit-report-"))
    demo = work / "demo"
    started = subprocess.run([sys.executable, "-m", "slimkit.cli", "demo", "--quick", "--out", str(demo)],
                             capture_output=True, text=True, timeout=3600, env=os.environ.copy())
    if started.returncode != 0:
        raise RuntimeError(f"slimkit demo --quick failed: {started.stderr[-2000:]}")
    page = demo / "report.html"
    checks: dict[str, object] = {"report_bytes": page.stat().st_size}
    if binary is None:
        checks["browser"] = "chromium not installed (apt-get install chromium): nothing rendered"
        return Section("report", TITLE, f"No browser on this machine: {checks['browser']}.", {"checks": checks})
    profile = work / "profile"
    dom = _browser(binary, page, "--dump-dom", profile=profile).stdout
    shot = RESULTS / "report_screenshot.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    _browser(binary, page, f"--screenshot={shot}", "--window-size=1100,2600", profile=profile)
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S))
    checks.update({
        "browser": subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip(),
        "rendered_images": len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)),
        "raw_markdown_markers": len(re.findall(r"\*\*\w|^\s*- \*\*|^#+ ", text, flags=re.M)),
        "pre_blocks_outside_recipe": len(re.findall(r"<pre>", dom.split("Recipe (resolved)")[0])),
        "subset_banner": "Subset run" in text,
        "screenshot": shot.name if shot.is_file() else None,
    })
    ok = (checks["rendered_images"] == 3 and checks["raw_markdown_markers"] == 0
          and checks["pre_blocks_outside_recipe"] == 0 and checks["subset_banner"] and checks["screenshot"])
    checks["all_pass"] = bool(ok)
    rows = [[key, str(value)] for key, value in checks.items()]
    markdown = (markdown_table(["check", "result"], rows)
                + f"\n\nScreenshot: `benchmarks/results/{shot.name}`.\n")
    return Section("report", TITLE, markdown, {"checks": checks})
