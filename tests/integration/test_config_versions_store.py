"""Config versions in the store (SQLite and PostgreSQL alike): each text the daemon loads is kept once in a row,
with its hash and time; loading the latest text again adds none."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.stores import StoreAt


async def test_each_loaded_text_is_a_version_and_the_latest_again_adds_none(store_at: StoreAt):
    async with store_at.open() as store:
        first = await store.add_config_version("a = 1\n", "/etc/cued/config.toml", 10.0)
        again = await store.add_config_version("a = 1\n", "/etc/cued/config.toml", 11.0)
        second = await store.add_config_version("a = 2\n", "/etc/cued/config.toml", 12.0)
        # a rollback to the first text is a version of its own: history says what ran when
        back = await store.add_config_version("a = 1\n", "/etc/cued/config.toml", 13.0)
        listed = await store.config_versions()
        shown = await store.config_version(2)
        missing = await store.config_version(99)
    assert (first.version, again.version, second.version, back.version) == (1, 1, 2, 3)
    assert again == first
    assert first.hash == hashlib.sha256(b"a = 1\n").hexdigest()
    assert [v.version for v in listed] == [3, 2, 1]
    assert shown == second
    assert shown is not None
    assert (shown.text, shown.file, shown.loaded_at) == ("a = 2\n", "/etc/cued/config.toml", 12.0)
    assert missing is None


async def test_versions_outlive_the_store_being_closed(store_at: StoreAt):
    async with store_at.open() as store:
        await store.add_config_version("x = 1\n", "c.toml", 1.0)
    async with store_at.open() as store:
        kept = await store.config_versions()
        again = await store.add_config_version("x = 1\n", "c.toml", 2.0)
    assert [v.version for v in kept] == [1]
    assert again.version == 1
