"""Several daemons share one PostgreSQL database (each holds its lock shared); ``cued store
copy`` holds it alone, so it never copies into a database daemons run on, and no daemon
starts on one it copies into."""

from __future__ import annotations

import pytest

from cued.daemon.errors import StoreError
from cued.daemon.store.postgresql import open_pg_store
from tests.support.stores import fresh_database


async def test_daemons_share_the_lock_and_a_copy_holds_it_alone():
    async with fresh_database() as url:
        async with open_pg_store(url, shared=True), open_pg_store(url, shared=True) as second:
            await second.ping()
            with pytest.raises(StoreError, match="another cued daemon is running on"):
                async with open_pg_store(url, exclusive=True):
                    pass
        async with open_pg_store(url, exclusive=True):
            with pytest.raises(StoreError, match=r"is held alone by another program"):
                async with open_pg_store(url, shared=True):
                    pass
