"""The S3 server (s3rver on 127.0.0.1) and boto3 against it.

`Store` is both the referee (is the object complete on the server yet? are all the small files
there?) and the baseline: what a good client gets from the same server (multipart PUT and
parallel ranged GET with 8 MiB parts on 8 threads, 8 threads of small PUTs, a paginated list).
"""
from __future__ import annotations

import io
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchlib.procs import BenchError, stop_process, wait_until

ACCESS_KEY = "S3RVER"
SECRET_KEY = "S3RVER"
REGION = "us-east-1"
BUCKET = "bench"
PART = 8 * 1024 * 1024
THREADS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def credentials_env() -> dict[str, str]:
    """What every client (mountfs, boto3) needs to reach s3rver, and only s3rver."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class S3rver:
    """s3rver from npm on a free port of 127.0.0.1, storing in `data_dir`."""

    def __init__(self, exe: Path, data_dir: Path, log_file: Path,
                 extra_env: Mapping[str, str]) -> None:
        self.exe, self.data_dir, self.log_file = exe, data_dir, log_file
        self.extra_env = dict(extra_env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                [str(self.exe), "-d", str(self.data_dir), "-a", "127.0.0.1",
                 "-p", str(self.port), "-s"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.extra_env}, start_new_session=True)

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"s3rver exited: {self.log_file.read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, timeout=timeout, interval=0.1, what="s3rver to listen")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class ZeroReader(io.RawIOBase):
    """`size` zero bytes as a non-seekable stream (what dd if=/dev/zero writes)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


class Store:
    def __init__(self, url: str, bucket: str = BUCKET, data_dir: Path | None = None) -> None:
        import boto3
        import botocore.config

        self.bucket = bucket
        self.data_dir = data_dir  # s3rver's, for `stored_size`
        config = botocore.config.Config(
            max_pool_connections=4 * THREADS, retries={"mode": "standard", "max_attempts": 3},
            s3={"addressing_style": "path"}, connect_timeout=10, read_timeout=120,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, config=config)

    def create_bucket(self) -> None:
        self.client.create_bucket(Bucket=self.bucket)

    # --- the referee -------------------------------------------------------------------------

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def stored_size(self, key: str) -> int | None:
        """The size of `key` once s3rver has stored it whole, read from its data directory
        (the object's file, its MD5 and metadata sidecars written last), else by a HEAD. The
        large writes are polled so: a HEAD or a listing while s3rver writes an object (its
        CompleteMultipartUpload) makes it read and MD5 the partial object, at every poll, so
        the referee's polls would slow the server it times the tool against (boto3 is not
        polled)."""
        if self.data_dir is None:
            return self.size(key)
        stored = self.data_dir / self.bucket / f"{key}._S3rver_"
        try:
            if not all((stored.parent / f"{stored.name}{n}").exists()
                       for n in ("object.md5", "metadata.json")):
                return None
            return (stored.parent / f"{stored.name}object").stat().st_size
        except OSError:
            return None

    def keys(self, prefix: str, start_after: str = "", delimiter: str = "") -> Iterable[str]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        if delimiter:
            kwargs["Delimiter"] = delimiter
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                yield obj["Key"]
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"]

    def wait_for_keys(self, keys: list[str], timeout: float) -> None:
        """Until every key of the sorted list `keys` (sharing a prefix) is listed. Each poll
        lists only after the longest prefix of `keys` already seen, so polling stays cheap."""
        prefix = os.path.commonprefix(keys)
        seen: set[str] = set()
        done = 0
        deadline = time.monotonic() + timeout
        while True:
            seen.update(self.keys(prefix, start_after=keys[done - 1] if done else ""))
            while done < len(keys) and keys[done] in seen:
                done += 1
            if done == len(keys):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"only {done} of {len(keys)} objects on the server after "
                                 f"{timeout:.0f} s")
            time.sleep(0.1)

    def delete_prefix(self, prefix: str) -> None:
        batch: list[dict[str, str]] = []
        for key in list(self.keys(prefix)):
            batch.append({"Key": key})
            if len(batch) == 1000:
                self._delete(batch)
                batch = []
        if batch:
            self._delete(batch)

    def _delete(self, batch: list[dict[str, str]]) -> None:
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    # --- what a good client gets (the baselines) ---------------------------------------------

    def put_zeros(self, key: str, size: int) -> None:
        """Multipart PUT (8 MiB parts, 8 threads) of `size` zero bytes; a plain PUT if small."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                                max_concurrency=THREADS, use_threads=True)
        self.client.upload_fileobj(ZeroReader(size), self.bucket, key, Config=config)

    def parallel_get(self, key: str, size: int) -> int:
        """GET of the whole object as ranged GETs of 8 MiB on 8 threads; returns the bytes."""
        def part(offset: int) -> int:
            end = min(offset + PART, size) - 1
            body = self.client.get_object(Bucket=self.bucket, Key=key,
                                          Range=f"bytes={offset}-{end}")["Body"]
            n = 0
            for chunk in body.iter_chunks(1024 * 1024):
                n += len(chunk)
            return n

        with ThreadPoolExecutor(THREADS) as pool:
            return sum(pool.map(part, range(0, size, PART)))

    def put_many(self, keys: list[str], size: int) -> None:
        body = b"x" * size

        def put(key: str) -> None:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(put, keys))

    def list_count(self, prefix: str) -> int:
        """A paginated ListObjectsV2 of a directory-like prefix (with the delimiter)."""
        return sum(1 for _ in self.keys(prefix, delimiter="/"))

    def copy_delete(self, src: str, dst: str) -> None:
        self.client.copy_object(Bucket=self.bucket, Key=dst,
                                CopySource={"Bucket": self.bucket, "Key": src})
        self.client.delete_object(Bucket=self.bucket, Key=src)
