"""``[daemon] state`` read from any text (a config, or a variable the deployment sets):
the check names what is wrong or takes it, and a URL shown never carries its password."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.config.state import (
    check_database_url,
    check_state,
    database_password,
    is_database_url,
    shown_url,
)

# (url, its password): the rest may be anything, so some of these URLs do not parse
# (a stray "[" is an unclosed IPv6 host): they must not show the password either
urls = st.builds(
    lambda scheme, user, password, host, rest: (
        f"{scheme}{user}:{password}@{host}{rest}",
        password,
    ),
    st.sampled_from(["postgresql://", "postgres://"]),
    st.text(st.characters(blacklist_characters=":@/?#[]"), max_size=10),
    st.text(st.characters(blacklist_characters="@/?#[]"), min_size=6, max_size=20),
    st.sampled_from(["db", "127.0.0.1:5432", "[::1]:5432", "db.internal"]),
    st.text(max_size=30),
)


@given(st.text(max_size=200))
def test_any_text_is_taken_or_refused_with_a_reason(value):
    try:
        checked, reason = check_state(value), None
    except ValueError as exc:
        checked, reason = value, str(exc)
    assert checked == value
    assert reason != ""
    shown_url(value)  # never raises either
    database_password(value)


@given(urls)
def test_a_url_shown_never_holds_its_password(url_and_password):
    url, password = url_and_password
    assert is_database_url(url)
    assert f":{password}@" not in shown_url(url)
    problem = check_database_url(url)
    assert problem is None or f":{password}@" not in problem
    found = database_password(url)
    assert found is None or f":{found}@" not in shown_url(url)


@pytest.mark.parametrize(
    "value",
    ["cued.db", "var/state.db", "postgresql://db/cued", "postgres://u@db:5433/cued", "env:DB_URL"],
)
def test_what_state_may_name(value):
    assert check_state(value) == value
