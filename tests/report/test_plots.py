"""Report plots: labels never overlap each other or cover a point; axes are titled in words."""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from slimkit.report import plot_tradeoff, write_report
from slimkit.report._plots import place_labels


def _boxes(texts, fig):
    renderer = FigureCanvasAgg(fig).get_renderer()
    return [t.get_window_extent(renderer) for t in texts]


def test_labels_of_crowded_points_do_not_overlap():
    # the demo's table: several variants share the baseline's MACs and nearly its accuracy
    xs = [2_293_000, 2_293_000, 2_293_000, 646_500, 646_500, 1_610_344, 789_000, 266_200]
    ys = [99.11, 99.12, 99.12, 99.01, 99.02, 99.09, 98.93, 98.46]
    labels = ["baseline", "quantize", "cluster", "prune", "hybrid", "decompose", "convert", "distill"]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax.scatter(xs, ys)
    ax.set_xscale("log")
    texts = place_labels(ax, xs, ys, labels)
    boxes = _boxes(texts, fig)
    assert len(texts) == len(labels)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_report_titles_axes_in_words_and_renders_markdown(tmp_path):
    rows = [{"label": "baseline", "macs": 100, "bytes": 400, "latency_ratio": 1.0, "accuracy": 0.99},
            {"label": "prune", "macs": 40, "bytes": 160, "latency_ratio": 0.5, "accuracy": 0.985}]
    assert plot_tradeoff(rows, "latency_ratio", tmp_path / "p.png") is not None
    files = write_report(tmp_path, {"title": "t", "stages": rows, "quick": True},
                         extra_markdown="- **prune**: ThiNet (run folder runs/prune)")
    page = files["report_html"].read_text()
    assert "<strong>prune</strong>" in page and "**prune**" not in page and "<pre>- **" not in page
    assert "Subset run: a --quick run" in page
    assert "latency_ratio" not in page.split("<h2>")[0].replace("accuracy_vs_latency_ratio", "")
