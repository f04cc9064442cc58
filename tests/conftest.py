"""Suite-wide settings: property tests run the same examples on every run (derandomized, no
example database), so a failure in CI reproduces locally; HYPOTHESIS_PROFILE=explore searches
with fresh randomness instead."""
from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
