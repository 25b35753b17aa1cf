"""util.config: flat YAML presets between the parser's defaults and explicit flags."""
from pathlib import Path

import pytest

import cli
from util.config import ConfigError, dump_config, load_preset, parse_args_with_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "preset.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _parse(argv: list[str]):
    return parse_args_with_config(cli.get_args_parser(), argv)


def test_precedence_default_then_preset_then_flag(tmp_path):
    preset = _write(tmp_path, "lr: 0.5\nhidden_dim: 64\nbackbone: resnet18\n")
    args = _parse(["--config", str(preset), "--lr", "0.25"])
    assert args.lr == 0.25  # explicit flag beats the preset
    assert args.hidden_dim == 64 and args.backbone == "resnet18"  # preset beats the default
    assert args.batch_size == 2 and args.lr_backbone == 1e-5  # untouched defaults (the official DETR's)
    # An explicit flag equal to the parser default still wins over the preset.
    assert _parse(["--config", str(preset), "--hidden_dim", "256"]).hidden_dim == 256


def test_no_config_gives_parser_defaults():
    assert vars(_parse([])) == vars(cli.get_args_parser().parse_args([]))


def test_unknown_key_names_file_and_key(tmp_path):
    preset = _write(tmp_path, "lr: 0.1\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        _parse(["--config", str(preset)])
    assert str(preset) in str(info.value) and "'learning_rate'" in str(info.value)


@pytest.mark.parametrize("line, key", [
    ("lr: abc", "lr"),
    ("backbone_norm: nope", "backbone_norm"),
    ("dilation: 3", "dilation"),
    ("backbone_trainable_layers: 7", "backbone_trainable_layers"),
    ("batch_size: true", "batch_size"),
    ("hidden_dim: [1, 2]", "hidden_dim"),
])
def test_bad_value_names_file_and_key(tmp_path, line, key):
    preset = _write(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as info:
        _parse(["--config", str(preset)])
    assert str(preset) in str(info.value) and f"'{key}'" in str(info.value)


def test_missing_preset_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        _parse(["--config", str(tmp_path / "nope.yaml")])


def test_base_presets_apply_first_in_order_and_the_preset_overrides_them(tmp_path):
    (tmp_path / "bases").mkdir()
    _write(tmp_path, "lr: 0.5\nhidden_dim: 64\nbackbone: resnet18\n", "bases/first.yaml")
    _write(tmp_path, "base: first.yaml\nhidden_dim: 32\nnheads: 4\n", "bases/second.yaml")  # relative to its folder
    _write(tmp_path, "batch_size: 3\nnheads: 2\n", "bases/third.yaml")
    preset = _write(tmp_path, "base: [bases/second.yaml, bases/third.yaml]\nlr: 0.25\n")
    args = _parse(["--config", str(preset), "--batch_size", "5"])
    # first < second (hidden_dim, nheads) < third (nheads) < the preset (lr) < the command line (batch_size)
    assert (args.lr, args.hidden_dim, args.backbone, args.nheads, args.batch_size) == (0.25, 32, "resnet18", 2, 5)


@pytest.mark.parametrize("files, message", [
    ({"preset.yaml": "base: missing.yaml\n"}, "preset.yaml: key 'base': preset file .*missing.yaml does not exist"),
    ({"preset.yaml": "base: other.yaml\n", "other.yaml": "base: preset.yaml\n"}, "includes itself"),
    ({"preset.yaml": "base: preset.yaml\n"}, "includes itself"),
    ({"preset.yaml": "base: {a: 1}\n"}, "key 'base': expected a preset file or a list"),
    ({"preset.yaml": "base: other.yaml\n", "other.yaml": "lr: abc\n"}, "other.yaml: key 'lr'"),
])
def test_bad_base_names_the_file(tmp_path, files, message):
    for name, text in files.items():
        _write(tmp_path, text, name)
    with pytest.raises(ConfigError, match=message):
        _parse(["--config", str(tmp_path / "preset.yaml")])


def test_store_false_flags_keep_their_positive_name(tmp_path):
    args = _parse(["--config", str(_write(tmp_path, "aux_loss: false\npretrained_backbone: false\n"))])
    assert args.aux_loss is False and args.pretrained_backbone is False
    assert _parse(["--config", str(_write(tmp_path, "aux_loss: true\n", "on.yaml"))]).aux_loss is True
    # the flag on the command line still turns it off over a preset that turns it on
    assert _parse(["--config", str(tmp_path / "on.yaml"), "--no_aux_loss"]).aux_loss is False


def test_dump_then_reload_gives_the_same_args(tmp_path):
    parser = cli.get_args_parser()
    args = parse_args_with_config(parser, ["--lr", "3e-4", "--lr_backbone", "0", "--backbone", "resnet101",
                                           "--dilation", "--no_aux_loss", "--coco_path", str(tmp_path),
                                           "--num_classes", "7", "--eos_coef", "0.05"])
    path = tmp_path / "config.yaml"
    dump_config(parser, args, path)
    reloaded = parse_args_with_config(cli.get_args_parser(), ["--config", str(path)])
    expected = {k: v for k, v in vars(args).items() if k != "config"}
    assert {k: v for k, v in vars(reloaded).items() if k != "config"} == expected
    assert "config" not in load_preset(cli.get_args_parser(), path)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_presets_load(path):
    values = load_preset(cli.get_args_parser(), path)
    assert values  # not empty
    args = _parse(["--config", str(path)])
    for key, value in values.items():
        assert getattr(args, key) == value


def test_shipped_presets_exist():
    assert {p.name for p in CONFIGS} >= {"detr_r50.yaml", "detr_r50_dc5.yaml", "detr_r101.yaml",
                                         "detr_r101_dc5.yaml"}
