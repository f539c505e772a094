"""Helpers shared by the tests and the benchmarks (never imported by the server).

``stack`` runs the real processes (broker, workers, gunicorn); ``tiny_models``
writes small random BERT/XLNet models with their tokenizers; ``reference``
holds Captum-based reference answers; ``reliability`` drives load and faults.
"""
