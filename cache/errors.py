"""What goes wrong between the cache and the server's copy of an object: the exceptions the
block cache, its whole-object streams and the write-back queue raise and catch."""
from __future__ import annotations


class Superseded(Exception):
    """The object changed while its upload was reading it; upload again later."""


class ObjectChanged(Exception):
    """The server's copy changed under a partly cached object; the cached blocks are void."""


class DataLost(Exception):
    """Data written to an object is gone from the cache (its block file was deleted under the
    mount): no upload of it can ever succeed."""
