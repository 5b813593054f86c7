"""The model stages `bifusion train --stage` knows; each has `configs/experiments/<stage>.yaml`."""

TRAIN_STAGES = ("3d_sv",)
