"""The Metadisk driver mounted, against the session's local bridge (tests/servers/metadisk.py):
the pymdc README's whole flow from the command line (register, activate, keys, mount, mkdir a
bucket, copy files in, list, read back after a remount with an empty cache, rename, delete),
two names of one content, two mounts signing with one key at once, and the refusals.

The shared mounted suites do not run on Metadisk (its kit is not mountable: files in a bucket
are flat); these tests mount it themselves, through the same Mounter.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import threading
from pathlib import Path

import ecdsa
import pytest

from conftest import Mounter, run_cli
from kits import Store, environment
from kits.metadisk import KIT, MetadiskPath, MetadiskService
from servers.metadisk import SHARD_SIZE
from mountfs.backends.base import Backend
from mountfs.backends.metadisk_wire import KeyPair
from mountfs.backends.registry import open_source
from mountfs.errors import QuotaExceeded

PASSWORD = "correct horse"
FAST = ("--writeback-delay", "0.2")


def account(service: MetadiskService, tmp_path: Path, email: str) -> Store:
    """A new account made with the account commands, its key in a state dir of its own; the
    store the mounts of it see."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "METADISK_BRIDGE": service.server.source,
           "METADISK_EMAIL": "", "METADISK_PASSWORD": ""}
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    cli = ["metadisk"]
    out = run_cli(*cli, "register", email, "--password-file", str(password_file), env=env)
    assert f"registered {email}" in out.stdout
    taken = run_cli(*cli, "register", email, "--password-file", str(password_file), env=env,
                    check=False)
    assert (taken.returncode, taken.stderr) == (1, "mountfs: register: Email is already "
                                                   "registered\n")
    bad = run_cli(*cli, "activate", "0" * 64, env=env, check=False)
    assert (bad.returncode, bad.stderr) == (1, "mountfs: activate: Invalid activation token\n")
    token = service.bridge.activation_token(email)
    assert run_cli(*cli, "activate", token, env=env).stdout == f"activated {email}\n"
    public = run_cli(*cli, "keys", "generate", env=env).stdout.split()[0]
    key_file = tmp_path / "state" / "mountfs" / "metadisk" / "key.pem"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert KeyPair.load(key_file).public == public and public[:2] in ("02", "03")
    unregistered = run_cli(*cli, "keys", "list", env=env, check=False)
    assert (unregistered.returncode, unregistered.stderr) == \
        (1, "mountfs: list keys: Public key not registered\n")
    run_cli(*cli, "keys", "add", "--email", email, "--password-file", str(password_file),
            env=env)
    assert run_cli(*cli, "keys", "list", env=env).stdout == public + "\n"
    return Store(KIT, MetadiskPath(service, email=email), service.server.source, env=env)


@pytest.fixture
def service(metadisk_service: MetadiskService) -> MetadiskService:
    metadisk_service.bridge.reset()
    return metadisk_service


def test_the_seed_flow_from_the_command_line(service: MetadiskService, mounter: Mounter,
                                             tmp_path: Path) -> None:
    store = account(service, tmp_path, "flow@example.org")
    service.bridge.refusals.clear()  # account() tried an unregistered key on purpose
    m = mounter.mount(store, *FAST)
    (m.path / "My cat pictures").mkdir()
    bucket = m.path / "My cat pictures"
    assert (store.root / "My cat pictures").is_dir()
    big = tmp_path / "big.bin"
    # Three shards: two whole ones and a short last one.
    big.write_bytes(os.urandom(SHARD_SIZE * 2 + 1000))
    small = tmp_path / "san_francisco.jpg"
    small.write_bytes(b"\xff\xd8 a small picture")
    subprocess.run(["cp", str(big), str(small), str(bucket)], check=True)
    assert sorted(os.listdir(bucket)) == ["big.bin", "san_francisco.jpg"]
    mounter.umount(m)  # uploads what is queued
    stored = store.root / "My cat pictures"
    assert (stored / "big.bin").read_bytes() == big.read_bytes()
    assert hashlib.sha256((stored / "san_francisco.jpg").read_bytes()).digest() == \
        hashlib.sha256(small.read_bytes()).digest()

    again = mounter.mount(store, *FAST, name="again")  # an empty cache: read from the nodes
    bucket = again.path / "My cat pictures"
    assert sorted(os.listdir(bucket)) == ["big.bin", "san_francisco.jpg"]
    assert os.stat(bucket / "big.bin").st_size == SHARD_SIZE * 2 + 1000
    assert (bucket / "big.bin").read_bytes() == big.read_bytes()
    os.rename(bucket / "san_francisco.jpg", bucket / "sf.jpg")
    assert sorted(os.listdir(bucket)) == ["big.bin", "sf.jpg"]
    assert (bucket / "sf.jpg").read_bytes() == small.read_bytes()
    os.unlink(bucket / "big.bin")
    with pytest.raises(OSError) as not_empty:
        os.rmdir(bucket)
    assert not_empty.value.errno == errno.ENOTEMPTY
    mounter.umount(again)
    assert sorted(p.name for p in stored.iterdir()) == ["sf.jpg"]
    assert (stored / "sf.jpg").read_bytes() == small.read_bytes()
    assert service.bridge.refusals == []
    public = run_cli("metadisk", "keys", "list", env=store.env).stdout.strip()
    assert run_cli("metadisk", "keys", "delete", env=store.env).stdout == f"deleted {public}\n"
    gone = run_cli("mount", store.source, str(tmp_path / "again"), env=store.env, check=False)
    assert gone.returncode != 0 and "Public key not registered" in gone.stderr


def test_two_names_one_content(service: MetadiskService, mounter: Mounter,
                               store_kit: Store) -> None:
    m = mounter.mount(store_kit, *FAST)
    b = m.path / store_kit.bucket
    (b / "a").write_bytes(b"same bytes")
    subprocess.run(["cp", str(b / "a"), str(b / "b")], check=True)
    (b / "c").write_bytes(b"same bytes")  # written, not copied: uploaded again, an upsert
    mounter.umount(m)
    stored = store_kit.stored
    assert sorted(p.name for p in stored.iterdir()) == ["a", "b", "c"]
    assert len(stored.hashes()) == 2  # the content once, and the name index
    m = mounter.remount(m)
    os.unlink(b / "a")  # one way: the first name goes, the others keep the content
    assert (b / "b").read_bytes() == b"same bytes"
    os.unlink(b / "c")  # the other: the latest upload's name goes
    assert (b / "b").read_bytes() == b"same bytes"
    (b / "d").write_bytes(b"same bytes")
    (b / "b").write_bytes(b"new bytes")  # overwritten: the old content stays for d
    mounter.umount(m)
    assert sorted(p.name for p in stored.iterdir()) == ["b", "d"]
    assert (stored / "d").read_bytes() == b"same bytes"
    assert (stored / "b").read_bytes() == b"new bytes"
    assert len(stored.hashes()) == 3  # two contents and the name index: nothing left behind


@pytest.fixture
def store_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return KIT.make_store(request, tmp_path / "store")


def test_files_are_flat_and_attributes_live_with_the_mount(mounter: Mounter,
                                                           store_kit: Store) -> None:
    (store_kit.stored / "other.txt").write_bytes(b"from another client")
    m = mounter.mount(store_kit, *FAST)
    b = m.path / store_kit.bucket
    with pytest.raises(OSError) as flat:
        (b / "dir").mkdir()
    assert flat.value.errno == errno.EPERM
    log = (m.cache / "mountfs.log").read_text()
    assert log.count("files in a Metadisk bucket are flat") == 1
    with pytest.raises(OSError) as no_links:  # the bridge would keep no mode to say so
        os.symlink("/somewhere", b / "link")
    assert no_links.value.errno == errno.EPERM
    (b / "f").write_bytes(b"x")
    os.chmod(b / "f", 0o600)
    assert os.stat(b / "f").st_mode & 0o777 == 0o600  # kept for the mount's life
    assert (b / "other.txt").read_bytes() == b"from another client"


def test_two_mounts_one_key_writing_at_once(service: MetadiskService, mounter: Mounter,
                                            store_kit: Store) -> None:
    first = mounter.mount(store_kit, *FAST, name="one")
    second = mounter.mount(store_kit, *FAST, name="two")
    service.make_bucket("second")

    def write(m: Path, bucket: str, tag: str) -> None:
        for i in range(15):
            (m / bucket / f"{tag}{i}").write_bytes(f"{tag} {i}".encode())
            os.listdir(m / bucket)  # signed listings, interleaved with the other mount's

    threads = [threading.Thread(target=write, args=(first.path, store_kit.bucket, "a")),
               threading.Thread(target=write, args=(second.path, "second", "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mounter.umount(first)
    mounter.umount(second)
    assert service.bridge.refusals == []  # no nonce refused
    assert sorted(p.name for p in store_kit.stored.iterdir()) == \
        sorted(f"a{i}" for i in range(15))
    assert (store_kit.root / "second" / "b7").read_bytes() == b"b 7"


def test_refusals_at_mount(service: MetadiskService, mounter: Mounter, store_kit: Store,
                           tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.pem"
    KeyPair.generate().save(stranger)
    other_curve = tmp_path / "p256.pem"
    other_curve.write_bytes(ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).to_pem())
    cases = {
        "not a key": (store_kit.source, ["--metadisk-key-file", str(tmp_path / "password")],
                      {}, "holds no secp256k1 key"),
        "another curve": (store_kit.source, ["--metadisk-key-file", str(other_curve)], {},
                          "holds a NIST256p key, not secp256k1"),
        "key not registered": (store_kit.source, ["--metadisk-key-file", str(stranger)], {},
                               "Public key not registered"),
        "no bridge there": ("metadisk://127.0.0.1:9", ["--metadisk-key-file",
                                                       str(store_kit.options[1])], {},
                            "127.0.0.1"),
        "bad source": ("metadisk:127.0.0.1", [], {}, "metadisk://HOST[:PORT]"),
        "wrong password": (store_kit.source, [], {"METADISK_EMAIL": "kit@example.org",
                                                  "METADISK_PASSWORD": "wrong"},
                           "Invalid email or password"),
    }
    (tmp_path / "password").write_text("not a PEM\n")
    for what, (source, options, env, says) in cases.items():
        point = tmp_path / what.replace(" ", "-")
        point.mkdir()
        proc = run_cli("mount", source, str(point), "--cache-dir", str(tmp_path / "c"),
                       *options, env={"MOUNTFS_CONNECT_TIMEOUT": "2", **env}, check=False,
                       timeout=120)
        assert proc.returncode != 0, what
        assert proc.stderr.count("\n") == 1 and says in proc.stderr, (what, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_quota_is_edquot(service: MetadiskService, mounter: Mounter, store_kit: Store) -> None:
    service.bridge.gigabyte = 1000  # the kit's bucket holds 10 GB: 10,000 bytes here
    try:
        m = mounter.mount(store_kit, "--writeback-delay", "300", "--upload-on-close")
        with pytest.raises(OSError) as full:
            with open(m.bucket / "big", "wb") as f:
                f.write(b"x" * 20_000)
        assert full.value.errno == errno.EDQUOT
        log = (m.cache / "mountfs.log").read_text()
        assert "Bucket storage quota exceeded" in log
    finally:
        service.bridge.gigabyte = 1024**3


async def test_used_token_is_replaced(service: MetadiskService, store_kit: Store,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A token the bridge refuses (used, expired) costs one more try with a new one."""
    backend = await in_process(store_kit)
    tokens = service.bridge.tokens
    real = service.bridge.token

    def first_refused(bucket_id: str, operation: str):  # type: ignore[no-untyped-def]
        if not getattr(first_refused, "done", False):
            first_refused.done = True  # type: ignore[attr-defined]
            tokens.clear()  # as if used: the lookup fails
        return real(bucket_id, operation)

    monkeypatch.setattr(service.bridge, "token", first_refused)
    monkeypatch.setattr(service.bridge, "gigabyte", 100)  # 10 GB: 1,000 bytes
    try:
        await backend.write_object(store_kit.bucket, "f", io.BytesIO(b"data"), 4, {})
        assert await backend.read_object(store_kit.bucket, "f", 1, 2) == b"at"
        with pytest.raises(QuotaExceeded):
            await backend.write_object(store_kit.bucket, "g", io.BytesIO(b"x" * 2000), 2000, {})
    finally:
        await backend.aclose()


async def in_process(store: Store) -> Backend:
    """The store's driver without a mount (the caller closes it)."""
    with environment(store.env):
        source = await open_source(store.source, store.driver_options)
    await source.check()
    return source.backend


async def test_stream_by_shards_and_a_spent_node_token(service: MetadiskService,
                                                       store_kit: Store) -> None:
    """stream_object yields the file shard by shard from one list of pointers; a node that
    refuses a channel (its token spent) costs new pointers, not the read."""
    data = os.urandom(SHARD_SIZE * 2 + 1000)
    backend = await in_process(store_kit)
    try:
        await backend.write_object(store_kit.bucket, "f", io.BytesIO(data), len(data), {})
        pieces = [p async for p in backend.stream_object(store_kit.bucket, "f")]
        assert [len(p) for p in pieces] == [SHARD_SIZE, SHARD_SIZE, 1000]
        assert b"".join(pieces) == data
        node = service.bridge.nodes[1]  # holds the second shard
        accept = node.accept
        spent: list[str] = []

        def spend_first(shard: str) -> str:
            token = accept(shard)
            if not spent:
                spent.append(node.allowed.pop(token))
            return token
        node.accept = spend_first  # type: ignore[method-assign]
        try:
            assert b"".join([p async for p in backend.stream_object(store_kit.bucket, "f")]) \
                == data
        finally:
            node.accept = accept  # type: ignore[method-assign]
        assert spent
    finally:
        await backend.aclose()
