"""slimkit.distill (see DESIGN.md)."""
