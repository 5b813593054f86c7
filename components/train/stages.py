"""The model stages `bifusion train --stage` knows; each has `configs/experiments/<stage>.yaml`."""

TRAIN_STAGES = ("3d_sv", "3d_mv", "3dtsa_sv", "3dtsa_mv", "bifusion_sv", "bifusion_mv")
