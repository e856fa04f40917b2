"""Options from a config file (``--config``, YAML or TOML) and from environment variables.

Every option of every ``onebyte`` command can come from three places besides its default; the
first that has it wins:

1. the command line;
2. the environment: ``ONEBYTE_<OPTION>``, the option's long name in capitals with ``_`` for ``-``
   (``--run-id`` -> ``ONEBYTE_RUN_ID``; lists such as ``--initial-peers`` take commas or spaces;
   flags take 1/0, true/false, yes/no, on/off);
3. the config file named by ``--config FILE`` (or ``ONEBYTE_CONFIG``): a mapping of option names
   (``run-id`` or ``run_id``) to values. Top-level keys apply to every command that has the option
   (so one file can serve ``peer`` and ``status``); a section named after a command applies to that
   command only::

       run-id: myrun
       initial-peers: [/ip4/203.0.113.7/tcp/31337/p2p/Qm...]
       peer:
         metrics-port: 9737

A key that no command knows, a file that does not parse or a value of the wrong type is a
``ConfigError``: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "ONEBYTE_"
CONFIG_ENV = "ONEBYTE_CONFIG"
_NOT_OPTIONS = {"help", "version", "config", "func", "command"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A bad config file, key or value (reported as one line, exit code 2)."""


class _FromConfig(list):
    """A list default that came from a config file or the environment: the command line replaces it."""


class _ReplacingAppend(argparse._AppendAction):
    def __call__(self, parser, namespace, values, option_string=None):
        if isinstance(getattr(namespace, self.dest, None), _FromConfig):
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` on the top-level parser and on every command."""
    text = (
        f"YAML or TOML file of option values (default: ${CONFIG_ENV}); "
        "the command line and ONEBYTE_<OPTION> variables override it"
    )
    parser.add_argument("--config", metavar="FILE", default=None, help=text)
    for sub in _commands(parser).values():
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=text)


def load_file(path: str | os.PathLike) -> dict:
    """The mapping in a YAML (.yaml, .yml, .json, anything else) or TOML (.toml) file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {p}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: cannot read it ({e})") from None
    if p.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p}: invalid TOML: {e}") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"config file {p}: invalid YAML{where}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def config_path(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The ``--config`` value on the command line (last one wins), else ``$ONEBYTE_CONFIG``."""
    found = None
    for i, tok in enumerate(argv):
        if tok == "--":
            break
        if tok == "--config" and i + 1 < len(argv):
            found = argv[i + 1]
        elif tok.startswith("--config="):
            found = tok.split("=", 1)[1]
    return found if found is not None else (environ.get(CONFIG_ENV) or None)


def apply_config(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> None:
    """Make values from the config file and the environment the defaults of ``parser``'s options.

    Call before ``parser.parse_args(argv)``: what the command line gives still wins. Options that
    are required on the command line stop being required once a file or variable provides them.
    """
    environ = os.environ if environ is None else environ
    path = config_path(argv, environ)
    data = load_file(path) if path else {}
    where = f"config file {path}"
    commands = _commands(parser)
    targets = {None: parser, **commands}
    options = {name: _options(p) for name, p in targets.items()}

    from_file: dict[Any, dict[str, tuple[argparse.Action, Any]]] = {name: {} for name in targets}
    for key, value in data.items():
        if isinstance(key, str) and key in commands and isinstance(value, dict):
            for k, v in value.items():
                action = options[key].get(_norm(k))
                if action is None:
                    raise ConfigError(f"{where}: unknown option {k!r} in section {key!r} (see onebyte {key} --help)")
                from_file[key][action.dest] = (action, v)
            continue
        hits = [name for name in targets if _norm(key) in options[name]] if isinstance(key, str) else []
        if not hits:
            raise ConfigError(f"{where}: unknown option {key!r} (not an option of any onebyte command)")
        for name in hits:
            action = options[name][_norm(key)]
            from_file[name].setdefault(action.dest, (action, value))  # a command's own section wins

    for name, p in targets.items():
        values: dict[str, Any] = {}
        for dest, (action, raw) in from_file[name].items():
            values[dest] = _convert(action, raw, f"{where}: {_label(action)}")
        for action in {a.dest: a for a in options[name].values()}.values():
            var = ENV_PREFIX + action.dest.upper()
            if var in environ:
                values[action.dest] = _convert(action, environ[var], f"environment variable {var}", from_env=True)
        if not values:
            continue
        for action in p._actions:
            if action.dest in values:
                action.required = False
                if type(action) is argparse._AppendAction:
                    action.__class__ = _ReplacingAppend
                    values[action.dest] = _FromConfig(values[action.dest])
        p.set_defaults(**values)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Configurable options of a parser by normalized name: each long option string and the dest."""
    out: dict[str, argparse.Action] = {}
    for action in p._actions:
        if (
            not action.option_strings
            or action.dest in _NOT_OPTIONS
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            continue
        out[_norm(action.dest)] = action
        for s in action.option_strings:
            if s.startswith("--"):
                out[_norm(s[2:])] = action
    return out


def _norm(key: Any) -> str:
    return str(key).strip().lower().replace("-", "_")


def _label(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return longs[0][2:] if longs else action.dest


def _convert(action: argparse.Action, raw: Any, where: str, from_env: bool = False) -> Any:
    """A value from a file or the environment, checked and converted the way the command line would."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if isinstance(raw, bool):
            on = raw
        elif isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            on = raw.strip().lower() in _TRUE
        else:
            raise ConfigError(f"{where}: expected true or false, got {raw!r}")
        return on if isinstance(action, argparse._StoreTrueAction) else not on
    if isinstance(action, argparse._AppendAction):
        if isinstance(raw, str):
            items = raw.replace(",", " ").split() if from_env else [raw]
        elif isinstance(raw, list):
            items = raw
        else:
            raise ConfigError(f"{where}: expected a list or a string, got {raw!r}")
        return [_scalar(action, x, where) for x in items]
    if isinstance(raw, list | dict):
        raise ConfigError(f"{where}: expected a single value, got {raw!r}")
    if not isinstance(action, argparse._StoreAction):
        raise ConfigError(f"{where}: this option cannot be set from a file or the environment")
    return _scalar(action, raw, where)


def _scalar(action: argparse.Action, raw: Any, where: str) -> Any:
    if isinstance(raw, bool) or isinstance(raw, list | dict) or raw is None:
        raise ConfigError(f"{where}: expected a value like the command line's, got {raw!r}")
    text = str(raw)
    try:
        value = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without ONEBYTE_<OPTION> variables (except the cache and the log level).

    Processes a command starts itself (the demo's peers) get their options explicitly; variables
    meant for the parent (``ONEBYTE_METRICS_PORT``, ``ONEBYTE_CONFIG``) must not reach them.
    """
    environ = os.environ if environ is None else environ
    keep = {"ONEBYTE_CACHE", "ONEBYTE_LOG_LEVEL"}
    return {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX) or k in keep}
