"""zoo benchmark suite: ``python -m benchmarks`` runs every target and rewrites BENCHMARKS.md."""
