"""Scoring as the organisers do: challenge metrics of one case, pairing of prediction and
truth folders, per-diagnosis summaries and tables, clinical metadata."""
