"""D-FINE (Peng et al., "D-FINE: Redefine Regression Task of DETRs as Fine-grained Distribution Refinement", ICLR 2025,
arXiv:2410.13842): a backbone (HGNetv2, models/hgnetv2.py), D-FINE's hybrid encoder
(models/layers/hybrid_encoder.py, :func:`dfine_hybrid_encoder`) and decoder (models/dfine/decoder.py), wired as the
official ``DFINE`` (Peterande/D-FINE ``src/zoo/dfine/dfine.py``) so that its checkpoints load with strict=True (keys
``backbone.*``, ``decoder.*``, ``encoder.*``).

Images are never padded (the data pipeline resizes every image to one size) and not normalised (values in [0, 1]).
"""
from models.layers.real_time_detector import RealTimeDetector


class DFINE(RealTimeDetector):
    """``decoder(encoder(backbone(images)), targets)`` (:class:`~models.layers.real_time_detector.RealTimeDetector`).

    backbone: images ``[B, 3, H, W]`` -> a list of maps (HGNetv2, the stages of ``return_idx``); encoder: that list
    -> a list of ``[B, hidden_dim, H_l, W_l]`` (HybridEncoder); decoder: that list and the targets -> the output dict
    (:meth:`DFINETransformer.forward`). The attributes are created in the official order (backbone, decoder,
    encoder), which is the state dict's. :meth:`deploy` folds every convolution + norm of the encoder into one
    convolution and cuts the decoder after ``eval_idx``, as the official export does.
    """
