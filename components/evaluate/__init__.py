"""Evaluation metrics (pure numpy): benchmark label spaces, ScanNet instance AP, semantic mIoU, benchmark export.

- `benchmark_classes`: raw ScanNet ids (the tsv `id` column, stored per point) -> evaluation classes.
- `instance_ap`: the official ScanNet `evaluate_semantic_instance.py` AP / AP50 / AP25, accumulated scene by scene.
- `semantic_iou`: confusion matrix and per-class IoU as in the official `evaluate_semantic_label.py`.
- `benchmark_export`: the ScanNet benchmark's instance submission format and its ground-truth format.
"""
