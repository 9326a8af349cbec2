"""``[daemon] node`` read from any text: taken when it is a node's name, refused with the
file and line otherwise; the default one, from any host name, is always a node's name."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.config import parse_config
from cued.daemon.config.nodes import NODE_NAME, default_node_name
from cued.daemon.errors import ConfigError

_NAME = re.compile(NODE_NAME)


@given(st.text(max_size=80))
def test_any_text_is_taken_as_a_node_name_or_refused_with_its_line(value):
    text = f"[daemon]\nnode = {json.dumps(value)}\n"
    if not _NAME.fullmatch(value):
        # (a JSON escape TOML takes no part of, a lone surrogate, is refused as TOML)
        with pytest.raises(ConfigError, match=r"cfg\.toml:2: (daemon\.node:|invalid TOML)"):
            parse_config(text, file="cfg.toml")
        return
    assert parse_config(text, file="cfg.toml").daemon.node == value


@given(st.text(max_size=300))
def test_the_default_name_fits_whatever_the_host_is_called(host):
    name = default_node_name(host)
    assert _NAME.fullmatch(name)
    assert name != default_node_name(host)  # a new suffix at each start


@pytest.mark.parametrize("lease", ['"0.1s"', '"0s"', "-1"])
def test_a_lease_under_half_a_second_is_refused_with_its_line(lease):
    with pytest.raises(ConfigError, match=r"cfg.toml:2: daemon.lease:"):
        parse_config(f"[daemon]\nlease = {lease}\n", file="cfg.toml")


def test_the_node_and_its_lease_are_optional():
    daemon = parse_config("[daemon]\n", file="cfg.toml").daemon
    assert (daemon.node, daemon.lease) == (None, 5.0)
