"""Deformable DETR (``--meta_arch deformable_detr``): the deformable transformer (with iterative box refinement and
two-stage variants) over multi-scale deformable attention (models/layers/), the focal-loss criterion, top-k
post-processing. Parameter names are the official ones, so its checkpoints load with strict=True."""
from models.deformable_detr.build import TOPICS, UNUSED_SHARED_FLAGS, add_flags, build, check_flags, param_groups
from models.deformable_detr.criterion import DeformableCriterion
from models.deformable_detr.deformable_detr import DeformableDETR
from models.deformable_detr.deformable_transformer import DeformableTransformer
from models.registry import Architecture

ARCHITECTURE = Architecture(name="deformable_detr", build=build, add_flags=add_flags, check_flags=check_flags,
                            param_groups=param_groups, topics=TOPICS,
                            unused_shared_flags=UNUSED_SHARED_FLAGS)

__all__ = ["ARCHITECTURE", "DeformableCriterion", "DeformableDETR", "DeformableTransformer", "build"]
