"""The training step and its loss log: deferred reads give the per-step log, a non-finite step leaves the weights alone
(fused optimiser, no host read) and stops the run naming it; --amp bf16/fp16 train with finite losses (DETR's heads
in fp32); attention through scaled_dot_product_attention equals the weights path and the maps stay available."""
import copy

import pytest
import torch

from datasets import build_dataset
from engine import train_one_epoch
from models import ARCHITECTURES, architecture, build_model
from models.attention_weights import computes_weights, set_need_weights
from models.detr import SetCriterion
from models.param_groups import build_param_groups
from util.amp import Precision
from util.loss_log import DeferredLosses, NonFiniteLossError
from util.metric_logger import MetricLogger
from util.nested_tensor import collate_fn
from util.optimizer import build_optimizer
from util.train_step import TrainStep


@pytest.fixture(scope="module")
def batches(tiny_coco):
    """Three training batches of two images of the tiny dataset (fixed: no random augmentation draws later)."""
    import cli

    args = cli.get_args_parser().parse_args(["--coco_path", str(tiny_coco), "--image_size", "64", "--no_multiscale"])
    dataset = build_dataset("train", args)
    torch.manual_seed(0)
    return [collate_fn([dataset[i] for i in range(k, k + 2)]) for k in (0, 2, 4)]


def _setup(tiny_coco, tiny_args, *flags, implementation="auto"):
    torch.manual_seed(0)
    args = tiny_args(tiny_coco, *flags)
    args.num_classes = 12
    model, criterion, _ = build_model(args)
    optimizer = build_optimizer(build_param_groups(model, args.lr_backbone), args.lr, args.weight_decay,
                                implementation=implementation)
    return model, criterion, optimizer


def test_deferred_reads_log_what_per_step_reads_log(tiny_coco, tiny_args, batches):
    stats = []
    for every_step in (True, False):
        model, criterion, optimizer = _setup(tiny_coco, tiny_args)
        torch.manual_seed(1)
        stats.append(train_one_epoch(model, criterion, batches, optimizer, torch.device("cpu"), 0, 0.1, print_freq=2,
                                     read_every_step=every_step))
    per_step, deferred = stats
    per_step.pop("epoch_time"), deferred.pop("epoch_time")
    assert per_step == deferred  # every average, exactly
    assert {"loss", "loss_ce", "loss_bbox_unscaled", "class_error", "lr"} <= set(deferred)


def test_pending_terms_come_in_one_read_at_the_progress_line():
    log = DeferredLosses({"loss_a": 2.0}, epoch=3)
    logger = MetricLogger()
    for it in range(3):
        log.add(it, {"loss_a": torch.tensor(float(it)), "class_error": torch.tensor(50.0)}, 0.1, logger)
    assert "loss" not in logger.meters and len(log.pending) == 3  # nothing read yet
    log.flush(logger)
    assert logger.meters["loss"].global_avg == pytest.approx((0 + 2 + 4) / 3)
    assert logger.meters["loss_a_unscaled"].count == 3
    log.add(3, {"loss_a": torch.tensor(float("inf")), "class_error": torch.tensor(0.0)}, 0.1, logger)
    with pytest.raises(NonFiniteLossError, match="epoch 3, iteration 3: loss_a=inf"):
        log.flush(logger)


@pytest.mark.parametrize("implementation", ["auto", "plain"], ids=["fused_no_host_read", "plain_host_check"])
def test_non_finite_step_leaves_weights_and_optimizer_alone(tiny_coco, tiny_args, batches, monkeypatch,
                                                            implementation):
    model, criterion, optimizer = _setup(tiny_coco, tiny_args, implementation=implementation)
    step = TrainStep(model, criterion, optimizer, 0.1)
    assert step.host_check == (implementation == "plain")
    samples, targets = batches[0]
    step(samples, list(targets))
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = copy.deepcopy(optimizer.state_dict())
    real = SetCriterion.loss_boxes

    def poisoned(self, *args, **kwargs):
        losses = real(self, *args, **kwargs)
        losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses

    monkeypatch.setattr(SetCriterion, "loss_boxes", poisoned)
    result = step(samples, list(targets))
    monkeypatch.undo()
    # fused: the step went through backward and the optimiser, which skipped the update on the device; plain: the
    # step read the loss on the host and stopped before backward
    assert result.read_now == (implementation == "plain")
    assert (result.grad_norm is None) == (implementation == "plain")
    for name, value in model.named_parameters():  # (BatchNorm statistics move in the forward, as officially)
        assert torch.equal(value, weights[name]), name
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, state["state"][index][key]), (index, key)
    with pytest.raises(NonFiniteLossError, match="epoch 0, iteration 5: .*loss_bbox=nan"):
        log = DeferredLosses(criterion.weight_dict, epoch=0)
        log.add(5, result.loss_dict, 0.1, MetricLogger())
        log.flush(MetricLogger())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_with_finite_fp32_losses(tiny_coco, tiny_args, batches, amp):
    model, criterion, optimizer = _setup(tiny_coco, tiny_args)
    precision = Precision(amp, torch.device("cpu"))
    assert (precision.scaler is not None) == (amp == "fp16")
    seen_dtypes = set()
    model.transformer.encoder.layers[0].linear1.register_forward_hook(lambda m, i, o: seen_dtypes.add(o.dtype))
    step = TrainStep(model, criterion, optimizer, 0.1, precision=precision)
    before = model.class_embed.weight.detach().clone()
    for samples, targets in batches:
        result = step(samples, list(targets))
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in result.loss_dict.values())
    assert seen_dtypes == {precision.dtype}  # the transformer's linear layers ran in the lower precision
    assert model.class_embed.weight.dtype == torch.float32  # the weights stay fp32
    if amp == "bf16":
        assert not torch.equal(model.class_embed.weight, before)  # and were updated
    else:  # fp16's scaler starts at 2**16: overflowing steps are skipped and the scale lowered until they fit
        updated = not torch.equal(model.class_embed.weight, before)
        assert updated or precision.scaler.get_scale() < 2.0**16


def test_precision_casts_outputs_to_fp32_only_with_amp():
    outputs = {"pred_logits": torch.zeros(1, 2, dtype=torch.bfloat16), "aux": [{"b": torch.zeros(1, dtype=torch.half)}],
               "idx": torch.zeros(1, dtype=torch.int64)}
    cast = Precision("bf16", torch.device("cpu")).to_fp32(outputs)
    assert cast["pred_logits"].dtype == torch.float32 and cast["aux"][0]["b"].dtype == torch.float32
    assert cast["idx"].dtype == torch.int64
    assert Precision("off", torch.device("cpu")).to_fp32(outputs) is outputs
    with pytest.raises(ValueError, match="--amp"):
        Precision("fp8", torch.device("cpu"))


def test_detr_heads_run_in_fp32_under_autocast(tiny_coco, tiny_args, batches):
    """Under bf16 autocast the class and box heads see the decoder output in fp32 and compute in fp32: the
    predictions equal the heads applied without autocast, and the boxes are not confined to bf16's grid."""
    model, _, _ = _setup(tiny_coco, tiny_args)
    model.eval()
    samples, _ = batches[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hs = model.decode(samples).hs
        out = model.predict(hs)
    with torch.no_grad():
        expected = model.predict(hs.float())
    assert out["pred_boxes"].dtype == torch.float32 and out["pred_logits"].dtype == torch.float32
    assert torch.equal(out["pred_boxes"], expected["pred_boxes"])
    assert torch.equal(out["pred_logits"], expected["pred_logits"])
    boxes = out["pred_boxes"]
    assert (boxes.bfloat16().float() != boxes).float().mean() > 0.9  # fp32 values, not bf16 ones stored in fp32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        from_bf16 = model.predict(hs.bfloat16())  # a decoder output in bf16 is cast up before the heads
    with torch.no_grad():
        expected = model.predict(hs.bfloat16().float())
    assert from_bf16["pred_boxes"].dtype == torch.float32
    assert torch.equal(from_bf16["pred_boxes"], expected["pred_boxes"])


def test_attention_without_weights_equals_the_official_path(tiny_coco, tiny_args, batches):
    original, _, _ = _setup(tiny_coco, tiny_args, "--dropout", "0.1")
    samples, _ = batches[0]
    outputs = {}
    for need_weights in (True, False):
        model = copy.deepcopy(original)  # (a training pass moves the BatchNorm statistics)
        assert set_need_weights(model, need_weights) == 3  # 1 encoder + 2 decoder layers
        for training in (False, True):
            model.train(training)
            torch.manual_seed(5)  # the same dropout draws
            outputs[need_weights, training] = model(samples)["pred_boxes"]
    for training in (False, True):
        torch.testing.assert_close(outputs[False, training], outputs[True, training], rtol=1e-5, atol=1e-6)
    assert not computes_weights(False, False, torch.device("cpu"))  # inference: fused attention
    assert computes_weights(False, True, torch.device("cpu"))  # CPU training: the official kernels
    assert not computes_weights(False, True, torch.device("cuda"))  # GPU training: fused attention


def test_a_forward_hook_gets_the_attention_maps_as_in_the_official_notebook(tiny_coco, tiny_args, batches):
    """The official DETR notebook reads the maps with forward hooks on the attention modules (``output[1]``): a
    hooked layer computes its weights; an unhooked one does not."""
    model, _, _ = _setup(tiny_coco, tiny_args)
    model.eval()
    layer = model.transformer.decoder.layers[-1]
    unhooked = model.transformer.decoder.layers[0].multihead_attn
    seen = []
    layer.multihead_attn.register_forward_hook(lambda m, i, o: seen.append(o[1]))
    samples, _ = batches[0]
    with torch.no_grad():
        model(samples)
        outputs = {}  # a pre-hook sees the call's arguments without reading the outputs
        unhooked.register_forward_pre_hook(lambda m, args, kwargs: outputs.update(kwargs), with_kwargs=True)
        model(samples)
    maps = seen[0]  # [B, Q, S]: head-averaged, each row a distribution over the memory tokens
    assert maps.shape[:2] == (2, 8)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 8))
    assert outputs["need_weights"] is False  # a layer whose outputs nobody hooks runs the fused kernel


@pytest.mark.parametrize("meta_arch", sorted(ARCHITECTURES))
def test_amp_bf16_trains_every_architecture(meta_arch):
    from tests.test_family import _build, _images

    model, criterion, args, _ = _build(meta_arch)
    optimizer = build_optimizer(architecture(meta_arch).param_groups(model, args), 1e-4, 1e-4)
    step = TrainStep(model, criterion, optimizer, 0.1, precision=Precision("bf16", torch.device("cpu")))
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1]])},
               {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.6, 0.5, 0.3, 0.2]])}]
    for _ in range(2):
        result = step(_images(), targets)
    assert all(torch.isfinite(v) for v in result.loss_dict.values())
