"""The official import path ``models.segmentation`` (DETR's mask head and panoptic post-processing), re-exported
from models/detr/segmentation.py, which owns them."""
from models.detr.segmentation import (
    DETRsegm,
    MaskHeadSmallConv,
    MHAttentionMap,
    PostProcessPanoptic,
    PostProcessSegm,
)
from models.losses import dice_loss, sigmoid_focal_loss

__all__ = ["DETRsegm", "MHAttentionMap", "MaskHeadSmallConv", "PostProcessPanoptic", "PostProcessSegm", "dice_loss",
           "sigmoid_focal_loss"]
