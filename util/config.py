"""Flat YAML presets for the command line: keys are flag names (``lr``, ``hidden_dim`` ...).

Precedence: parser default < preset file < flag given on the command line. An unknown key or a value the flag
would reject is an error naming the file and the key.

A preset may start from others: ``base: demo_cpu_deformable.yaml`` (a path relative to the preset's folder, or a list
of them applied in order) takes their values first, then the preset's own keys override them.
"""
import argparse
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A preset file that cannot be applied."""


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != argparse.SUPPRESS and a.dest != "help"}


def _check_scalar(action: argparse.Action, value, where: str):
    """``value`` converted as the command line converts the flag's text: the flag's type applied to the text a
    YAML number or string stands for (``int("2.7")`` fails where ``int(2.7)`` would silently give 2)."""
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    if value is None:
        return None
    if isinstance(value, bool):
        if action.type is not bool:
            kind = action.type.__name__ if action.type is not None else "a string"
            raise ConfigError(f"{where}: expected {kind}, got a boolean {value!r}")
    elif action.type is bool:  # bool("false") is True: only a YAML true/false says what it means
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    else:
        convert = action.type or str
        try:
            value = convert(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{where}: bad value {value!r} ({exc})") from exc
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


def _check_value(action: argparse.Action, value, where: str):
    """Convert ``value`` as the command line would, or raise ConfigError."""
    if value is None and action.default is None:
        return None  # "not set", as the flag's own default
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        # store_false flags (--no_aux_loss) keep the positive meaning in the file: `aux_loss: false`.
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if action.nargs == "+" and not value:
            raise ConfigError(f"{where}: expected a non-empty list")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise ConfigError(f"{where}: expected a list of {action.nargs} values, got {len(value)}")
        return [_check_scalar(action, v, where) for v in value]
    return _check_scalar(action, value, where)


BASE_KEY = "base"


def load_preset(parser: argparse.ArgumentParser, path: str | Path, _including: tuple[Path, ...] = (),
                _where: str = "--config") -> dict:
    """Read and validate a preset, its ``base`` presets first; returns {dest: value}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{_where}: preset file {path} does not exist")
    if path.resolve() in _including:
        chain = " -> ".join(str(p) for p in (*_including, path.resolve()))
        raise ConfigError(f"{path}: key {BASE_KEY!r} includes itself ({chain})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of flag names to values, got {type(data).__name__}")
    actions = _actions_by_dest(parser)
    values = {}
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: key {BASE_KEY!r}: expected a preset file or a list of them, got {bases!r}")
    for base in bases:
        values.update(load_preset(parser, path.parent / base, (*_including, path.resolve()),
                                  f"{path}: key {BASE_KEY!r}"))
    for key, value in data.items():
        if key == "config" or key not in actions:
            raise ConfigError(f"{path}: unknown key {key!r} (keys are flag names without dashes)")
        values[key] = _check_value(actions[key], value, f"{path}: key {key!r}")
    return values


def parse_args_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` applying ``--config FILE`` (if any) between the parser's defaults and explicit flags."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        parser.set_defaults(**load_preset(parser, args.config))
        args = parser.parse_args(argv)
    return args


def dump_config(parser: argparse.ArgumentParser, args: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved flags as a flat YAML preset, loadable again with ``--config``."""
    flags = _actions_by_dest(parser)
    values = {k: getattr(args, k) for k in sorted(flags) if k != "config" and is_plain(getattr(args, k))}
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # YAML safe-dump has no tuples
    Path(path).write_text(yaml.safe_dump(values, sort_keys=True))


def is_plain(v) -> bool:
    """None, a bool/int/float/str, or a list or tuple of those: a value JSON, YAML and ``weights_only`` loading
    all accept."""
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v))


def add_switch(group, name: str, default: bool, help: str) -> None:
    """``--name`` and ``--no_name`` on an argparse group, for a boolean whose official value may be True (a preset
    key ``name`` sets either)."""
    group.add_argument(f"--{name}", dest=name, action="store_true", default=default,
                       help=f"{help} (default: {default})")
    group.add_argument(f"--no_{name}", dest=name, action="store_false", default=default, help=f"undo --{name}")
