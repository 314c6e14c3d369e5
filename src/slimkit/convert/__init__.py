"""slimkit.convert (see DESIGN.md)."""
