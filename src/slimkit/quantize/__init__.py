"""slimkit.quantize (see DESIGN.md)."""
