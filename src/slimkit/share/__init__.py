"""Parameter sharing (Han et al. 2016, Deep Compression): k-means weight clustering with trainable centroids,
canonical Huffman coding, relative sparse indices, the compressed container, and the Deep Compression pipeline."""

from slimkit.share._clustered import (
    ClusterConfig,
    ClusteredLayer,
    cluster_weights,
    clustered_layers,
    finalize_clusters,
    layers_to_cluster,
)
from slimkit.share._container import (
    ContainerSummary,
    LayerBytes,
    load_compressed,
    pruned_layout_bytes,
    resolve_spec,
    save_compressed,
    stream_bytes,
)
from slimkit.share._deep_compression import (
    DeepCompressionConfig,
    DeepCompressionResult,
    deep_compression,
    deep_compression_stages,
    layer_rates,
    save_deep_compression,
)
from slimkit.share._huffman import (
    canonical_codes,
    code_lengths,
    encode_lengths,
    fixed_width,
    huffman_decode,
    huffman_encode,
)
from slimkit.share._kmeans import CENTROID_INITS, kmeans_1d
from slimkit.share._relindex import relative_decode, relative_encode

__all__ = [
    "CENTROID_INITS",
    "ClusterConfig",
    "ClusteredLayer",
    "ContainerSummary",
    "DeepCompressionConfig",
    "DeepCompressionResult",
    "LayerBytes",
    "canonical_codes",
    "cluster_weights",
    "clustered_layers",
    "code_lengths",
    "deep_compression",
    "deep_compression_stages",
    "encode_lengths",
    "finalize_clusters",
    "fixed_width",
    "huffman_decode",
    "huffman_encode",
    "kmeans_1d",
    "layer_rates",
    "layers_to_cluster",
    "load_compressed",
    "pruned_layout_bytes",
    "relative_decode",
    "relative_encode",
    "resolve_spec",
    "save_compressed",
    "save_deep_compression",
    "stream_bytes",
]
