"""fastmp benchmarks: ``python -m benchmarks.run`` (see run.py), ``benchmarks/plot.py``."""
