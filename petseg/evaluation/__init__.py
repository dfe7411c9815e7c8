"""Scoring as the organisers do: challenge metrics of one case, pairing of prediction and
truth folders, per-diagnosis summaries and tables, clinical metadata, and the interactive
protocols (autoPET IV clicks, autoPET V scribbles) with their scores and curves."""
