"""Sample-quality metrics: FID with the standard Inception weights (``fid``) and an offline score for the 8x8
digits (``digits_score``). Import the submodules directly; this package imports nothing heavy."""
