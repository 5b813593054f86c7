"""`bifusion train`: the training stages (3D SV now; MV and BiFusion reuse the same loop)."""
