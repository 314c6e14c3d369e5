"""slimkit.share (see DESIGN.md)."""
