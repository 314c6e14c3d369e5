"""Deep Compression (Han et al. 2016) on MNIST: prune → k-means weight sharing → Huffman, sizes from the file."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks._baselines import trained
from benchmarks._common import Section, markdown_table
from slimkit.data import create_data
from slimkit.share import ClusterConfig, DeepCompressionConfig, deep_compression

TITLE = "Deep Compression: pruning + weight sharing + Huffman coding (Han et al. 2016, Tables 2-3)"

#: (model, baseline epochs, paper row, per-layer kept fractions from the paper, bits)
RUNS = {
    "lenet300": dict(epochs=10, paper="1.64% → 1.58% error, 1070 KB → 27 KB (40×)",
                     sparsity={"layers.1": 0.92, "layers.3": 0.91, "layers.5": 0.74},
                     cluster=ClusterConfig(fc_bits=4), budget=dict(prune_epochs=8, cluster_epochs=3)),
    "lenet5": dict(epochs=10, paper="0.80% → 0.74% error, 1720 KB → 44 KB (39×)",
                   sparsity={"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81},
                   cluster=ClusterConfig(conv_bits=8, fc_bits=4, bits={"fc1": 3}),
                   budget=dict(prune_epochs=4, cluster_epochs=2)),
}
COMMON = dict(prune_iterations=3, lr=0.05, cluster_lr=0.005)
QUICK = dict(prune_epochs=1, cluster_epochs=1)


def run(quick: bool) -> Section:
    torch.set_num_threads(1)
    data = create_data("mnist", batch_size=128)
    parts, raw, summary_rows = [], {}, []
    for name, spec in RUNS.items():
        model = trained(name, spec["epochs"], data=data)
        budget = {**COMMON, **(QUICK if quick else spec["budget"])}
        config = DeepCompressionConfig(sparsity=spec["sparsity"], cluster=spec["cluster"], **budget)
        began = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = deep_compression(model, data, Path(tmp) / f"{name}.slim", config, spec=name)
        seconds = time.perf_counter() - began
        base, final = result.stages[0], result.stages[-1]
        summary_rows.append([name, f"{100 * (1 - base['accuracy']):.2f}%", f"{100 * (1 - final['accuracy']):.2f}%",
                             f"{base['bytes'] / 1000:.1f} KB", f"{final['bytes'] / 1000:.1f} KB",
                             f"{final['ratio']:.1f}×", spec["paper"]])
        parts += [f"### {name}", "", "Per stage (test set, 10,000 images):", "", result.stage_markdown(), "",
                  "Per layer (weights only, as the paper's table; the file also holds biases and a header): P = "
                  "pruning, Q = quantization by weight sharing, H = Huffman coding.", "", result.layer_markdown(), "",
                  f"Budget: {budget['prune_iterations']} pruning rounds × {budget['prune_epochs']} epochs, "
                  f"{budget['cluster_epochs']} epochs of centroid fine-tuning.", "",
                  f"File: {final['bytes']:,} bytes, of which header {result.container.header_bytes:,} B; "
                  f"pipeline wall time {seconds:.0f} s on one thread.", ""]
        raw[name] = {"stages": result.stages, "layers": result.layers, "file_bytes": result.container.file_bytes,
                     "config": repr(config), "seconds": seconds}
    head = markdown_table(["model", "baseline error", "compressed error", "dense size", "container file", "ratio",
                           "paper (Han et al. 2016)"], summary_rows)
    notes = [
        "",
        f"Method: iterative magnitude pruning in {COMMON['prune_iterations']} rounds (kept fraction shrinks "
        "geometrically to the paper's per-layer percentages) with fine-tuning after each round (SGD Nesterov, "
        f"peak lr {COMMON['lr']}, one-cycle cosine), then k-means with linear centroid init and centroid "
        f"fine-tuning (peak lr {COMMON['cluster_lr']}); epochs per model below. "
        "Relative sparse indices are 5 bits for fc and 8 bits for conv layers (Han et al. 2016, Sec. 2), Huffman-"
        "coded together with the cluster indices. fc layers use 4-bit cluster indices here (LeNet-5 fc1: 3 bits; the "
        "paper used 5-6): "
        "our ratio is measured from the whole container file, biases (float32) and header included, where the "
        "paper's table counts weights only.",
        "",
        "The baselines are our own 10-epoch models (`trained(name, 10)`), so the errors to compare are ours before "
        "and after, not the paper's absolute numbers. Unstructured sparsity saves bytes, not dense-kernel time: the "
        "finalized model runs the same dense GEMMs, so no latency gain is claimed. The machine is shared with other "
        "jobs; wall times are indicative only.",
    ]
    markdown = head + "\n" + "\n".join(notes) + "\n\n" + "\n".join(parts)
    return Section(topic="deep_compression", title=TITLE, markdown=markdown, data=raw)
