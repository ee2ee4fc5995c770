"""Tabular benchmarks: tables of trained architectures that score a search for free
(NAS-Bench-201: `darts.benchmarks.nb201`)."""
