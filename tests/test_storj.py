"""The Storj driver, mounted for real against the local Storj (tests/servers/storj.py: the auth
service and a gateway that takes only the credentials it minted, over the session's
moto_server): grants, registration and its cache, custom metadata as xattrs read back with
boto3, buckets, a multipart object, and `mountfs storj share` checked with libuplink."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import Mount, Mounter, run_cli
from mountfs.backends.storj_grant import parse
from servers.s3 import S3Server
from servers.storj import StorjService, make_grant
from stores import reset_s3_server, s3_client

pytestmark = pytest.mark.mounted

MiB = 1024 * 1024


@pytest.fixture
def storj(storj_service: StorjService, s3_server: S3Server) -> StorjService:
    reset_s3_server(s3_server)
    return storj_service


@pytest.fixture
def client(s3_server: S3Server) -> Any:
    """boto3 straight on the S3 server behind the gateway: what Storj stores."""
    client = s3_client(s3_server.url)
    client.create_bucket(Bucket="bucket")
    return client


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory of the test's own: what the driver keeps starts empty."""
    return tmp_path / "state"


def mount_storj(mounter: Mounter, storj: StorjService, grant: str, state: Path,
                source: str = "storj://", *options: str, name: str = "mnt") -> Mount:
    path = mounter.tmp / name
    path.mkdir(exist_ok=True)
    cache = mounter.tmp / f"cache-{name}"
    args = ["--storj-auth-service", storj.url, "--writeback-delay", "0.2", *options]
    m = Mount(source, path, cache, Path("/nonexistent"), options=args)
    run_cli("mount", source, str(path), "--cache-dir", str(cache), "-v", *args,
            env={"STORJ_ACCESS": grant, "XDG_STATE_HOME": str(state)})
    mounter.mounts.append(m)
    m.pid = m.served_status()["pid"]
    return m


def refused(storj: StorjService, grant: str, state: Path, tmp_path: Path,
            *args: str, source: str = "storj://") -> str:
    """The one line a mount that must not start prints (it exits non-zero)."""
    (tmp_path / "m").mkdir(exist_ok=True)
    proc = run_cli("mount", source, str(tmp_path / "m"), "--storj-auth-service", storj.url,
                   *args, check=False,
                   env={"STORJ_ACCESS": grant, "XDG_STATE_HOME": str(state)})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
        proc.stderr
    return proc.stderr


def kept_credentials(state: Path) -> list[Path]:
    return sorted((state / "mountfs" / "storj").glob("credentials-*.json"))


@pytest.mark.parametrize("mangle, said", [
    (lambda g: g[:-4], "checksum"),
    (lambda g: g[:5] + "0" + g[6:], "not base58"),
    (lambda g: "", "needs an access grant"),
], ids=["truncated", "mistyped", "none"])
def test_bad_grants_stop_the_mount_in_one_line_before_registering(
        storj: StorjService, tmp_path: Path, state: Path, mangle: Any, said: str) -> None:
    before = storj.registrations()
    assert said in refused(storj, mangle(make_grant()), state, tmp_path)
    assert storj.registrations() == before
    assert kept_credentials(state) == []


def test_registration_is_kept_0600_and_remounts_do_not_register_again(
        mounter: Mounter, storj: StorjService, client: Any, state: Path) -> None:
    grant = make_grant()
    m = mount_storj(mounter, storj, grant, state)
    (m.path / "bucket" / "a.txt").write_text("one")
    mounter.umount(m)
    assert storj.registrations(grant) == 1
    [kept] = kept_credentials(state)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert grant not in kept.read_text()  # credentials only; the grant stays the user's
    assert set(json.loads(kept.read_text())) == {"access_key_id", "secret_key", "endpoint"}
    m = mount_storj(mounter, storj, grant, state)
    assert (m.path / "bucket" / "a.txt").read_text() == "one"
    assert storj.registrations(grant) == 1
    assert client.get_object(Bucket="bucket", Key="a.txt")["Body"].read() == b"one"


def test_refused_credentials_are_dropped_and_the_grant_registered_again(
        mounter: Mounter, storj: StorjService, client: Any, state: Path) -> None:
    grant = make_grant()
    mounter.umount(mount_storj(mounter, storj, grant, state))
    old = kept_credentials(state)[0].read_text()
    storj.forget(grant)  # the auth service no longer knows them: the gateway refuses them
    m = mount_storj(mounter, storj, grant, state)
    assert storj.registrations(grant) == 2
    assert kept_credentials(state)[0].read_text() != old
    (m.path / "bucket" / "b.txt").write_text("two")
    os.sync()
    mounter.umount(m)
    assert client.get_object(Bucket="bucket", Key="b.txt")["Body"].read() == b"two"


def test_credentials_the_gateway_stops_taking_while_mounted_are_renewed(
        mounter: Mounter, storj: StorjService, client: Any, state: Path) -> None:
    grant = make_grant()
    # Listings trusted for no time: the read of b.txt asks the gateway.
    m = mount_storj(mounter, storj, grant, state, "storj://", "--metadata-ttl", "0")
    (m.path / "bucket" / "a.txt").write_text("one")
    storj.forget(grant)  # the gateway refuses the mount's credentials from now on
    client.put_object(Bucket="bucket", Key="b.txt", Body=b"two")
    assert (m.path / "bucket" / "b.txt").read_text() == "two"
    (m.path / "bucket" / "c.txt").write_text("three")
    os.sync()
    mounter.umount(m)
    assert storj.registrations(grant) == 2
    assert client.get_object(Bucket="bucket", Key="c.txt")["Body"].read() == b"three"
    assert client.get_object(Bucket="bucket", Key="a.txt")["Body"].read() == b"one"


@pytest.mark.parametrize("expired", [False, True], ids=["kept", "expired"])
def test_a_revoked_grant_is_one_line_and_its_credentials_are_dropped(
        mounter: Mounter, storj: StorjService, state: Path, tmp_path: Path,
        expired: bool) -> None:
    grant = make_grant()
    mounter.umount(mount_storj(mounter, storj, grant, state))
    if expired:  # the gateway answers the kept credentials InvalidAccessKeyId, not AccessDenied
        storj.forget(grant)
    storj.revoke(grant)
    try:
        assert "refused the access grant" in refused(storj, grant, state, tmp_path)
        assert kept_credentials(state) == []
        assert storj.registrations(grant) == 2  # the first mount's, and one refused
    finally:
        storj.unrevoke()


@pytest.mark.parametrize("expired", [False, True], ids=["kept", "expired"])
def test_a_grant_revoked_while_mounted_is_eacces_without_asking_at_every_request(
        mounter: Mounter, storj: StorjService, client: Any, state: Path,
        expired: bool) -> None:
    grant = make_grant()
    # Listings trusted for no time: each lookup below asks the gateway (of objects: the
    # mount lists no buckets).
    m = mount_storj(mounter, storj, grant, state, "storj://bucket", "--metadata-ttl", "0")
    if expired:  # InvalidAccessKeyId: registering the grant again is tried, and refused
        storj.forget(grant)
    storj.revoke(grant)
    try:
        before = storj.list_buckets()
        for name in ("a.txt", "b.txt", "c.txt"):
            client.put_object(Bucket="bucket", Key=name, Body=b"x")
            with pytest.raises(OSError) as caught:
                (m.path / name).read_bytes()
            assert caught.value.errno == errno.EACCES
        # One ListBuckets, and at most one registration (besides the mount's), for all the
        # refused requests.
        assert (storj.list_buckets() - before, storj.registrations(grant)) == (1, 1 + expired)
    finally:
        storj.unrevoke()


def test_xattrs_are_custom_metadata_entries_one_each(
        mounter: Mounter, storj: StorjService, client: Any, state: Path) -> None:
    client.put_object(Bucket="bucket", Key="theirs.txt", Body=b"x",
                      Metadata={"author": "ann", "project": "apollo"})
    grant = make_grant()
    m = mount_storj(mounter, storj, grant, state)
    f = m.path / "bucket" / "mine.txt"
    f.write_text("data")
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.object-expires", b"2030-01-01T00:00:00Z")
    os.setxattr(f, "user.blob", b"\x00\xff")  # no header can carry it: kept packed
    subprocess.run(["sync", str(f)], check=True)
    theirs = m.path / "bucket" / "theirs.txt"
    assert os.getxattr(theirs, "user.author") == b"ann"
    assert os.getxattr(theirs, "user.project") == b"apollo"
    theirs.write_text("rewritten")  # other tools' entries are kept on rewrite
    mounter.umount(m)
    meta = client.head_object(Bucket="bucket", Key="mine.txt")["Metadata"]
    assert meta["color"] == "blue"
    assert meta["object-expires"] == "2030-01-01T00:00:00Z"
    assert "blob" not in meta and "user.blob" in meta["xattr"]
    assert "color" not in meta["xattr"]
    theirs_meta = client.head_object(Bucket="bucket", Key="theirs.txt")["Metadata"]
    assert theirs_meta["author"] == "ann" and theirs_meta["project"] == "apollo"
    assert client.get_object(Bucket="bucket", Key="theirs.txt")["Body"].read() == b"rewritten"
    m = mount_storj(mounter, storj, grant, state)
    f = m.path / "bucket" / "mine.txt"
    assert os.getxattr(f, "user.color") == b"blue"
    assert os.getxattr(f, "user.blob") == b"\x00\xff"
    os.removexattr(f, "user.color")
    mounter.umount(m)
    assert "color" not in client.head_object(Bucket="bucket", Key="mine.txt")["Metadata"]


def test_buckets_are_made_and_removed_at_the_root(
        mounter: Mounter, storj: StorjService, client: Any, state: Path) -> None:
    m = mount_storj(mounter, storj, make_grant(), state)
    (m.path / "photos").mkdir()
    assert "photos" in [b["Name"] for b in client.list_buckets()["Buckets"]]
    (m.path / "photos" / "p.jpg").write_bytes(b"jpg")
    os.sync()
    with pytest.raises(OSError) as caught:
        (m.path / "photos").rmdir()
    assert caught.value.errno == errno.ENOTEMPTY
    (m.path / "photos" / "p.jpg").unlink()
    (m.path / "photos").rmdir()
    assert "photos" not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_a_missing_bucket_is_made_only_when_asked(
        mounter: Mounter, storj: StorjService, client: Any, state: Path,
        tmp_path: Path) -> None:
    grant = make_grant()
    said = refused(storj, grant, state, tmp_path, source="storj://fresh/docs")
    assert "no bucket 'fresh'" in said and "--storj-create" in said
    m = mount_storj(mounter, storj, grant, state, "storj://fresh/docs", "--storj-create")
    (m.path / "a.txt").write_text("a")
    mounter.umount(m)
    assert client.get_object(Bucket="fresh", Key="docs/a.txt")["Body"].read() == b"a"


def test_a_200_mib_file_goes_up_in_64_mib_parts(
        mounter: Mounter, storj: StorjService, client: Any, state: Path) -> None:
    m = mount_storj(mounter, storj, make_grant(), state)
    digest = hashlib.sha256()
    with open(m.path / "bucket" / "big.bin", "wb") as f:
        for i in range(200):
            block = bytes([i]) * MiB
            digest.update(block)
            f.write(block)
    mounter.umount(m)
    head = client.head_object(Bucket="bucket", Key="big.bin")
    assert head["ContentLength"] == 200 * MiB
    assert head["ETag"].strip('"').endswith("-4")  # 64 + 64 + 64 + 8 MiB
    part = client.head_object(Bucket="bucket", Key="big.bin", PartNumber=1)
    assert part["ContentLength"] == 64 * MiB
    got = hashlib.sha256()
    for chunk in client.get_object(Bucket="bucket", Key="big.bin")["Body"].iter_chunks(8 * MiB):
        got.update(chunk)
    assert got.digest() == digest.digest()


def test_storj_limits_are_edquot(mounter: Mounter, storj: StorjService, client: Any,
                                 state: Path) -> None:
    m = mount_storj(mounter, storj, make_grant(), state)
    fd = os.open(m.path / "bucket" / "over.bin", os.O_WRONLY | os.O_CREAT)
    storj.refuse({"PutObject"}, 403, "BandwidthLimitExceeded")
    try:
        os.write(fd, b"x")
        with pytest.raises(OSError) as caught:
            os.fsync(fd)
        assert caught.value.errno == errno.EDQUOT
        with contextlib.suppress(OSError):  # close may report the upload's error again
            os.close(fd)
        run_cli("discard", str(m.path), "bucket/over.bin")  # before a retry could succeed
    finally:
        storj.refuse(set())
    assert "BandwidthLimitExceeded" in (m.cache / "mountfs.log").read_text()


uplink = pytest.importorskip("storj_uplink.uplink", reason="pip install storj-uplink")


def test_share_gives_a_grant_libuplink_parses_with_the_restrictions(
        mounter: Mounter, storj: StorjService, client: Any, state: Path,
        tmp_path: Path) -> None:
    grant = make_grant()
    (tmp_path / "grant").write_text(grant)
    shared = run_cli("storj", "share", "storj://bucket/docs/", "--readonly", "--not-after",
                     "2030-01-01T00:00:00", "--access-file", str(tmp_path / "grant"))
    text = shared.stdout.strip()
    uplink.Uplink().parse_access(text)  # libuplink takes it
    restricted = parse(text)
    [caveat] = restricted.caveats
    assert caveat.disallow_writes and caveat.disallow_deletes and not caveat.disallow_reads
    assert caveat.buckets == ("bucket",)
    assert restricted.not_after == 1893456000  # 2030-01-01 UTC
    # The same from a path on a mount; a read-only grant mounts read-only.
    m = mount_storj(mounter, storj, grant, state)
    (m.path / "bucket" / "docs").mkdir()
    on_mount = run_cli("storj", "share", str(m.path / "bucket" / "docs"), "--writeable",
                       env={"STORJ_ACCESS": grant}).stdout.strip()
    [caveat] = parse(on_mount).caveats
    assert caveat.buckets == ("bucket",) and not caveat.disallow_writes
    ro = mount_storj(mounter, storj, text, state, "storj://bucket/docs", name="ro")
    with pytest.raises(OSError) as caught:
        (ro.path / "new.txt").write_text("no")
    assert caught.value.errno == errno.EROFS


def test_share_without_libuplink_says_how_to_install(tmp_path: Path) -> None:
    (tmp_path / "storj_uplink").mkdir()
    (tmp_path / "storj_uplink" / "__init__.py").write_text("")  # no libuplink.so in it
    proc = run_cli("storj", "share", "storj://bucket", "--readonly", check=False,
                   env={"STORJ_ACCESS": make_grant(),
                        "PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode != 0 and "pip install" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
