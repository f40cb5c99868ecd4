"""Storj access grants, read offline: what a grant holds and what its API key allows.

A serialized grant is base58check (version byte 0, payload, 4 bytes of double SHA-256) over
the protobuf `pb.Scope`: satellite_addr (1, string), api_key (2, bytes: a macaroon),
encryption_access (3, bytes: `pb.EncryptionAccess`). The macaroon (storj.io/common/macaroon,
libmacaroons' v2 binary form) is version 2, packets of (field type, varint length, data):
the identifier (type 2) ending its section with 0, one section per caveat (each a protobuf
`Caveat`), 0, then the signature (type 6). A caveat says what is disallowed (reads 1, writes
2, lists 3, deletes 4), which buckets (allowed_paths 10: bucket 1, encrypted prefix 2), and
not_after (20) / not_before (21) as `google.protobuf.Timestamp`.

The few fields are read with a small protobuf reader rather than the `protobuf` package: the
messages' .proto files are storj's, not shipped anywhere installable, and four fields of three
messages do not justify generated code and a dependency. Every way a grant can be wrong (not
base58, mistyped or cut short, not a Scope, a field missing) is one `ConfigError` line, before
any network use.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import base58

from mountfs.errors import ConfigError

ACCESS_ENV = "STORJ_ACCESS"  # where uplink's tools take a grant from too
VERSION = 0
# pb.Scope
SCOPE_SATELLITE, SCOPE_API_KEY, SCOPE_ENCRYPTION = 1, 2, 3
# macaroon packets
MACAROON_VERSION, FIELD_EOS, FIELD_IDENTIFIER, FIELD_SIGNATURE = 2, 0, 2, 6
# pb.Caveat
CAVEAT_READS, CAVEAT_WRITES, CAVEAT_LISTS, CAVEAT_DELETES = 1, 2, 3, 4
CAVEAT_PATHS, CAVEAT_NOT_AFTER, CAVEAT_NOT_BEFORE = 10, 20, 21
VARINT, LENGTH_DELIMITED, FIXED64, FIXED32 = 0, 2, 1, 5


class Malformed(ValueError):
    """What is wrong with a protobuf or macaroon, for the one line a user sees."""


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise Malformed("cut short inside a number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise Malformed("a number longer than 64 bits")


def fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a protobuf message: ints for varints and fixed
    fields, bytes for length-delimited ones."""
    pos = 0
    while pos < len(data):
        key, pos = varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise Malformed("field number 0")
        if wire == VARINT:
            value, pos = varint(data, pos)
            yield number, value
        elif wire == LENGTH_DELIMITED:
            length, pos = varint(data, pos)
            if pos + length > len(data):
                raise Malformed(f"field {number} cut short")
            yield number, data[pos:pos + length]
            pos += length
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if pos + size > len(data):
                raise Malformed(f"field {number} cut short")
            yield number, int.from_bytes(data[pos:pos + size], "little")
            pos += size
        else:
            raise Malformed(f"field {number} of unknown wire type {wire}")


def message(data: bytes) -> dict[int, list[int | bytes]]:
    found: dict[int, list[int | bytes]] = {}
    for number, value in fields(data):
        found.setdefault(number, []).append(value)
    return found


def one_bytes(msg: dict[int, list[int | bytes]], number: int) -> bytes | None:
    values = [v for v in msg.get(number, []) if isinstance(v, bytes)]
    return values[-1] if values else None


def one_int(msg: dict[int, list[int | bytes]], number: int) -> int:
    values = [v for v in msg.get(number, []) if isinstance(v, int)]
    return values[-1] if values else 0


@dataclass(frozen=True)
class Caveat:
    """One restriction of the API key (uplink's Permission and SharePrefix, as shared)."""

    disallow_reads: bool = False
    disallow_writes: bool = False
    disallow_lists: bool = False
    disallow_deletes: bool = False
    buckets: tuple[str, ...] = ()  # empty: every bucket
    not_after: int | None = None  # seconds since the epoch
    not_before: int | None = None

    @classmethod
    def parse(cls, data: bytes) -> Caveat:
        msg = message(data)
        buckets = tuple(sorted({(one_bytes(message(p), 1) or b"").decode("utf-8", "replace")
                                for p in msg.get(CAVEAT_PATHS, []) if isinstance(p, bytes)}))

        def stamp(number: int) -> int | None:
            raw = one_bytes(msg, number)
            return one_int(message(raw), 1) if raw is not None else None

        return cls(bool(one_int(msg, CAVEAT_READS)), bool(one_int(msg, CAVEAT_WRITES)),
                   bool(one_int(msg, CAVEAT_LISTS)), bool(one_int(msg, CAVEAT_DELETES)),
                   buckets, stamp(CAVEAT_NOT_AFTER), stamp(CAVEAT_NOT_BEFORE))


def macaroon_caveats(api_key: bytes) -> list[Caveat]:
    """The caveats of an API key (a serialized macaroon); Malformed if it is not one."""
    if not api_key or api_key[0] != MACAROON_VERSION:
        raise Malformed("the API key is not a macaroon (version 2)")
    pos = 1
    sections: list[list[tuple[int, bytes]]] = [[]]
    signature = None
    while pos < len(api_key):
        kind = api_key[pos]
        pos += 1
        if kind == FIELD_EOS:
            sections.append([])
            continue
        length, pos = varint(api_key, pos)
        if pos + length > len(api_key):
            raise Malformed("the API key is cut short")
        if kind == FIELD_SIGNATURE:
            signature = api_key[pos:pos + length]
        else:
            sections[-1].append((kind, api_key[pos:pos + length]))
        pos += length
    if signature is None or not sections[0]:
        raise Malformed("the API key has no identifier or no signature")
    # sections: the identifier's, then one per caveat, then the empty one ending them.
    return [Caveat.parse(data) for section in sections[1:] for kind, data in section
            if kind == FIELD_IDENTIFIER]


@dataclass(frozen=True)
class Grant:
    """A parsed access grant. `text` is the serialized form (a secret: never logged)."""

    text: str = field(repr=False)
    satellite: str
    api_key: bytes = field(repr=False)
    encryption_access: bytes = field(repr=False)
    caveats: tuple[Caveat, ...] = ()

    @property
    def writable(self) -> bool:
        """Whether any caveat of the key forbids writes (uplink's allow_upload False)."""
        return not any(c.disallow_writes for c in self.caveats)

    @property
    def not_after(self) -> int | None:
        times = [c.not_after for c in self.caveats if c.not_after]
        return min(times) if times else None


def parse(text: str) -> Grant:
    """The grant in `text`; ConfigError (one line, naming what is wrong) otherwise."""
    text = text.strip()
    if not text:
        raise ConfigError("the Storj access grant is empty")
    bad = sorted({c for c in text if c not in base58.alphabet.decode()})
    if bad:
        raise ConfigError("the Storj access grant is not base58 text (it holds "
                          f"{', '.join(repr(c) for c in bad[:5])}): not an access grant")
    try:
        raw = base58.b58decode_check(text)
    except ValueError:
        raise ConfigError("the Storj access grant's checksum does not match: it is mistyped "
                          "or cut short") from None
    if raw[:1] != bytes([VERSION]):
        raise ConfigError(f"the Storj access grant has version {raw[0] if raw else None}, "
                          f"not {VERSION}: not an access grant this mountfs reads")
    try:
        scope = message(raw[1:])
        satellite = one_bytes(scope, SCOPE_SATELLITE)
        api_key = one_bytes(scope, SCOPE_API_KEY)
        encryption = one_bytes(scope, SCOPE_ENCRYPTION)
        missing = [name for name, value in (("satellite address", satellite),
                                            ("API key", api_key),
                                            ("encryption access", encryption)) if not value]
        if missing:
            raise Malformed(f"no {' and no '.join(missing)}")
        assert satellite is not None and api_key is not None and encryption is not None
        message(encryption)  # a protobuf message, or Malformed
        caveats = macaroon_caveats(api_key)
        address = satellite.decode("utf-8")
    except (Malformed, UnicodeDecodeError) as exc:
        raise ConfigError(f"the Storj access grant is malformed: {exc}") from None
    return Grant(text, address, api_key, encryption, tuple(caveats))
