"""slimkit.graph (see DESIGN.md)."""
