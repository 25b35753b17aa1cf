"""DINO (``--meta_arch dino``): the official model (4- and 5-scale), its criterion, matcher and post-processing."""
from models.dino.build import add_flags, build, check_flags, param_groups
from models.dino.criterion import DINOCriterion
from models.dino.dino import DINO
from models.dino.matcher import FocalHungarianMatcher
from models.dino.postprocess import PostProcess
from models.registry import Architecture

ARCHITECTURE = Architecture(name="dino", build=build, add_flags=add_flags, check_flags=check_flags,
                            param_groups=param_groups)

__all__ = ["ARCHITECTURE", "DINO", "DINOCriterion", "FocalHungarianMatcher", "PostProcess", "build"]
