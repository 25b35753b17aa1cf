"""RT-DETRv2 (Lv et al., "RT-DETRv2: Improved Baseline with Bag-of-Freebies for Real-Time Detection Transformer",
arXiv:2407.17140): a backbone (PResNet), the hybrid encoder and the decoder, wired as the official ``RTDETR``
(lyuwenyu/RT-DETR, rtdetrv2_pytorch) so that its checkpoints load with strict=True (keys ``backbone.*``,
``decoder.*``, ``encoder.*``).

Images are never padded (the data pipeline resizes every image to one size) and not normalised (values in [0, 1]).
"""
import torch
from torch import Tensor, nn

from util.nested_tensor import NestedTensor


def stacked_images(samples: Tensor | list[Tensor] | NestedTensor) -> Tensor:
    """``[B, 3, H, W]`` from a batch tensor, a list of ``[3, H, W]`` images of one size, or a NestedTensor (its
    ``tensors``; the mask is ignored: RT-DETR's images fill the batch)."""
    if isinstance(samples, NestedTensor):
        return samples.tensors
    if isinstance(samples, (list, tuple)):
        sizes = {tuple(image.shape) for image in samples}
        if len(sizes) != 1:
            raise ValueError(f"RTDETR: the images of a batch must have one size (they are not padded), got "
                             f"{sorted(sizes)}")
        return torch.stack(list(samples))
    return samples


class RTDETR(nn.Module):
    """``decoder(encoder(backbone(images)), targets)``.

    backbone: images ``[B, 3, H, W]`` -> a list of maps (PResNet, the stages of ``return_idx``); encoder: that list ->
    a list of ``[B, hidden_dim, H_l, W_l]`` (HybridEncoder); decoder: that list and the targets -> the output dict
    (RTDETRTransformerv2). The attributes are created in the official order (backbone, decoder, encoder), which is
    the state dict's.
    """

    takes_targets = True  # forward(samples, targets): the training loop passes the targets (denoising queries)

    def __init__(self, backbone: nn.Module, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.encoder = encoder

    def forward(self, samples: Tensor | list[Tensor] | NestedTensor, targets: list[dict] | None = None) -> dict:
        """samples: images ``[B, 3, H, W]`` in [0, 1] (a tensor, a list of ``[3, H, W]`` or a NestedTensor);
        targets (training with denoising): per image ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]`` (normalised
        cxcywh). Returns the decoder's dict (``pred_logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]`` and, in
        training, ``aux_outputs``, ``enc_aux_outputs``, ``enc_meta``, ``dn_aux_outputs``, ``dn_meta``)."""
        return self.decoder(self.encoder(self.backbone(stacked_images(samples))), targets)

    def deploy(self) -> "RTDETR":
        """Evaluation mode, then every RepVGG block folded into one convolution (``convert_to_deploy``), as the
        official export does; returns the model."""
        self.eval()
        for module in self.modules():
            if hasattr(module, "convert_to_deploy"):
                module.convert_to_deploy()
        return self
