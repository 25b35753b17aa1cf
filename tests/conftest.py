"""Shared fixtures: no network, a tiny synthetic COCO dataset, tiny model flags."""
import socket

import pytest
import torch

import cli
from tools.data.synthetic import generate


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test loudly."""

    def refuse(*args, **kwargs):
        raise RuntimeError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A small synthetic COCO-layout dataset: 24 train and 8 val images of 64 px."""
    return generate(tmp_path_factory.mktemp("synthetic"), num_train=24, num_val=8, image_size=64, seed=0)


TINY_FLAGS = [
    "--backbone", "resnet18", "--no_pretrained_backbone", "--backbone_norm", "bn", "--backbone_trainable_layers", "5",
    "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64",
    "--num_queries", "8", "--dropout", "0", "--lr", "3e-4", "--lr_backbone", "3e-4", "--batch_size", "4",
    "--image_size", "64", "--no_multiscale", "--num_workers", "0", "--print_freq", "100", "--device", "cpu",
]


@pytest.fixture
def tiny_args():
    """Build parsed args for a tiny DETR on ``tiny_coco``: ``tiny_args(coco_path, *extra_flags)``."""

    def make(coco_path, *extra):
        return cli.get_args_parser().parse_args([*TINY_FLAGS, "--coco_path", str(coco_path), *extra])

    return make
