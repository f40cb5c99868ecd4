"""The store behind a mount, seen directly (not through the mount), the same way for every backend.

A test looks at its store through a `StorePath`: for `local` that is the store directory itself
(a `pathlib.Path`); for `s3` an `S3Path`, which offers the same few `pathlib` methods over boto3.
The first component below the store's root is a bucket, the rest a key, as on the mount:

    store / "bucket" / "dir" / "f"      the object `dir/f` of bucket `bucket`
    (...).read_bytes(), .write_bytes()  get and put it (FileNotFoundError when it is absent)
    (...).is_dir(), .exists()           a directory is a `dir/` marker or a prefix of keys
    (...).mkdir(), .iterdir()           at the root: create a bucket, list the buckets

How to start each driver's store, mount it and what its uploads leave behind is the driver's
test kit (tests/kits/); this module holds only the driver-neutral ways of looking at a store.
"""
from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import boto3
from botocore.exceptions import ClientError

from servers.s3 import CREDENTIALS, S3Server


class StorePath(Protocol):
    """The part of `pathlib.Path` the tests use on a store."""

    @property
    def name(self) -> str: ...
    def __truediv__(self, name: str) -> StorePath: ...
    def read_bytes(self) -> bytes: ...
    def write_bytes(self, data: bytes) -> int: ...
    def exists(self) -> bool: ...
    def is_dir(self) -> bool: ...
    def mkdir(self) -> None: ...
    def iterdir(self) -> Iterator[StorePath]: ...


def names(path: StorePath) -> list[str]:
    """The sorted names in a store directory (at the root: the buckets)."""
    return sorted(p.name for p in path.iterdir())


def tree(path: StorePath) -> set[str]:
    """Every entry below `path`, relative to it, directories with a trailing '/'. Works for a
    store and for a mounted or plain directory alike."""
    out: set[str] = set()

    def walk(p: StorePath, rel: str) -> None:
        for child in p.iterdir():
            if child.is_dir():
                out.add(f"{rel}{child.name}/")
                walk(child, f"{rel}{child.name}/")
            else:
                out.add(rel + child.name)

    walk(path, "")
    return out


class S3Path:
    """A bucket, a key or a key prefix on an S3 server: `StorePath` over boto3.

    `shown` maps the names a mount shows for buckets to the S3 buckets they are (DCSS's space
    `private` is `duckietown-private-storage`); with it, the root lists only those buckets, by
    the names shown. Without it every bucket is shown by its own name."""

    def __init__(self, client: Any, url: str, bucket: str = "", key: str = "",
                 shown: Mapping[str, str] | None = None) -> None:
        self.client, self.url, self.bucket, self.key = client, url, bucket, key
        self.shown = shown

    def __repr__(self) -> str:
        return f"S3Path({self.url}/{self.real_bucket}/{self.key})"

    @property
    def real_bucket(self) -> str:
        """The S3 bucket this path is in (`bucket` is its name on the mount)."""
        return self.shown[self.bucket] if self.shown and self.bucket else self.bucket

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1] if self.key else self.bucket

    def __truediv__(self, name: str) -> S3Path:
        parts = [p for p in f"{self.bucket}/{self.key}/{name}".split("/") if p]
        return S3Path(self.client, self.url, parts[0], "/".join(parts[1:]), self.shown)

    def put_key(self, key: str, data: bytes) -> None:
        """Put `data` under `key` below this path as given, unchecked ('..', '//', NUL: what
        `/` would normalise away)."""
        prefix = self.key + "/" if self.key else ""
        self.client.put_object(Bucket=self.real_bucket, Key=prefix + key, Body=data)

    def _missing(self, exc: ClientError) -> bool:
        code = exc.response.get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")

    def is_file(self) -> bool:
        if not self.key:
            return False
        try:
            self.client.head_object(Bucket=self.real_bucket, Key=self.key)
        except ClientError as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def is_dir(self) -> bool:
        if not self.bucket:
            return True
        try:
            if not self.key:
                self.client.head_bucket(Bucket=self.real_bucket)
                return True
            listing = self.client.list_objects_v2(Bucket=self.real_bucket,
                                                  Prefix=self.key + "/", MaxKeys=1)
        except ClientError as exc:
            if self._missing(exc):
                return False
            raise
        return listing.get("KeyCount", 0) > 0

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def read_bytes(self) -> bytes:
        if not self.key:
            raise IsADirectoryError(repr(self))
        try:
            return self.client.get_object(Bucket=self.real_bucket, Key=self.key)["Body"].read()
        except ClientError as exc:
            if not self._missing(exc):
                raise
        if self.is_dir():
            raise IsADirectoryError(repr(self))
        raise FileNotFoundError(repr(self))

    def write_bytes(self, data: bytes) -> int:
        """A put by another tool: an object without mountfs's metadata."""
        self.client.put_object(Bucket=self.real_bucket, Key=self.key, Body=data)
        return len(data)

    def mkdir(self) -> None:
        """At the root a bucket, below it an empty-directory marker `key/`."""
        if not self.key:
            self.client.create_bucket(Bucket=self.real_bucket)
        else:
            self.client.put_object(Bucket=self.real_bucket, Key=self.key + "/", Body=b"")

    def iterdir(self) -> Iterator[S3Path]:
        if not self.bucket:
            if self.shown is not None:
                real = {b["Name"] for b in self.client.list_buckets()["Buckets"]}
                yield from (self / name for name, b in self.shown.items() if b in real)
                return
            for b in self.client.list_buckets()["Buckets"]:
                yield self / b["Name"]
            return
        prefix = self.key + "/" if self.key else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.real_bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for p in page.get("CommonPrefixes", []):
                yield self / p["Prefix"][len(prefix):]
            for o in page.get("Contents", []):
                if o["Key"] != prefix:  # the directory's own marker
                    yield self / o["Key"][len(prefix):]

    def multipart_uploads(self) -> list[str]:
        """`bucket/key` of every multipart upload begun and neither completed nor aborted."""
        return [f"{b.name}/{u['Key']}" for b in self.iterdir() if isinstance(b, S3Path)
                for u in self.client.list_multipart_uploads(Bucket=b.real_bucket)
                .get("Uploads", [])]



def reset_s3_server(server: S3Server) -> None:
    """Clear the server of everything (buckets of earlier tests too)."""
    urllib.request.urlopen(urllib.request.Request(server.url + "/moto-api/reset",
                                                  method="POST"), timeout=30).close()


def s3_client(url: str) -> Any:
    """boto3 on the S3 server at `url`, with the test credentials."""
    return boto3.client("s3", endpoint_url=url,
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        region_name=CREDENTIALS["AWS_DEFAULT_REGION"])
