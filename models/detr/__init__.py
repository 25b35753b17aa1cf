"""DETR (``--meta_arch detr``): the official model, its set criterion and post-processing, and the mask head.

The official import paths ``models.detr.DETR``, ``SetCriterion``, ``PostProcess`` and ``MLP`` hold.
"""
from models.criterion import SetCriterion
from models.detr.build import add_flags, build, check_flags, param_groups
from models.detr.detr import DETR
from models.mlp import MLP
from models.postprocess import PostProcess
from models.registry import Architecture

# shared flags DETR does not read (multi-scale deformable attention, the sigmoid classifiers' focal loss)
UNUSED_SHARED_FLAGS = ("num_feature_levels", "enc_n_points", "dec_n_points", "cls_loss_coef", "focal_alpha")

ARCHITECTURE = Architecture(name="detr", build=build, add_flags=add_flags, check_flags=check_flags,
                            param_groups=param_groups, unused_shared_flags=UNUSED_SHARED_FLAGS)

__all__ = ["ARCHITECTURE", "DETR", "MLP", "PostProcess", "SetCriterion", "build"]
