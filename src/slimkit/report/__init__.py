"""slimkit.report (see DESIGN.md)."""
