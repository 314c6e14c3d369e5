"""slimkit benchmarks: each ``bench_<topic>.py`` measures one table; ``python -m benchmarks.run`` runs them all."""
