"""What DCSS says on the wire, read into plain records: the authorize service's envelope, S3
listing XML and S3 error replies, and DCSS's multi-part convention (`KEY.000`, `KEY.001`, …).

No I/O here: `mountfs.backends.dcss` sends the requests and hands the replies over.
"""
from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from mountfs.backends.http import status_error
from mountfs.errors import BackendError, NoSuchBucket

# Object metadata of DCSS's own (x-amz-meta-<name>), written by the official client on every
# object: how many objects the file was split into, and the uploader's user id.
META_PARTS = "number-of-parts"
META_OWNER = "owner-id"
PART_NAME = re.compile(r"(?s)(.+)\.(\d{3,})")


def part_key(key: str, index: int) -> str:
    """The object holding part `index` of a file split by DCSS's convention."""
    return f"{key}.{index:03d}"


def combined_etag(etags: list[str]) -> str:
    """One ETag for a file stored as parts: it changes whenever any part changes."""
    digest = hashlib.md5("/".join(etags).encode()).hexdigest()
    return f"{digest}-{len(etags)}"


def api_error(status: int, body: bytes, what: str,
              retry_after: float | None = None) -> BackendError:
    """The error for an authorize reply that gives no URL: its status mapped as every HTTP
    status is (`status_error`), with the service's own messages."""
    return status_error(status, f"DCSS authorize {what}: HTTP {status}: "
                                f"{envelope_messages(body)}", retry_after)


def envelope_messages(body: bytes) -> str:
    """The `messages` of a {success, messages, result} reply, else the start of the body."""
    try:
        reply = json.loads(body)
        text = "; ".join(str(m) for m in reply["messages"])
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace")
    return " ".join(text.split()) or "(no message)"  # one line in the log and on stderr


def envelope_url(body: bytes) -> str | None:
    """The presigned URL of a successful reply; None if the reply says it failed."""
    try:
        reply = json.loads(body)
        if reply.get("success") is True:
            url = reply["result"]["url"]
            return url if isinstance(url, str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def s3_error(status: int, body: bytes, what: str,
             retry_after: float | None = None) -> BackendError:
    """The error for an S3 reply of `status` (HEAD replies have no body to read a code from)."""
    code = ""
    if body:
        try:
            root = ET.fromstring(body)
            code = next((el.text or "" for el in root.iter() if local(el.tag) == "Code"), "")
        except ET.ParseError:
            pass
    text = f"S3 {what}: HTTP {status} {code}".strip()
    if code == "NoSuchBucket":
        return NoSuchBucket(text)
    return status_error(status, text, retry_after)


def local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rpartition("}")[2]


@dataclass
class ListedObject:
    key: str
    size: int
    last_modified: str
    etag: str


@dataclass
class ListingPage:
    objects: list[ListedObject] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    next_token: str | None = None
    truncated: bool = False
    delimited: bool = False  # the server applied the delimiter asked for

    def first(self) -> str | None:
        """The least key or prefix of the page."""
        return min([o.key for o in self.objects[:1]] + self.prefixes[:1], default=None)

    def last(self) -> str | None:
        """The greatest key or prefix of the page."""
        return max([o.key for o in self.objects[-1:]] + self.prefixes[-1:], default=None)


def parse_listing(body: bytes) -> ListingPage:
    """A ListBucketResult (V2, or V1 with the same elements)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BackendError(f"S3 listing: not XML ({exc})") from None
    page = ListingPage()
    encoded = False
    for el in root:
        tag = local(el.tag)
        if tag == "Contents":
            fields = {local(child.tag): child.text or "" for child in el}
            page.objects.append(ListedObject(fields.get("Key", ""), int(fields.get("Size") or 0),
                                             fields.get("LastModified", ""),
                                             fields.get("ETag", "").strip('"')))
        elif tag == "CommonPrefixes":
            page.prefixes += [child.text or "" for child in el if local(child.tag) == "Prefix"]
        elif tag == "NextContinuationToken":
            page.next_token = el.text
        elif tag == "IsTruncated":
            page.truncated = (el.text or "").strip().lower() == "true"
        elif tag == "Delimiter":
            page.delimited = bool(el.text)
        elif tag == "EncodingType":
            encoded = (el.text or "").strip() == "url"
    if encoded:  # presigned listings ask for it (boto3 does): keys arrive %-encoded
        for obj in page.objects:
            obj.key = urllib.parse.unquote_plus(obj.key)
        page.prefixes = [urllib.parse.unquote_plus(p) for p in page.prefixes]
    return page


@dataclass
class PartRun:
    """The objects `BASE.000`, `BASE.001`, … met in a listing, in order. `base_listed`: an
    object named BASE itself was listed (the official client reads that, not the parts)."""

    base: str
    parts: list[ListedObject] = field(default_factory=list)
    base_listed: bool = False

    def takes(self, obj: ListedObject) -> bool:
        """Whether `obj` is this run's next part."""
        return obj.key == part_key(self.base, len(self.parts))


class PartFolder:
    """Sorts a listing's objects, fed in key order, into runs of parts and the others."""

    def __init__(self) -> None:
        self.run: PartRun | None = None
        # Listed keys, each a prefix of the next. Every key between BASE and BASE.000 starts
        # with BASE, so BASE, if listed, is still here when its first part comes.
        self.chain: list[str] = []

    def feed(self, obj: ListedObject) -> list[ListedObject | PartRun]:
        """What `obj` settles: objects to list as they are, and runs that are complete."""
        settled: list[ListedObject | PartRun] = []
        if self.run is not None:
            if self.run.takes(obj):
                self.run.parts.append(obj)
                return settled
            if not obj.key.startswith(self.run.base + "."):  # past every key of the run
                settled.append(self._close())
        while self.chain and not obj.key.startswith(self.chain[-1]):
            self.chain.pop()
        match = PART_NAME.fullmatch(obj.key)
        if self.run is None and match and match.group(2) == "000":
            self.run = PartRun(match.group(1), [obj])
            return settled
        self.chain.append(obj.key)
        settled.append(obj)
        return settled

    def finish(self) -> list[ListedObject | PartRun]:
        """The run still open when the listing ends."""
        return [self._close()] if self.run is not None else []

    def _close(self) -> PartRun:
        run, self.run = self.run, None
        assert run is not None
        run.base_listed = run.base in self.chain
        return run
