"""`bifusion prep`: raw ScanNet layout -> ESAM-compatible single-view, multi-view and scene sets."""
