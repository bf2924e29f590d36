"""Benchmarks and screenshot makers: run by hand or by `make bench`, never imported by compute or dashboard."""
