import base64
import json
import re

from PIL import Image

from slimkit.report import markdown_table, pareto_front, plot_layers, plot_tradeoff, table_rows, write_report

ROWS = [
    {"stage": "00-input", "params": 1000, "macs": 5000, "bytes": 4000, "accuracy": 0.99, "latency_ratio": 1.0},
    {"stage": "01-prune", "params": 500, "macs": 2000, "bytes": 2000, "accuracy": 0.985, "latency_ratio": 0.6},
    {"stage": "02-bad", "params": 800, "macs": 4000, "bytes": 3000, "accuracy": 0.97, "latency_ratio": 0.9},
    {"stage": "02-noisy", "params": 800, "macs": 4000, "bytes": 3000, "accuracy": 0.96, "latency_ratio": None,
     "latency_status": "too noisy", "latency_aa_ratio": 1.31},
    {"stage": "03-tiny", "params": 100, "macs": 500, "bytes": 100, "accuracy": 0.90, "latency_ratio": None},
]
PROFILE_BEFORE = {"rows": [{"name": "fc1", "params": 900, "macs": 900}, {"name": "fc2", "params": 100, "macs": 100}]}
PROFILE_AFTER = {"rows": [{"name": "fc1.0", "params": 300, "macs": 300}, {"name": "fc2", "params": 50, "macs": 50}]}


def test_pareto_front_keeps_only_undominated_points_sorted_by_cost():
    assert pareto_front(ROWS, "macs") == [4, 1, 0]  # 02-bad costs more than 01-prune and is less accurate
    assert pareto_front(ROWS, "latency_ratio") == [1, 0]  # 03-tiny has no latency and is ignored
    assert pareto_front([{"macs": 1, "accuracy": 0.5}, {"macs": 1, "accuracy": 0.5}], "macs") == [0, 1]
    assert pareto_front([], "macs") == []


def test_table_rows_format_numbers_and_accuracy_deltas():
    rows = table_rows(ROWS)
    assert rows[1] == ["01-prune", "500", "2,000", "2.0", "0.60", "–", "98.50%", "-0.50"]
    assert rows[3][4:6] == ["too noisy", "1.31"]  # a failed A/A control: no ratio, the control shown
    assert rows[4][4] == "–"
    assert markdown_table(ROWS).splitlines()[0].startswith("| stage | params | MACs")


def _is_png(path):
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


def test_plots_are_valid_pngs(tmp_path):
    for cost in ("macs", "bytes", "latency_ratio"):
        path = plot_tradeoff(ROWS, cost, tmp_path / f"{cost}.png")
        assert _is_png(path) and path.stat().st_size > 5000
    layers = plot_layers(PROFILE_BEFORE, PROFILE_AFTER, tmp_path / "layers.png")
    assert _is_png(layers)
    with Image.open(layers) as image:
        assert image.size[0] > 400 and image.size[1] > 400
    assert plot_tradeoff([{"stage": "x"}], "macs", tmp_path / "none.png") is None
    assert plot_layers({"rows": []}, {"rows": []}, tmp_path / "none2.png") is None


def test_write_report_makes_markdown_and_a_self_contained_html(tmp_path):
    metrics = {"title": "demo <run>", "stages": ROWS, "recipe": {"version": 1}}
    files = write_report(tmp_path, metrics, profiles={"before": PROFILE_BEFORE, "after": PROFILE_AFTER})
    assert set(files) == {"plot_macs", "plot_bytes", "plot_latency_ratio", "plot_layers", "report_md", "report_html"}
    md = files["report_md"].read_text()
    assert "| 01-prune | 500 | 2,000 |" in md and "![" in md and "plots/accuracy_vs_macs.png" in md
    html = files["report_html"].read_text()
    assert "demo &lt;run&gt;" in html  # titles are escaped
    # self-contained: every image is inline base64 PNG and nothing is fetched from elsewhere
    images = re.findall(r"<img [^>]*src='([^']+)'", html)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=['\"](?!data:)", html)
    assert json.loads(json.dumps(metrics)) == metrics  # the input is left untouched


def test_a_language_model_row_adds_a_perplexity_column():
    from slimkit.report import COLUMNS, columns

    image_rows = [{"stage": "a", "params": 10, "accuracy": 0.9}]
    assert columns(image_rows) == COLUMNS and len(table_rows(image_rows)[0]) == len(COLUMNS)
    lm_rows = [{"stage": "train", "params": 10, "accuracy": 0.5, "perplexity": 7.25},
               {"stage": "prune", "params": 8, "accuracy": 0.4, "perplexity": None}]
    assert columns(lm_rows)[-1] == "perplexity"
    assert [row[-1] for row in table_rows(lm_rows)] == ["7.25", "–"]
    assert markdown_table(lm_rows).splitlines()[0].endswith("| perplexity |")
