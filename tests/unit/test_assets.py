"""An asset's source and event ids are spelled in one place, and asset sources are one
range of source names (what the store scans for the list of assets)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cued.daemon.core.assets import ASSET_SOURCES, asset_event_id, asset_of, asset_source


@given(st.text())
def test_every_asset_source_sorts_in_the_range_and_names_its_asset(asset: str) -> None:
    low, high = ASSET_SOURCES
    source = asset_source(asset)
    assert low <= source < high
    assert asset_of(source) == asset


@given(st.text())
def test_a_source_in_the_range_is_an_assets_and_one_outside_is_not(source: str) -> None:
    low, high = ASSET_SOURCES
    assert (asset_of(source) is not None) == (low <= source < high)


def test_an_asset_event_id_names_the_asset_and_the_run() -> None:
    assert asset_event_id("orders", "r1") == "asset:orders:r1"
    assert asset_source("orders") == "asset:orders"
    assert asset_of("orders") is None
