"""RT-DETRv2 (``--meta_arch rtdetrv2``; Lv et al., "RT-DETRv2: Improved Baseline with Bag-of-Freebies for Real-Time
Detection Transformer", arXiv:2407.17140, on RT-DETR, Zhao et al., CVPR 2024): PResNet (ResNet-vd), the hybrid
encoder (models/layers/hybrid_encoder.py), the RT-DETRv2 decoder with per-level sampling points and contrastive
denoising, the varifocal criterion and the top-k post-processor. State-dict names are the official ones
(lyuwenyu/RT-DETR ``rtdetrv2_pytorch``), so its release checkpoints load with strict=True."""
from models.registry import Architecture
from models.rtdetrv2.build import TOPICS, UNUSED_SHARED_FLAGS, add_flags, build, check_flags, param_groups
from models.rtdetrv2.decoder import RTDETRTransformerv2
from models.rtdetrv2.presnet import PResNet
from models.rtdetrv2.rtdetrv2 import RTDETR

ARCHITECTURE = Architecture(name="rtdetrv2", build=build, add_flags=add_flags, check_flags=check_flags,
                            param_groups=param_groups, topics=TOPICS, unused_shared_flags=UNUSED_SHARED_FLAGS,
                            data_pipeline="rtdetr")

__all__ = ["ARCHITECTURE", "PResNet", "RTDETR", "RTDETRTransformerv2", "build"]
