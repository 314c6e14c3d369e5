"""Reports of compression runs: comparison tables, Pareto-front plots, per-layer charts, Markdown and HTML."""

from slimkit.report._pareto import pareto_front
from slimkit.report._plots import COSTS, plot_layers, plot_tradeoff
from slimkit.report._render import (
    COLUMNS,
    NOTES,
    baseline_index,
    columns,
    format_latency,
    latency_runtime,
    markdown_table,
    notes,
    table_rows,
    write_report,
)

__all__ = [
    "COLUMNS",
    "COSTS",
    "NOTES",
    "baseline_index",
    "columns",
    "format_latency",
    "latency_runtime",
    "markdown_table",
    "notes",
    "pareto_front",
    "plot_layers",
    "plot_tradeoff",
    "table_rows",
    "write_report",
]
