"""Reader studies: an append-only store of BI-RADS reads and their statistics.

:mod:`buscad.reader.store` records a before/after (without AI, then with AI)
reader study in SQLite; :mod:`buscad.reader.analysis` turns the exported reads
into per-reader metrics, paired tests and a multi-reader multi-case analysis.
"""
