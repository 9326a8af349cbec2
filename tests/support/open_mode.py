"""Open mode (no ``[auth.users]``): its config, and Hypothesis strategies for host names."""

from __future__ import annotations

from hypothesis import strategies as st

__all__ = ["OPEN", "loopback_v4", "ports", "suffixes"]


loopback_v4 = st.ip_addresses(network="127.0.0.0/8").map(str)
ports = st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}"))
# what may follow a host to make another name of it: a dot or dash, then name characters
suffixes = st.from_regex(r"[.\-][a-z0-9.\-]{1,20}", fullmatch=True)


OPEN = """
[http]
listen = "127.0.0.1:0"
[daemon]
state = "state.db"
[pipelines.hello.tasks.greet]
kind = "shell"
argv = ["echo", "hello"]
"""
