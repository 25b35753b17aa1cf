"""RT-DETRv2 (Lv et al., "RT-DETRv2: Improved Baseline with Bag-of-Freebies for Real-Time Detection Transformer",
arXiv:2407.17140): a backbone (PResNet), the hybrid encoder and the decoder, wired as the official ``RTDETR``
(lyuwenyu/RT-DETR, rtdetrv2_pytorch) so that its checkpoints load with strict=True (keys ``backbone.*``,
``decoder.*``, ``encoder.*``).

Images are never padded (the data pipeline resizes every image to one size) and not normalised (values in [0, 1]).
"""
from models.layers.real_time_detector import RealTimeDetector


class RTDETR(RealTimeDetector):
    """``decoder(encoder(backbone(images)), targets)`` (:class:`~models.layers.real_time_detector.RealTimeDetector`).

    backbone: images ``[B, 3, H, W]`` -> a list of maps (PResNet, the stages of ``return_idx``); encoder: that list ->
    a list of ``[B, hidden_dim, H_l, W_l]`` (HybridEncoder); decoder: that list and the targets -> the output dict
    (RTDETRTransformerv2: ``pred_logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]`` and, in training,
    ``aux_outputs``, ``enc_aux_outputs``, ``enc_meta``, ``dn_aux_outputs``, ``dn_meta``). The attributes are created
    in the official order (backbone, decoder, encoder), which is the state dict's. :meth:`deploy` folds every RepVGG
    block into one convolution, as the official export does.
    """
