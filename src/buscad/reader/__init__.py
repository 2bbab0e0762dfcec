"""Reader studies: an append-only store of BI-RADS reads and their statistics.

:mod:`buscad.reader.store` records a before/after (without AI, then with AI)
reader study in SQLite; :mod:`buscad.reader.analysis` turns the exported reads
into per-reader metrics, paired tests and a multi-reader multi-case analysis.

Owns: the reader-study store (tokens, case orders, append-only reads), the reader analysis
and report, and ``buscad reader``. May import: evaluate (DeLong, McNemar, MRMC), data
(manifest, BI-RADS ranks), report (the HTML template), errors, utils; never serve, study or
the models.
"""
