"""Deformable DETR (``--meta_arch deformable_detr``): multi-scale deformable attention, the deformable transformer
(with iterative box refinement and two-stage variants), the focal-loss criterion and matcher, top-k
post-processing. Parameter names are the official ones, so its checkpoints load with strict=True."""
from models.deformable_detr.build import add_flags, build, check_flags, param_groups
from models.deformable_detr.criterion import DeformableCriterion
from models.deformable_detr.deformable_detr import DeformableDETR
from models.deformable_detr.deformable_transformer import DeformableTransformer
from models.deformable_detr.matcher import FocalHungarianMatcher
from models.deformable_detr.ms_deform_attn import MSDeformAttn, ms_deform_attn_core
from models.deformable_detr.postprocess import PostProcess
from models.registry import Architecture

ARCHITECTURE = Architecture(name="deformable_detr", build=build, add_flags=add_flags, check_flags=check_flags,
                            param_groups=param_groups)

__all__ = ["ARCHITECTURE", "DeformableCriterion", "DeformableDETR", "DeformableTransformer", "FocalHungarianMatcher",
           "MSDeformAttn", "PostProcess", "build", "ms_deform_attn_core"]
