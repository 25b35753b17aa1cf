"""D-FINE (``--meta_arch dfine``; Peng et al., "D-FINE: Redefine Regression Task of DETRs as Fine-grained
Distribution Refinement", ICLR 2025, arXiv:2410.13842): HGNetv2 (models/hgnetv2.py), D-FINE's hybrid encoder
(models/layers/hybrid_encoder.py), the D-FINE decoder (fine-grained distribution refinement, the location-quality
head, denoising), its criterion (FGL and decoupled distillation between layers; DEIM's matchability-aware loss with
--use_mal) and the top-k post-processor. State-dict names are the official ones (Peterande/D-FINE), so its release
checkpoints load with strict=True."""
from models.dfine.build import TOPICS, UNUSED_SHARED_FLAGS, add_flags, build, check_flags, param_groups
from models.dfine.decoder import DFINETransformer
from models.dfine.dfine import DFINE
from models.registry import Architecture

ARCHITECTURE = Architecture(name="dfine", build=build, add_flags=add_flags, check_flags=check_flags,
                            param_groups=param_groups, topics=TOPICS, unused_shared_flags=UNUSED_SHARED_FLAGS,
                            data_pipeline="rtdetr")

__all__ = ["ARCHITECTURE", "DFINE", "DFINETransformer", "build"]
