"""What the reference generators share: importing an official clone beside this repository's packages, the compact
file format of saved reference values (tests read it with :func:`unpack`), and for RT-DETR's descendants the tiny
cases' inputs, probes and runs."""
import contextlib
import copy
import math
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

OFFICIAL_PACKAGES = ("models", "util", "datasets")


@contextlib.contextmanager
def official_packages(path: Path, packages: tuple[str, ...] = OFFICIAL_PACKAGES) -> Iterator[None]:
    """Inside, the top-level ``packages`` (DETR's layout: ``models``, ``util`` and ``datasets``) import from the
    official clone at ``path``; ours are set aside and put back on exit (the official modules stay usable through
    the references taken inside)."""
    def remove(packages):
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in packages}

    ours = remove(packages)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        remove(packages)
        sys.modules.update(ours)


def official_src(path: Path) -> contextlib.AbstractContextManager:
    """:func:`official_packages` for RT-DETR's and D-FINE's layout: ``import src...`` imports the official package
    (this repository has no ``src`` to set aside)."""
    return official_packages(path, ("src",))


@contextlib.contextmanager
def calflops_stand_in() -> Iterator[None]:
    """Inside, an empty ``calflops`` (the FLOP counter that the official D-FINE and DEIM import for their model
    statistics only, absent from this environment) unless one is installed."""
    stand_in = "calflops" not in sys.modules
    if stand_in:
        sys.modules["calflops"] = types.SimpleNamespace(calculate_flops=None)
    try:
        yield
    finally:
        if stand_in:
            del sys.modules["calflops"]


def stub_cuda_extension() -> None:
    """The official deformable attention imports its compiled CUDA module at import time; an empty stand-in lets the
    Python code import (the generators then route the sampling to the official pure-PyTorch function)."""
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))


def use_pytorch_sampling(ms_deform_attn_func: types.ModuleType) -> None:
    """Route the official ``MSDeformAttnFunction`` to the official ``ms_deform_attn_core_pytorch``."""
    def pytorch_sampling(value, shapes, level_start_index, locations, weights, im2col_step):
        return ms_deform_attn_func.ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    ms_deform_attn_func.MSDeformAttnFunction.apply = staticmethod(pytorch_sampling)


def pack(values: dict) -> dict:
    """One flat tensor per dtype plus (name, dtype, shape) entries and the non-tensor values: a small file (each
    saved tensor would cost about a kilobyte)."""
    flats: dict[str, list] = {}
    meta, plain = [], {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            flats.setdefault(dtype, []).append(value.flatten())
            meta.append((key, dtype, list(value.shape)))
        else:
            plain[key] = value
    return {"meta": meta, "plain": plain, "flat": {k: torch.cat(v) for k, v in flats.items()}}


def unpack(packed: dict) -> dict:
    """The values :func:`pack` packed."""
    values, offsets = dict(packed["plain"]), dict.fromkeys(packed["flat"], 0)
    for key, dtype, shape in packed["meta"]:
        n = math.prod(shape)
        values[key] = packed["flat"][dtype][offsets[dtype]: offsets[dtype] + n].reshape(shape)
        offsets[dtype] += n
    return values


# ---------------------------------------------------------------------------------------------------------------
# What the generators of RT-DETR's descendants (rtdetrv2.py, dfine.py) and their tests share: seeds, tiny inputs and
# targets, probes of outputs, perturbed weights, and one training step / evaluation / deploy of a module.

CASE_SEED = 0  # torch.manual_seed before building a case's module: ours draws the official initial weights
NOISE_SEED = 7  # torch.manual_seed before each training forward: the denoising noise (and any dropout)
POSTPROCESS_SEED = 13
PERTURB_SEED = 5
INPUT_SEED = 3
PROBE_SEED = 11
NUM_PROBES = 8
ORIG_SIZES_WH = [[640, 480], [333, 500]]  # (width, height) per image, as the official datasets give orig_size
NAME_LISTS = ("init_names", "grad_names")  # saved in the compressed ``names`` stream, where they repeat each other


def our_encoder_kwargs(official_kwargs: dict) -> dict:
    """Official HybridEncoder arguments -> ours (``nhead`` is ``num_heads``)."""
    return {("num_heads" if key == "nhead" else key): value for key, value in official_kwargs.items()}


def state_names(module: nn.Module) -> list[str]:
    """One ``name:d0,d1,...`` line per state-dict entry, in order (what a checkpoint holds)."""
    return [f"{k}:{','.join(map(str, v.shape))}" for k, v in module.state_dict().items()]


def state_names_and_shapes(module: nn.Module) -> list[str]:
    """:func:`state_names`, then ``~name:...`` per non-persistent buffer."""
    persistent = set(module.state_dict())
    return state_names(module) + [f"~{k}:{','.join(map(str, v.shape))}" for k, v in module.named_buffers()
                                  if k not in persistent]


@torch.no_grad()
def perturb(module: nn.Module, seed: int = PERTURB_SEED, scale: float = 0.05) -> None:
    """Move every floating-point state-dict entry off its initial value, in the order of the sorted names: running
    variances become ``0.5 + U(0, 1)``, everything else gets ``scale * N(0, 1)`` added (so BatchNorm statistics,
    frozen or not, take part)."""
    g = torch.Generator().manual_seed(seed)
    state = module.state_dict(keep_vars=True)
    for name in sorted(state):
        tensor = state[name]
        if not tensor.is_floating_point():
            continue
        if name.endswith("running_var"):
            tensor.data.copy_(0.5 + torch.rand(tensor.shape, generator=g))
        else:
            tensor.data.add_(scale * torch.randn(tensor.shape, generator=g))


def probe(tensor: torch.Tensor) -> torch.Tensor:
    """``NUM_PROBES`` fixed random projections of a tensor (float64, the same for every tensor of its size): a
    few numbers that change with any of its values."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    weights = torch.randn(NUM_PROBES, tensor.numel(), generator=g, dtype=torch.float64)
    return weights @ tensor.double().flatten()


def case_inputs(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Float64 inputs of a case, batch 2."""
    g = torch.Generator().manual_seed(INPUT_SEED)
    return [torch.randn(2, *shape, generator=g, dtype=torch.float64) for shape in shapes]


def case_targets(kind: str) -> list[dict]:
    """Hand-made float64 targets of a batch of two images (classes < 5): ``mixed``: three boxes of classes 1, 4, 0,
    then an image without targets; ``class_0``: the same boxes, all of class 0; ``empty``: no targets at all."""
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.25, 0.4, 0.3]], dtype=torch.float64)
    labels = {"mixed": [1, 4, 0], "class_0": [0, 0, 0], "empty": []}[kind]
    first = {"labels": torch.tensor(labels, dtype=torch.int64), "boxes": boxes[:len(labels)]}
    return [first, {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4, dtype=torch.float64)}]


def fingerprint(module: nn.Module) -> dict:
    """Two numbers per floating-point state-dict entry, its sum and its sum weighted by sin(1), sin(2), ...: they
    tell initial weights apart without saving them."""
    state = module.state_dict()
    names = [k for k, v in state.items() if v.is_floating_point()]
    rows = []
    for name in names:
        values = state[name].double().flatten()
        weights = torch.arange(1, values.numel() + 1, dtype=torch.float64).sin()
        rows.append(torch.stack([values.sum(), (values * weights).sum()]))
    return {"init": torch.stack(rows), "init_names": names}


def split_name_lists(part: str, cases: dict[str, dict]) -> dict[str, list[str]]:
    """Take the parameter-name lists out of the cases' values: ``{part}/{case}/{list}`` -> names."""
    return {f"{part}/{case}/{key}": values.pop(key) for case, values in cases.items() for key in NAME_LISTS
            if key in values}


def deploy_modules(module: nn.Module) -> None:
    """Evaluation mode, then ``convert_to_deploy`` of every module that has it (the official ``deploy()``)."""
    module.eval()
    for sub in list(module.modules()):  # a conversion may remove submodules
        if hasattr(sub, "convert_to_deploy"):
            sub.convert_to_deploy()


def run_module(module: nn.Module, inputs: list[torch.Tensor], call: Callable, deploy: bool,
               noise_seed: int | None = None) -> dict[str, torch.Tensor]:
    """Probes of the outputs of ``call(module, inputs)`` in training mode (after ``torch.manual_seed(noise_seed)``
    where given: dropout) and the gradient norms of their probe sum, in evaluation mode and, with ``deploy``, after
    :func:`deploy_modules`."""
    result = {}
    module.double().train()
    if noise_seed is not None:
        torch.manual_seed(noise_seed)
    outputs = call(module, inputs)
    result["train"] = torch.stack([probe(out) for out in outputs]).detach()
    module.zero_grad()
    sum(probe(out).sum() for out in outputs).backward()
    result["grad_norms"] = torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None])
    module.eval()
    with torch.no_grad():
        result["eval"] = torch.stack([probe(out) for out in call(module, inputs)])
        if deploy:
            deploy_modules(module)
            result["deploy"] = torch.stack([probe(out) for out in call(module, inputs)])
    return result


def output_tensors(outputs: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of an output dict, nested dicts and lists of dicts included, by path
    (``train/aux_outputs/0/pred_boxes``); a teacher's tensors (``teacher_*``), the same in every entry of a list,
    only in its first. ``enc_meta`` and ``dn_meta`` are left to :func:`meta_values`."""
    tensors = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}/{key}"] = value
        elif key.endswith("_meta"):  # see meta_values
            continue
        elif isinstance(value, dict):
            tensors.update(output_tensors(value, f"{prefix}/{key}"))
        elif isinstance(value, list):
            for i, entry in enumerate(value):
                entry = entry if i == 0 else {k: v for k, v in entry.items() if not k.startswith("teacher_")}
                tensors.update(output_tensors(entry, f"{prefix}/{key}/{i}"))
    return tensors


def meta_values(outputs: dict, prefix: str) -> dict:
    """``enc_meta`` and ``dn_meta`` of an output dict, by path (``dn_positive_idx`` None: the string "None")."""
    values = {}
    if "enc_meta" in outputs:
        values[f"{prefix}/enc_meta/class_agnostic"] = outputs["enc_meta"]["class_agnostic"]
    if "dn_meta" in outputs:
        meta = outputs["dn_meta"]
        if meta["dn_positive_idx"] is None:
            values[f"{prefix}/dn_meta/dn_positive_idx"] = "None"
        else:
            values.update({f"{prefix}/dn_meta/dn_positive_idx/{i}": idx
                           for i, idx in enumerate(meta["dn_positive_idx"])})
        values[f"{prefix}/dn_meta/dn_num_group"] = meta["dn_num_group"]
        values[f"{prefix}/dn_meta/dn_num_split"] = list(meta["dn_num_split"])
    return values


def matched_indices(matched) -> list:
    """A matcher's per-image (queries, targets) pairs (the official matchers return them in a dict)."""
    return matched["indices"] if isinstance(matched, dict) else matched


def index_values(indices: list, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{i}/{part}": tensor for i, pair in enumerate(indices)
            for part, tensor in zip(("queries", "targets"), pair)}


def last_layer_matches(criterion: nn.Module, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
    """The criterion's matcher's indices on the last layer, by path (``indices/{image}/queries``)."""
    return index_values(matched_indices(criterion.matcher(outputs, targets)), "indices")


def train_step(module: nn.Module, inputs, targets: list[dict], criterion: nn.Module,
               matches: Callable = last_layer_matches) -> dict:
    """Float64 training forward (noise from ``NOISE_SEED``): output probes and metadata, ``matches(criterion,
    outputs, targets)``, the criterion's terms, and the gradient norms (by parameter) of the terms plus the
    probes."""
    module.double().train()
    torch.manual_seed(NOISE_SEED)
    outputs = module(inputs, targets)
    tensors = output_tensors(outputs, "train")
    values = {name: probe(tensor).detach() for name, tensor in tensors.items()}
    values.update(meta_values(outputs, "train"))
    values.update(matches(criterion, outputs, targets))
    losses = criterion(outputs, targets)
    values.update({f"loss/{name}": loss.detach() for name, loss in losses.items()})
    module.zero_grad()
    (sum(losses.values()) + sum(probe(tensor).sum() for tensor in tensors.values())).backward()
    names = [name for name, param in module.named_parameters() if param.grad is not None]
    values["grad_names"] = names
    values["grad_norms"] = torch.stack([module.get_parameter(name).grad.norm() for name in names])
    return values


def eval_probes(module: nn.Module, inputs, prefix: str) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: probe(tensor) for name, tensor in output_tensors(module(inputs), prefix).items()}


def detections(result, prefix: str) -> dict[str, torch.Tensor]:
    """A post-processor's result (list of dicts, or the deploy tuple (labels, boxes, scores)) by path."""
    if isinstance(result, tuple):
        return {f"{prefix}/{key}": value for key, value in zip(("labels", "boxes", "scores"), result)}
    return {f"{prefix}/{i}/{key}": value for i, image in enumerate(result) for key, value in image.items()}


def run_decoder(decoder: nn.Module, criterion: nn.Module, shapes: list[tuple[int, ...]], kind: str,
                matches: Callable = last_layer_matches, deploy: bool = False) -> dict:
    """A decoder (official or ours, built from ``CASE_SEED``): its initial fingerprint, then perturbed, a training
    step (:func:`train_step`) on maps of ``shapes`` with the targets of ``kind``, an evaluation and, with
    ``deploy``, the deployed decoder's evaluation (float64)."""
    values = fingerprint(decoder)
    perturb(decoder)
    feats = [feat.requires_grad_() for feat in case_inputs(shapes)]
    values.update(train_step(decoder, feats, case_targets(kind), criterion, matches))
    values["input_grad_norms"] = torch.stack([feat.grad.norm() for feat in feats])
    feats = [feat.detach() for feat in feats]
    decoder.eval()
    values.update(eval_probes(decoder, feats, "eval"))
    if deploy:
        deploy_modules(decoder)
        values.update(eval_probes(decoder, feats, "deploy"))
    return values


def run_model(model: nn.Module, criterion: nn.Module, postprocessor: nn.Module, shape: tuple[int, ...], kind: str,
              matches: Callable = last_layer_matches) -> dict:
    """A whole model (official or ours, built from ``CASE_SEED``): its initial fingerprint, then perturbed, a
    training step (:func:`train_step`) on images of ``shape`` with the targets of ``kind``, an evaluation with the
    post-processor's detections (sizes ``ORIG_SIZES_WH``), and the outputs after ``deploy()``."""
    values = fingerprint(model)
    perturb(model)
    images = case_inputs([shape])[0].requires_grad_()
    values.update(train_step(model, images, case_targets(kind), criterion, matches))
    values["input_grad_norms"] = images.grad.norm()[None]
    images = images.detach()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
        values.update({name: probe(t) for name, t in output_tensors(outputs, "eval").items()})
        values.update(detections(postprocessor(outputs, torch.tensor(ORIG_SIZES_WH)), "postprocess"))
    model.deploy()
    values.update(eval_probes(model, images, "deploy"))
    return values


def postprocessor_inputs(shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Fixed float64 model outputs of logits ``shape`` ``[B, Q, K]``: logits N(0, 4), boxes inside the image."""
    g = torch.Generator().manual_seed(POSTPROCESS_SEED)
    logits = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    centres = 0.2 + 0.6 * torch.rand(*shape[:2], 2, generator=g, dtype=torch.float64)
    sizes = 0.05 + 0.3 * torch.rand(*shape[:2], 2, generator=g, dtype=torch.float64)
    return {"pred_logits": logits, "pred_boxes": torch.cat([centres, sizes], -1)}


def run_postprocessor(postprocessor: nn.Module, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Detections of :func:`postprocessor_inputs` at sizes ``ORIG_SIZES_WH`` (w, h), then of the deployed
    post-processor."""
    outputs, sizes = postprocessor_inputs(shape), torch.tensor(ORIG_SIZES_WH)
    values = detections(postprocessor(outputs, sizes), "result")
    return {**values, **detections(postprocessor.deploy()(outputs, sizes), "deploy")}


def postprocessor_cases(cases: dict, official_class: Callable, official_context: Callable,
                        coco_ids: list[int]) -> dict[str, dict]:
    """Per case ``name -> (arguments, logits shape, COCO mapping)``: the official post-processor's values
    (:func:`run_postprocessor`; ``official_class(**arguments, remap_mscoco_category=...)`` run inside
    ``official_context()``, where it imports its COCO mapping), checked against our ``RTDETRPostProcessor``'s
    (``category_ids`` = ``coco_ids`` where mapped)."""
    from models.postprocess import RTDETRPostProcessor

    result = {}
    for name, (kwargs, shape, remap) in cases.items():
        with official_context():
            expected = run_postprocessor(official_class(**kwargs, remap_mscoco_category=remap), shape)
        actual = run_postprocessor(RTDETRPostProcessor(**kwargs, category_ids=coco_ids if remap else None), shape)
        print(f"postprocessor {name}: ours vs official, largest difference "
              f"{largest_difference(actual, expected):.3g}")
        result[name] = expected
    return result


def largest_difference(ours: dict, official: dict) -> float:
    """Largest absolute difference of the floating-point values; everything else must be equal."""
    assert sorted(ours) == sorted(official), sorted(set(ours) ^ set(official))
    largest = 0.0
    for key, expected in official.items():
        actual = ours[key]
        if isinstance(expected, torch.Tensor) and expected.is_floating_point():
            assert actual.dtype == expected.dtype and actual.shape == expected.shape, key
            if expected.numel():
                largest = max(largest, (actual - expected).abs().max().item())
        elif isinstance(expected, torch.Tensor):
            assert actual.dtype == expected.dtype and torch.equal(actual, expected), key
        else:
            assert actual == expected, (key, actual, expected)
    return largest


def same_initial_weights(ours: nn.Module, official: nn.Module, what: str, names: Callable = state_names) -> None:
    """Same names and shapes (``names`` of each), same initial values (drawn from the same seed); ours loads the
    official state strictly."""
    assert names(ours) == names(official), what
    official_state = official.state_dict()
    assert all(torch.equal(value, official_state[key]) for key, value in ours.state_dict().items()), what
    copy.deepcopy(ours).load_state_dict(official_state, strict=True)
