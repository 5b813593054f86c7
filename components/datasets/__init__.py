"""Training/evaluation data: prepared SV/MV sets (ours or ESAM's releases) -> augmented frames -> batches."""
