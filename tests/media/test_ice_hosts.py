import aioice.ice

from bridge.media.ice import restrict_host_addresses


def test_ice_host_addresses_restrict_what_aioice_gathers_on() -> None:
    original = aioice.ice.get_host_addresses
    try:
        restrict_host_addresses(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]
        restrict_host_addresses([])  # empty keeps whatever is in place
        assert aioice.ice.get_host_addresses(False, True) == ["::1"]
    finally:
        aioice.ice.get_host_addresses = original
