"""Storj access grants read by mountfs (mountfs/backends/storj_grant.py) against what libuplink
(PyPI storj-uplink) makes of the same grants: serialised, shared, restricted."""
from __future__ import annotations

import time

import base58
import pytest

from mountfs.backends.storj_grant import parse
from mountfs.errors import ConfigError
from servers.storj import SATELLITE, make_grant

uplink = pytest.importorskip("storj_uplink.uplink", reason="pip install storj-uplink")
classes = pytest.importorskip("storj_uplink.module_classes")


def test_reads_what_libuplink_serialises() -> None:
    made = make_grant()
    serialised = uplink.Uplink().parse_access(made).serialize()
    grant = parse(serialised)
    assert grant.satellite == SATELLITE
    assert grant.api_key[0] == 2 and len(grant.encryption_access) > 32
    assert grant.caveats == () and grant.writable and grant.not_after is None


def test_reads_the_restrictions_of_a_shared_grant() -> None:
    access = uplink.Uplink().parse_access(make_grant())
    until = int(time.time()) + 3600
    shared = access.share(classes.Permission(allow_download=True, allow_list=True,
                                             not_after=until),
                          [classes.SharePrefix("photos", "2026/")]).serialize()
    grant = parse(shared)
    assert grant.satellite == SATELLITE
    assert not grant.writable
    assert grant.not_after == until
    [caveat] = grant.caveats
    assert caveat.disallow_writes and caveat.disallow_deletes
    assert not caveat.disallow_reads and not caveat.disallow_lists
    assert caveat.buckets == ("photos",)


def mistype_last(grant: str) -> str:
    """The grant with its last character changed (never to itself, whatever it was)."""
    return grant[:-1] + ("2" if grant[-1] != "2" else "3")


@pytest.mark.parametrize("mangle, said", [
    (lambda g: "", "is empty"),
    (lambda g: g[:10] + "0OIl" + g[14:], "not base58"),
    (mistype_last, "checksum"),
    (lambda g: g[: len(g) // 2], "checksum"),
    (lambda g: base58.b58encode_check(b"\x01" + base58.b58decode_check(g)[1:]).decode(),
     "version 1"),
    (lambda g: base58.b58encode_check(b"\x00" + base58.b58decode_check(g)[1:40]).decode(),
     "malformed"),
    (lambda g: base58.b58encode_check(b"\x00\x0a\x03abc").decode(), "no API key"),
])
def test_bad_grants_are_one_line(mangle, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(mangle(make_grant()))
    message = str(caught.value)
    assert said in message and "\n" not in message


def test_libuplink_refuses_what_mountfs_refuses() -> None:
    """The same mistyped grant is refused by both (mountfs before any network use)."""
    bad = mistype_last(make_grant())
    with pytest.raises(Exception):
        uplink.Uplink().parse_access(bad)
    with pytest.raises(ConfigError):
        parse(bad)
