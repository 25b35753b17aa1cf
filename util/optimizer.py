"""The optimiser and learning-rate schedule of a run."""
import torch


def build_optimizer(param_groups: list[dict], lr: float, weight_decay: float, sgd: bool = False
                    ) -> torch.optim.Optimizer:
    """AdamW (DETR), or SGD with momentum 0.9 (``--sgd``, Deformable DETR's option), over ``param_groups``."""
    if sgd:
        return torch.optim.SGD(param_groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, lr_drop: int, lr_drop_epochs: list[int] | None = None
                       ) -> torch.optim.lr_scheduler.LRScheduler:
    """Learning rate x0.1 every ``lr_drop`` epochs (DETR's StepLR), or x0.1 at each of ``lr_drop_epochs``."""
    if lr_drop_epochs:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, sorted(lr_drop_epochs))
    return torch.optim.lr_scheduler.StepLR(optimizer, lr_drop)
