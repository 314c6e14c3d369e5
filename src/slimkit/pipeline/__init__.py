"""slimkit.pipeline (see DESIGN.md)."""
