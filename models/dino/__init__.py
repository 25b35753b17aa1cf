"""DINO (``--meta_arch dino``): the official model (4- and 5-scale), its transformer and criterion; it shares the
deformable encoder, denoising and query selection (models/layers/), the focal matcher and the top-k post-processor
with the family."""
from models.dino.build import TOPICS, UNUSED_SHARED_FLAGS, add_flags, build, check_flags, param_groups
from models.dino.criterion import DINOCriterion
from models.dino.dino import DINO
from models.dino.transformer import DINOTransformer
from models.registry import Architecture

ARCHITECTURE = Architecture(name="dino", build=build, add_flags=add_flags, check_flags=check_flags,
                            param_groups=param_groups, topics=TOPICS,
                            unused_shared_flags=UNUSED_SHARED_FLAGS)

__all__ = ["ARCHITECTURE", "DINO", "DINOCriterion", "DINOTransformer", "build"]
