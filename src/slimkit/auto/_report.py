"""The Pareto report of an auto run: every candidate tried and the references (the input model, int8 alone), with
validation accuracy against MACs, deployed bytes and measured latency (``slimkit.report``'s plots), the chosen
candidate and why, and the search's log. ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from slimkit._io import write_text_atomic


def report_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per point of the report, in the shape ``slimkit.report`` plots (``valid_accuracy``, ``macs``,
    ``bytes``, ``latency_ratio``)."""
    base = result["base"]
    rows = [{"label": "input", "valid_accuracy": base["accuracy"], "macs": base["macs"], "bytes": base["bytes"],
             "params": base["params"], "latency_ratio": 1.0, "latency_status": "ok", "format": "onnx",
             "summary": "the input model, fp32 ONNX"}]
    int8 = base.get("int8_reference")
    if int8:
        latency = int8.get("latency") or {}
        rows.append({"label": "int8 alone", "valid_accuracy": int8["accuracy"], "macs": base["macs"],
                     "bytes": int8["bytes"], "params": base["params"], "latency_ratio": latency.get("ratio"),
                     "latency_status": latency.get("status"), "latency_aa_ratio": latency.get("aa"),
                     "format": "int8", "summary": "every layer int8 (PTQ), nothing else"})
    for row in result["candidates"]:
        latency = row.get("latency") or {}
        rows.append({"label": row["label"], "valid_accuracy": row["accuracy"], "macs": row["macs"],
                     "bytes": row["bytes"], "params": row["params"], "latency_ratio": latency.get("ratio"),
                     "latency_status": latency.get("status"), "latency_aa_ratio": latency.get("aa"),
                     "format": row["format"], "summary": row["summary"], "outcome": row["outcome"]})
    return rows


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "int":
        return f"{int(value):,}"
    return str(value)


def markdown(result: dict[str, Any], rows: list[dict[str, Any]], title: str) -> str:
    from slimkit.analysis import format_ratio

    base = result["base"]
    chosen = result.get("chosen")
    lines = [f"# {title}", "",
             f"Budget: `{result['budget']}`, max drop {result['max_drop']:g} points of validation accuracy"
             + (f", at least {result['min_accuracy']:g}%" if result.get("min_accuracy") is not None else "") + ". "
             f"Status: **{result['status']}** (search stopped: {result['stop']}).", ""]
    if chosen is not None:
        lines += [f"Chosen: candidate {chosen['index']:02d} — {chosen['summary']}; validation accuracy "
                  f"{100 * chosen['accuracy']:.2f}% (input {100 * base['accuracy']:.2f}%).", ""]
    lines += ["| point | format | params | MACs | deployed bytes | size × | MACs × | latency × (A/A) | valid acc | Δ "
              "points | budget | what |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lat = format_ratio(r.get("latency_ratio"), r.get("latency_status"))
        if r.get("latency_aa_ratio") is not None:
            lat += f" ({r['latency_aa_ratio']:.2f})"
        outcome = r.get("outcome")
        verdict = "" if outcome is None else ("met" if outcome["budget_met"] and outcome["verified"] else
                                              "unverified" if outcome["budget_met"] else "missed")
        lines.append(f"| {r['label']} | {r['format']} | {_cell(r['params'], 'int')} | {_cell(r['macs'], 'int')} | "
                     f"{_cell(r['bytes'], 'int')} | {_cell(r['bytes'] / base['bytes'], 'ratio')} | "
                     f"{_cell(r['macs'] / base['macs'], 'ratio')} | {lat} | {_cell(r['valid_accuracy'], 'pct')} | "
                     f"{100 * (r['valid_accuracy'] - base['accuracy']):+.2f} | {verdict} | {r['summary']} |")
    lines += ["", "Accuracy is on the validation split (every decision of the search is made on it; the test split is "
              "never read). Size is the deployed file (fp32 ONNX, int8 QDQ ONNX or the Huffman-coded container) as "
              "a ratio to the input's fp32 ONNX file; latency is ONNX Runtime, the candidate's deployed file against "
              "the input's, interleaved with an A/A control (\"too noisy\" when the control leaves [0.9, 1.1])."]
    return "\n".join(lines)


def write_auto_report(out: Path, result: dict[str, Any], title: str) -> dict[str, Path]:
    """Plots (validation accuracy vs MACs, bytes, latency, Pareto front in red), ``report.md``, ``report.html``."""
    from markdown_it import MarkdownIt

    from slimkit.report import COSTS, plot_tradeoff

    rows = report_rows(result)
    files: dict[str, Path] = {}
    images = []
    for cost in COSTS:
        path = plot_tradeoff(rows, cost, out / "plots" / f"accuracy_vs_{cost}.png", quality="valid_accuracy",
                             title=f"{title}: validation accuracy vs {COSTS[cost]}")
        if path is not None:
            files[f"plot_{cost}"] = path
            images.append((f"Validation accuracy vs {COSTS[cost]} (red: Pareto front)", path))
    text = markdown(result, rows, title)
    log = json.dumps(result.get("search", {}), indent=1)
    md = text + "\n\n" + "\n".join(f"![{c}]({p.relative_to(out).as_posix()})" for c, p in images)
    if result.get("recipe_text"):
        md += ("\n\n## The recipe that reproduces it (`slimkit compress recipe.yaml`)\n\n"
               f"```yaml\n{result['recipe_text']}```\n")
    write_text_atomic(out / "report.md", md + "\n")
    files["report_md"] = out / "report.md"
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    figures = "".join(f"<figure><img alt='{html.escape(c)}' src='data:image/png;base64,"
                      f"{base64.b64encode(p.read_bytes()).decode('ascii')}'><figcaption>{html.escape(c)}</figcaption>"
                      "</figure>" for c, p in images)
    recipe = f"<h2>Recipe</h2><pre>{html.escape(result['recipe_text'])}</pre>" if result.get("recipe_text") else ""
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}img{max-width:100%}"
             "pre{background:#f6f6f6;padding:8px;overflow-x:auto}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}"
            f"</style></head><body>{body}{figures}{recipe}<details><summary>search log</summary><pre>"
            f"{html.escape(log)}</pre></details></body></html>\n")
    write_text_atomic(out / "report.html", page)
    files["report_html"] = out / "report.html"
    return files
