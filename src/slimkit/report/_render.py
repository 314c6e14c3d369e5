"""``report.md`` and a self-contained ``report.html`` (tables + plots embedded as base64 PNG) for a run.

The input is the ``metrics.json`` payload of a run: ``{"title", "stages": [row, ...], ...}`` where each row has
``stage``/``label``, ``params``, ``macs``, ``bytes``, ``accuracy`` and ``latency_ratio`` (latency as a fraction of the
input model's, measured in the same run in ``latency_runtime``, ONNX Runtime by default), with ``latency_status``
(``"too noisy"`` is printed instead of a ratio) and ``latency_aa_ratio`` (the A/A control, printed beside it). The
demo passes one row per compressed variant.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimkit._io import write_text_atomic
from slimkit._runtimes import DEFAULT_RUNTIME, RUNTIMES
from slimkit.analysis import format_ratio
from slimkit.report._plots import COSTS, plot_layers, plot_tradeoff

COLUMNS = ("stage", "params", "MACs", "size (KiB)", "latency ×", "A/A ×", "accuracy", "Δ acc")
#: added after "Δ acc" when a row carries a language model's held-out perplexity
PERPLEXITY_COLUMN = "perplexity"


def columns(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The table's columns: :data:`COLUMNS`, plus perplexity when a language model was measured."""
    return COLUMNS + ((PERPLEXITY_COLUMN,) if any(r.get("perplexity") is not None for r in rows) else ())


NOTES = (
    "Latency is the median of paired ratios to the input model in ONNX Runtime at a fixed thread count, the two "
    "interleaved call by call with a second copy of the input as an A/A control (lower is faster); 'too noisy' "
    "means the control could not tell the input from itself within ±10 %, so no ratio is given.",
    "Size is the storage the layers need at their stored precision (slimkit.analysis.profile), and for a model "
    "with weight-shared (clustered) layers the size of its Huffman-coded container file; unstructured "
    "sparsity saves bytes only in a sparse or compressed format and does not make dense kernels faster.",
)


def latency_runtime(rows: Sequence[dict[str, Any]]) -> str:
    """The name of the runtime the rows' latency ratios were measured in (ONNX Runtime unless a row says else)."""
    found = sorted({str(r["latency_runtime"]) for r in rows if r.get("latency_runtime")}) or [DEFAULT_RUNTIME]
    return " and ".join(RUNTIMES[name].display if name in RUNTIMES else name for name in found)


def notes(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """:data:`NOTES`, naming the runtime the rows' latency was measured in, and why a row has no latency when its
    runtime could not run it."""
    runtime = latency_runtime(rows)
    missing = tuple(f"No latency for {r.get('stage') or r.get('label') or 'a stage'}: {r['latency_error']}"
                    for r in rows if r.get("latency_error"))
    return tuple(note.replace("in ONNX Runtime", f"in {runtime}") for note in NOTES) + missing


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "kib":
        return f"{value / 1024:,.1f}"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "delta":
        return f"{100 * value:+.2f}"
    return str(value)


def format_latency(row: dict[str, Any]) -> str:
    """A row's latency ratio as printed: the number, "too noisy" when the A/A control refused the comparison, or
    "–" when none was measured (:func:`slimkit.analysis.format_ratio`, the rule every printer shares)."""
    return format_ratio(row.get("latency_ratio"), row.get("latency_status"))


def baseline_index(rows: Sequence[dict[str, Any]]) -> int:
    """The row accuracy changes are measured against: the last training stage's (a recipe that trains its input
    first compresses the trained model, not the untrained input), else the first row."""
    trained = [i for i, r in enumerate(rows) if r.get("name") == "train"]
    return trained[-1] if trained else 0


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The report's comparison table as strings; Δ acc is in percentage points against :func:`baseline_index`'s
    row (rows before it, e.g. an untrained input, show none)."""
    start = baseline_index(rows)
    base = rows[start].get("accuracy") if rows else None
    out = []
    for i, r in enumerate(rows):
        acc = r.get("accuracy")
        delta = acc - base if acc is not None and base is not None and i >= start else None
        out.append([str(r.get("label") or r.get("stage")), _fmt(r.get("params"), "int"), _fmt(r.get("macs"), "int"),
                    _fmt(r.get("bytes"), "kib"), format_latency(r), _fmt(r.get("latency_aa_ratio"), "ratio"),
                    _fmt(acc, "pct"), _fmt(delta, "delta")])
        if PERPLEXITY_COLUMN in columns(rows):
            out[-1].append(_fmt(r.get("perplexity"), "ratio"))
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines)


def _html_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns(rows))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                   for cells in table_rows(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
          "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
          "pre{background:#f6f6f6;padding:8px;overflow-x:auto}"
          ".subset{background:#fff4d6;border:1px solid #e6c35c;padding:6px 10px}")


def render_markdown(text: str) -> str:
    """Markdown → HTML with markdown-it (CommonMark; raw HTML in the text is escaped, not passed through)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def subset_note(metrics: dict[str, Any]) -> str:
    """A warning line for a run on subsets (``--quick``, or a recipe's ``train_samples`` / ``eval_samples``)."""
    data = (metrics.get("recipe") or {}).get("data") or {}
    parts = [f"{what} on the first {data[key]:,} samples" for key, what in
             (("train_samples", "trained"), ("eval_samples", "evaluated")) if data.get(key)]
    if metrics.get("quick"):
        parts.insert(0, "a --quick run")
    if not parts:
        return ""
    return ("Subset run: " + ", ".join(parts) + ". Its numbers show the method works; they are not the full "
            "run's (see BENCHMARKS.md).")


def write_report(out: str | os.PathLike, metrics: dict[str, Any], *,
                 profiles: dict[str, dict[str, Any]] | None = None, extra_markdown: str = "") -> dict[str, Path]:
    """Render plots into ``out/plots`` and write ``out/report.md`` and a self-contained ``out/report.html``.

    ``profiles`` may hold ``"before"`` and ``"after"`` profile payloads for the per-layer bar chart. Returns the
    written files by key (``report_md``, ``report_html``, ``plot_macs``, ...).
    """
    folder = Path(out)
    plots = folder / "plots"
    rows = list(metrics.get("stages", []))
    title = str(metrics.get("title") or "slimkit report")
    files: dict[str, Path] = {}
    images: list[tuple[str, Path]] = []
    runtime = latency_runtime(rows)
    for cost in COSTS:
        label = COSTS[cost].replace("ONNX Runtime", runtime)
        path = plot_tradeoff(rows, cost, plots / f"accuracy_vs_{cost}.png", title=f"{title}: test accuracy vs {label}",
                             xlabel=label)
        if path is not None:
            files[f"plot_{cost}"] = path
            images.append((f"Accuracy vs {label} (red: Pareto front)", path))
    if profiles and "before" in profiles and "after" in profiles:
        path = plot_layers(profiles["before"], profiles["after"], plots / "layers.png",
                           title=f"{title}: per-layer parameters and MACs, input vs final")
        if path is not None:
            files["plot_layers"] = path
            images.append(("Per-layer parameters and MACs, before and after", path))

    recipe = metrics.get("recipe")
    subset = subset_note(metrics)
    md = [f"# {title}", ""] + ([f"> {subset}", ""] if subset else []) + [markdown_table(rows), ""]
    md += [f"- {note}" for note in notes(rows)] + [""]
    if extra_markdown:
        md += [extra_markdown, ""]
    md += [f"![{caption}]({path.relative_to(folder).as_posix()})" for caption, path in images]
    if recipe:
        import json

        md += ["", "## Recipe (resolved)", "", "```json", json.dumps(recipe, indent=2), "```"]
    write_text_atomic(folder / "report.md", "\n".join(md) + "\n")
    files["report_md"] = folder / "report.md"

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if subset:
        parts.append(f"<p class='subset'>{html.escape(subset)}</p>")
    parts += [_html_table(rows), "<ul>"]
    parts += [f"<li>{html.escape(note)}</li>" for note in notes(rows)] + ["</ul>"]
    if extra_markdown:
        parts.append(render_markdown(extra_markdown))
    for caption, path in images:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if recipe:
        import json

        parts.append(f"<h2>Recipe (resolved)</h2><pre>{html.escape(json.dumps(recipe, indent=2))}</pre>")
    parts.append("</body></html>")
    write_text_atomic(folder / "report.html", "".join(parts) + "\n")
    files["report_html"] = folder / "report.html"
    return files
