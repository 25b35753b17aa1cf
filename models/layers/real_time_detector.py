"""The detector of RT-DETR's descendants (RT-DETRv2, D-FINE, DEIM): ``decoder(encoder(backbone(images)), targets)``,
wired as the official ``RTDETR`` and ``DFINE`` classes are, so that their checkpoints load with strict=True (keys
``backbone.*``, ``decoder.*``, ``encoder.*``). Each architecture names its own subclass.

Images are never padded (the data pipeline resizes every image to one size) and not normalised (values in [0, 1]).
"""
import torch
from torch import Tensor, nn

from util.nested_tensor import NestedTensor


def stacked_images(samples: Tensor | list[Tensor] | NestedTensor, model_name: str = "RealTimeDetector") -> Tensor:
    """``[B, 3, H, W]`` from a batch tensor, a list of ``[3, H, W]`` images of one size, or a NestedTensor (its
    ``tensors``; the mask is ignored: these detectors' images fill the batch). ``model_name`` opens the error."""
    if isinstance(samples, NestedTensor):
        return samples.tensors
    if isinstance(samples, (list, tuple)):
        sizes = {tuple(image.shape) for image in samples}
        if len(sizes) != 1:
            raise ValueError(f"{model_name}: the images of a batch must have one size (they are not padded), got "
                             f"{sorted(sizes)}")
        return torch.stack(list(samples))
    return samples


class RealTimeDetector(nn.Module):
    """``decoder(encoder(backbone(images)), targets)``.

    backbone: images ``[B, 3, H, W]`` -> a list of maps; encoder: that list -> a list of ``[B, hidden_dim, H_l,
    W_l]`` (a HybridEncoder); decoder: that list and the targets -> the output dict. The attributes are created in
    the official order (backbone, decoder, encoder), which is the state dict's.
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
        cxcywh). Returns the decoder's dict (``pred_logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]``, and in
        training the decoder's intermediate outputs)."""
        images = stacked_images(samples, type(self).__name__)
        return self.decoder(self.encoder(self.backbone(images)), targets)

    def deploy(self) -> "RealTimeDetector":
        """Evaluation mode, then ``convert_to_deploy`` on every module that has it, as the official export does
        (RepVGG and convolution + norm blocks folded into one convolution, a decoder cut after its ``eval_idx``);
        returns the model."""
        self.eval()
        for module in list(self.modules()):  # a conversion may remove submodules
            if hasattr(module, "convert_to_deploy"):
                module.convert_to_deploy()
        return self
