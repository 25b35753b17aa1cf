"""DETR (``--meta_arch detr``): the official model, its set criterion and post-processing, and the mask head.

The official import paths ``models.detr.DETR``, ``SetCriterion``, ``PostProcess`` and ``MLP`` hold.
"""
from models.criterion import SetCriterion
from models.detr.build import TOPICS, UNUSED_SHARED_FLAGS, add_flags, build, check_flags, param_groups
from models.detr.detr import DETR
from models.mlp import MLP
from models.postprocess import PostProcess
from models.registry import Architecture

ARCHITECTURE = Architecture(name="detr", build=build, add_flags=add_flags, check_flags=check_flags,
                            param_groups=param_groups, topics=TOPICS,
                            unused_shared_flags=UNUSED_SHARED_FLAGS)

__all__ = ["ARCHITECTURE", "DETR", "MLP", "PostProcess", "SetCriterion", "build"]
