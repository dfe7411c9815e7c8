"""The autoPET FDG diagnosis groups: what the phantoms draw, what the clinical metadata
names and what the evaluation summarises per group. Imports nothing of petseg."""

from __future__ import annotations

DIAGNOSES: tuple[str, ...] = ("LYMPHOMA", "LUNG_CANCER", "MELANOMA", "NEGATIVE")
"""The diagnosis groups, in the order the summary tables list them."""

UNKNOWN = "UNKNOWN"
"""Diagnosis group of a case no metadata row matches clearly."""
