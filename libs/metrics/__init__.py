"""Sample-quality metrics: FID with the standard Inception weights (``fid``), sFID, the Inception Score, precision and
recall, KID and FD-DINOv2 (``metric_set`` computes the set papers report from one pass; docs/metrics.md), and an
offline score for the 8x8 digits (``digits_score``). Import the submodules directly; this package imports nothing
heavy."""
