"""Shared fixtures: no network, threads, a tiny synthetic COCO dataset, tiny model flags for every architecture."""
import os
import socket

# MKL picks its code path by CPU (vendor and instruction set), so some float32 results differ in the last bit from one
# machine to another (torch.log in RT-DETR's anchors: AVX-512 Xeons against the AMD EPYC that wrote tests/golden/).
# Its conditional-numerical-reproducibility mode gives the same bits on every x86-64 CPU; the saved reference values are
# compared, and regenerated (tools/reference/), under it. Set before torch loads MKL.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import pytest  # noqa: E402
import torch  # noqa: E402

import cli  # noqa: E402
from tools.data.synthetic import generate  # noqa: E402

REAL_CONNECT = socket.socket.connect


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test loudly."""

    def refuse(*args, **kwargs):
        raise RuntimeError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def local_sockets(monkeypatch):
    """DataLoader workers hand tensors to the main process over a Unix socket: allow those, still no network."""
    refuse = socket.socket.connect  # the autouse no_network's

    def connect(sock, address):
        if sock.family != socket.AF_UNIX:
            return refuse(sock, address)
        return REAL_CONNECT(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(autouse=True)
def few_threads():
    torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """One thread (after the autouse two): as the saved reference values were computed, and quicker where the
    machine is shared. Modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A small synthetic COCO-layout dataset: 24 train and 8 val images of 64 px."""
    return generate(tmp_path_factory.mktemp("synthetic"), num_train=24, num_val=8, image_size=64, seed=0)


# A tiny model of any architecture (with tiny_architecture_flags): ResNet-18 without weights, width 32, one encoder
# and two decoder layers, 8 queries.
TINY_MODEL_FLAGS = [
    "--backbone", "resnet18", "--no_pretrained_backbone", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1",
    "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries", "8", "--dropout", "0", "--device", "cpu",
]
# ... trained from scratch on tiny_coco: trainable BatchNorm, 64 px images, no workers
TINY_FLAGS = [
    *TINY_MODEL_FLAGS, "--backbone_norm", "bn", "--backbone_trainable_layers", "5", "--lr", "3e-4",
    "--lr_backbone", "3e-4", "--batch_size", "4", "--image_size", "64", "--no_multiscale", "--num_workers", "0",
    "--print_freq", "100",
]


# Flags on top of TINY_FLAGS that make an architecture as small (its own flags, or shared ones only it reads). An
# architecture not listed is built with TINY_FLAGS and --meta_arch alone: the family tests iterate the registry.
TINY_ARCHITECTURE_FLAGS = {
    "deformable_detr": ["--enc_n_points", "2", "--dec_n_points", "2"],
    "dino": ["--enc_n_points", "2", "--dec_n_points", "2", "--num_select", "20", "--dn_number", "4"],
    "rtdetrv2": ["--depth", "18", "--freeze_at", "-1", "--no_freeze_norm", "--enc_hidden_dim", "32",
                 "--enc_dim_feedforward", "64", "--num_feature_levels", "3", "--num_points", "2", "2", "2",
                 "--num_denoising", "6", "--num_top_queries", "20", "--eval_spatial_size", "64", "64",
                 "--multiscale_sizes"],
    "dfine": ["--hgnetv2_name", "B0", "--use_lab", "--freeze_at", "-1", "--no_freeze_norm", "--enc_hidden_dim", "32",
              "--enc_dim_feedforward", "64", "--num_feature_levels", "3", "--num_points", "2", "2", "2",
              "--num_denoising", "6", "--num_top_queries", "20", "--eval_spatial_size", "64", "64", "--reg_max", "8",
              "--multiscale_sizes"],
}


def _options(flags: list[str]) -> list[list[str]]:
    """``["--a", "1", "--b"]`` -> ``[["--a", "1"], ["--b"]]`` (an option and its values)."""
    groups = []
    for flag in flags:
        if flag.startswith("--"):
            groups.append([flag])
        else:
            groups[-1].append(flag)
    return groups


def tiny_architecture_flags(meta_arch: str, base: list[str] | None = None) -> list[str]:
    """``base`` (TINY_FLAGS or TINY_MODEL_FLAGS; default none) less the flags ``meta_arch`` does not read (and
    DETR's --no_multiscale where the architecture trains with another data pipeline), then ``--meta_arch
    meta_arch`` and what makes it tiny."""
    import cli
    from models import architecture

    parser = cli.get_args_parser()
    dests = {option: action.dest for action in parser._actions for option in action.option_strings}
    owners = cli.flag_owners()
    kept = []
    for option in _options(base or []):
        dest = dests[option[0]]
        if owners.get(dest, meta_arch) != meta_arch or meta_arch not in cli.readers(dest) and dest not in owners:
            continue
        if option[0] == "--no_multiscale" and architecture(meta_arch).data_pipeline != "detr":
            continue
        kept += option
    return [*kept, "--meta_arch", meta_arch, *TINY_ARCHITECTURE_FLAGS.get(meta_arch, [])]


@pytest.fixture
def tiny_args():
    """Build parsed args for a tiny DETR on ``tiny_coco``: ``tiny_args(coco_path, *extra_flags)``."""

    def make(coco_path, *extra):
        return cli.get_args_parser().parse_args([*TINY_FLAGS, "--coco_path", str(coco_path), *extra])

    return make
