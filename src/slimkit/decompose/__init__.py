"""slimkit.decompose (see DESIGN.md)."""
