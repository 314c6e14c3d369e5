"""slimkit.prune (see DESIGN.md)."""
