"""Where the state file is, read from the ``[daemon]`` table alone (the CLI's reads): the
same answer as the whole check wherever it gives one, and no answer (the whole check
then speaks) wherever it is unsure."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cued.daemon.config as config_package
from cued.daemon.config import DaemonConfig, load_config, models
from cued.daemon.config.state import DAEMON_KEYS, StateSettings, read_state_settings
from cued.daemon.errors import ConfigError


def test_it_knows_every_key_of_the_daemon_table():
    assert set(DaemonConfig.model_fields) == DAEMON_KEYS
    assert all(field.alias is None for field in DaemonConfig.model_fields.values())


def test_the_package_offers_what_the_models_module_does():
    # the package loads the models on first use: its list must be theirs
    assert sorted(config_package.__all__) == sorted(models.__all__)
    assert all(getattr(config_package, name) is getattr(models, name) for name in models.__all__)
    with pytest.raises(AttributeError):
        _ = config_package.nothing_of_the_kind


def test_no_daemon_table_means_the_defaults(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[pipelines.p.tasks.t]\nkind = "sleep"\n')
    assert read_state_settings(config) == StateSettings(str(tmp_path / "cued.db"), "full", "info")


def test_the_state_is_relative_to_the_config_files_folder(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "config.toml"
    config.write_text('[daemon]\nstate = "../var/s.db"\nsynchronous = "normal"\n')
    monkeypatch.chdir(tmp_path)
    settings = read_state_settings("etc/config.toml")
    assert settings is not None
    assert settings.location == str(tmp_path / "etc" / ".." / "var" / "s.db")
    assert settings.location == load_config("etc/config.toml").state_location()
    assert settings.synchronous == "normal"


@pytest.mark.parametrize(
    "daemon",
    [
        'stat = "typo.db"',  # a key it does not know: a typo would read another file
        "state = 5",
        'synchronous = "off"',
        'log_level = "loud"',
    ],
)
def test_a_daemon_table_it_is_unsure_of_gets_no_answer(tmp_path, daemon):
    config = tmp_path / "config.toml"
    config.write_text(f"[daemon]\n{daemon}\n")
    assert read_state_settings(config) is None
    with pytest.raises(ConfigError):  # and the whole check says what is wrong
        load_config(config)


def test_a_file_it_cannot_read_gets_no_answer(tmp_path):
    assert read_state_settings(tmp_path / "missing.toml") is None
    (tmp_path / "bad.toml").write_bytes(b"[daemon\n")
    assert read_state_settings(tmp_path / "bad.toml") is None
    (tmp_path / "latin1.toml").write_bytes(b'[daemon]\nstate = "\xe9.db"\n')
    assert read_state_settings(tmp_path / "latin1.toml") is None
    assert read_state_settings(tmp_path) is None  # a folder


@given(st.binary(max_size=300))
def test_any_bytes_get_an_answer_or_none_never_an_error(tmp_path_factory, raw):
    config = tmp_path_factory.mktemp("c") / "config.toml"
    config.write_bytes(raw)
    found = read_state_settings(config)
    assert found is None or isinstance(found, StateSettings)


@given(
    # as TOML spells it through json's escapes: no control characters, no surrogates
    state=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40),
    synchronous=st.none() | st.sampled_from(["full", "normal"]),
    log_level=st.none() | st.sampled_from(["debug", "info", "warning", "error"]),
    workers=st.none() | st.integers(1, 1000),
)
def test_both_read_the_same_or_the_light_reading_leaves_it_to_the_whole_check(
    tmp_path_factory, state, synchronous, log_level, workers
):
    folder = tmp_path_factory.mktemp("c")
    lines = [f"state = {json.dumps(state, ensure_ascii=False)}"]
    if synchronous is not None:
        lines.append(f'synchronous = "{synchronous}"')
    if log_level is not None:
        lines.append(f'log_level = "{log_level}"')
    if workers is not None:
        lines.append(f"max_running_tasks = {workers}")
    config = folder / "config.toml"
    config.write_text("[daemon]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    found = read_state_settings(config)
    try:
        whole = load_config(config)
    except ConfigError:
        assert found is None  # the whole check says what is wrong
        return
    if whole.daemon.state.startswith(("env:", "file:")):
        assert found is None  # resolving a secret is the whole check's
    else:
        assert found == StateSettings(
            whole.state_location(), whole.daemon.synchronous, whole.daemon.log_level
        )
