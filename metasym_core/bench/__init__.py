"""Benchmarks behind `metasym bench <what>`: each prints a table, updates
docs/benchmarks.md and can print one JSON object of figures with units."""
