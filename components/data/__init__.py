"""ScanNet label tables shipped with the package (copied from the ScanNet benchmark; the product never reads ../shared)."""
