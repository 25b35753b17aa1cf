"""``--compile``: the model through ``torch.compile`` with dynamic shapes (DETR's images, hence its feature maps and
token counts, change size from batch to batch), or eager with one message where that cannot work.

Where compilation cannot work is checked first (no TorchDynamo for this Python, no C++ compiler for CPU code, no
Triton or too old a GPU for CUDA code); a compilation that fails anyway in the first forward pass is reported once
and the run continues eager. The compiled module shares the model's parameters: checkpoints, the optimiser and the
EMA keep using the model itself.
"""
import shutil

import torch
import torch._dynamo
from torch import nn


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work on ``device`` here, or None."""
    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python version"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) for CPU code"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed (GPU code needs it)"
        if torch.cuda.get_device_capability(device) < (7, 0):
            return f"{torch.cuda.get_device_name(device)} is older than compute capability 7.0 (Triton needs 7.0)"
    return None


class CompiledWithFallback(nn.Module):
    """Calls the compiled ``model``; if compiling fails, says so once and calls ``model`` eager from then on.

    ``train()``/``eval()`` and ``parameters()`` reach the model itself; attributes not found here are looked up
    on it (``takes_targets``, ``backbone`` ...).
    """

    def __init__(self, model: nn.Module, compiled: nn.Module):
        super().__init__()
        self.model = model
        self.compiled = compiled
        self.fell_back = False

    def forward(self, *args, **kwargs):
        if not self.fell_back:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only compiler failures are caught, others re-raised
                if not self.fall_back(exc):
                    raise
        return self.model(*args, **kwargs)

    def fall_back(self, exc: Exception) -> bool:
        """If ``exc`` is a compiler failure (of the forward pass, or of the backward pass, which is compiled at the
        first ``backward()``: util/train_step.py calls this then), say so once and run eager from now on; returns
        whether it was one."""
        if not _is_compiler_failure(exc):
            return False
        self.fell_back = True
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"--compile: compiling the model failed ({type(exc).__name__}: {first_line[:200]}); continuing eager",
              flush=True)
        return True

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)


def _is_compiler_failure(exc: Exception) -> bool:
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(exc, TorchDynamoException) or type(exc).__module__.startswith(("torch._inductor",
                                                                                        "torch._dynamo"))


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` compiled (dynamic shapes) with the eager fallback, or ``model`` itself with one message saying why
    it cannot be compiled here."""
    problem = compile_problem(device)
    if problem is not None:
        print(f"--compile: {problem}; running eager", flush=True)
        return model
    return CompiledWithFallback(model, torch.compile(model, dynamic=True))
