"""A tiny model on scikit-learn's digits keeps recipe runs to a second or two."""

import textwrap

import pytest

TINY_MODEL = textwrap.dedent('''
    from torch import nn

    def tiny(num_classes=10, hidden=24):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
''')


def tiny_recipe(stages: str, *, latency: bool = False, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        version: 1
        name: tiny
        model:
          spec: tiny.py:tiny
        data: {{name: digits, batch_size: 64}}
        evaluation: {{latency: {str(latency).lower()}, repeats: 3, warmup: 1, threads: 1}}
        """) + extra + "stages:\n" + textwrap.indent(textwrap.dedent(stages), "  ")


@pytest.fixture
def tiny_dir(tmp_path):
    (tmp_path / "tiny.py").write_text(TINY_MODEL)
    return tmp_path
