"""Benchmarks: library code behind ``imutune bench ...`` and ``benchmarks/*.py``.

Each benchmark writes ``<name>.json``, ``<name>.md`` and PNG plots through
:func:`imutune.bench.report.write_report`.
"""
