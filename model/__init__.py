"""BiFusion network code: pure PyTorch modules, losses and post-processing (no I/O, no orchestration)."""
