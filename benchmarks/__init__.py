"""Benchmarks: scripts that print a table and write JSON under benchmarks/results/. Run each from the checkout
as a module, e.g. `python -m benchmarks.sp` (README.md in this folder lists them with their measured results)."""
