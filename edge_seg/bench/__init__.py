"""Benchmarks for dev kits: one frame through every stage, bare invoke, the real loop, message sizes, the report."""
