"""The ground every stage stands on: the request and candidate types, the stage protocols, splits and
evaluation sets, metrics, the config base, artifacts and the device helpers.

channels/, rankers/ and rerank/ import from pipeline only through this package; nothing here imports
a stage or the orchestration above it (workflow, registry, serving, evaluation reports).
tests/test_import_rules.py enforces both.
"""
