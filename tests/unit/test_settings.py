"""One vocabulary of run settings (onebyte/settings.py): the manifest, TrainConfig, a new run's
defaults and the command line all take each setting and its default from there."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from onebyte import settings
from onebyte.cli import build_parser
from onebyte.coordinator_free.manifest import AGREED_FIELDS, RunManifest
from onebyte.peer.train import TASK_FIELDS, TrainConfig


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_setting_is_a_manifest_field_with_its_checks():
    assert AGREED_FIELDS == settings.AGREED_FIELDS and set(AGREED_FIELDS) <= set(RunManifest.model_fields)
    for name in AGREED_FIELDS:
        assert RunManifest.model_fields[name].metadata == settings.FIELDS[name].metadata, name
    with pytest.raises(TypeError):  # a hand-written copy of a setting is refused at import
        settings.check_agreed(type("M", (RunManifest,), {"__annotations__": {"lr": float}, "lr": 1.0}))


def test_train_config_and_a_new_run_take_the_settings_defaults():
    train = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert all(train[k] == settings.default(k) for k in settings.TRAIN_FIELDS)
    assert settings.default_manifest_fields() == {k: settings.default(k) for k in AGREED_FIELDS}
    assert TASK_FIELDS == tuple(settings.TaskSettings.model_fields)


def test_command_line_options_come_from_the_settings():
    cmds = commands()
    peer = {a.dest: a for a in cmds["peer"]._actions}
    train = {a.dest: a for a in cmds["train"]._actions}
    for name in AGREED_FIELDS:  # peer and demo: every setting, default None (the run's manifest)
        assert peer[name].default is None and peer[name].help == settings.cli_spec(name).get("run"), name
        assert {a.dest: a for a in cmds["demo"]._actions}[name].default is None
    for name in settings.TRAIN_FIELDS:  # train: the settings that build a replica, with their defaults
        assert train[name].default == settings.default(name), name
    args = build_parser().parse_args(["peer", "--run-id", "r", "--label-words", " no, yes", "--lr", "0.5"])
    from onebyte.cli.options import given_settings

    assert given_settings(args) == {"label_words": [" no", " yes"], "lr": 0.5}
