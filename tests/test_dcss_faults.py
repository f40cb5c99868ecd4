"""A DCSS mount behind the fault proxy (tests/servers/faults.py): its authorize requests and the
S3 requests of the presigned URLs both go through the proxy, which fails a share of them in
the format of the service each is for (the authorize API's JSON envelope, S3's XML).

The DCSS service here presigns its URLs for the proxy's address (`front_url`), and the proxy
passes the Host header on as it came, so the service checks the signatures of exactly the
requests the mount sent. What must hold: with a fifth of all requests answered 503, `ls -R` and
`cat` of a 1,500-key tree (a directory listed in two pages) see every name and every byte, and
no error reaches a program; through resets and cut-off replies, files written, renamed (DCSS
has no server-side copy: a rename streams the file, each try of each PUT from its start) and
read back arrive exact.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from conftest import Mount, Mounter
from servers.dcss import BUCKETS, DcssService, make_keypair
from servers.faults import FaultProxy
from servers.s3 import S3Server, free_port
from test_dcss import WRITER, mount_dcss

pytestmark = pytest.mark.mounted

RATE = 0.2
# Files per directory: a public one listed in two pages (anonymous reads, straight to S3), and
# private ones (each read presigned by the authorize service first).
TREE = {"public/big": 1100, "private/a": 100, "private/b": 100, "private/c": 100,
        "private/d": 100}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def service(s3_server: S3Server) -> Iterator[DcssService]:
    """A DCSS service whose presigned URLs point at a proxy's port (`s3_endpoint`, free until
    the `proxy` fixture listens on it)."""
    signing_key, pem = make_keypair()
    front = f"http://127.0.0.1:{free_port()}"
    dcss = DcssService(s3_server.url, pem, private_users={WRITER}, public_writers={WRITER},
                       signing_key=signing_key, front_url=front).start()
    try:
        yield dcss
    finally:
        dcss.stop()


@pytest.fixture
def proxy(service: DcssService) -> Iterator[FaultProxy]:
    """The fault proxy on the service's front address (its buckets emptied), faults off until
    a test sets them. No fault here is a stall: the mounts keep their usual timeouts."""
    service.empty()
    port = int(service.s3_endpoint.rpartition(":")[2])
    p = FaultProxy(service.url, rate=0.0, seed=int(os.environ.get("FAULT_SEED", "11")),
                   port=port).start()
    try:
        yield p
    finally:
        p.stop()


def mount_via(mounter: Mounter, service: DcssService, proxy: FaultProxy, *options: str,
              name: str = "mnt") -> Mount:
    """dcss: with uid 1's token, the authorize API and S3 both reached through `proxy`."""
    front = SimpleNamespace(url=proxy.url, s3_endpoint=proxy.url,
                            public_key_path=service.public_key_path)
    return mount_dcss(mounter, front, token_file=service.token_file(mounter.tmp, WRITER),
                      options=options, name=name)


def tree_files() -> dict[str, bytes]:
    """1,500 files of 0 to 3 KiB, made from their names."""
    files = {}
    for directory, count in TREE.items():
        for i in range(count):
            name = f"{directory}/f{i:04d}.txt"
            files[name] = random.Random(name).randbytes(i % 3072)
    return files


def retry_lines(m: Mount) -> list[str]:
    """The retries the mount logged."""
    return [line for line in (m.cache / "mountfs.log").read_text().splitlines()
            if "mountfs.backends.retry: retrying " in line]


def test_ls_and_cat_of_a_1500_key_tree_through_503s_see_no_error(
        mounter: Mounter, service: DcssService, proxy: FaultProxy) -> None:
    files = tree_files()

    def put(name: str) -> None:  # straight to the S3 server, not through the proxy
        space, _, key = name.partition("/")
        service.s3.put_object(Bucket=BUCKETS[space], Key=key, Body=files[name])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    proxy.rate, proxy.kinds = RATE, ("503",)
    # Listings trusted for the whole test: the reads find names in what `ls` listed, as they
    # would right after it, instead of asking the store again once the default 5 s are up.
    m = mount_via(mounter, service, proxy, "--metadata-ttl", "600")
    root = m.path

    listing = subprocess.run(["ls", "-R", str(root)], capture_output=True, text=True)
    assert listing.returncode == 0 and not listing.stderr, listing.stderr
    listed, directory = set(), ""
    for line in listing.stdout.splitlines():
        if line.endswith(":"):
            directory = os.path.relpath(line[:-1], root)
        elif line:
            listed.add(os.path.normpath(os.path.join(directory, line)))
    directories = {"private", "public", "user"} | {name.rpartition("/")[0] for name in files}
    assert listed == set(files) | directories

    names = sorted(files)
    batches = [names[i:i + 100] for i in range(0, len(names), 100)]

    def cat(batch: list[str]) -> None:
        done = subprocess.run(["cat", *batch], cwd=root, capture_output=True)
        assert done.returncode == 0 and not done.stderr, done.stderr.decode()
        assert done.stdout == b"".join(files[name] for name in batch)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(cat, batches))
    assert proxy.injected["503"] >= RATE * proxy.requests / 2, proxy.report()
    assert retry_lines(m), "no retry was logged"


def test_writes_renames_and_reads_through_resets_and_cut_replies_arrive_exact(
        mounter: Mounter, service: DcssService, proxy: FaultProxy) -> None:
    # Parts of 1 MiB: a 3.5 MiB file is four objects, each PUT and (for the rename) each
    # ranged GET of the source tried on its own.
    m = mount_via(mounter, service, proxy, "--part-size", "1M", "--writeback-delay", "0")
    root = m.path / "private"
    data = {f"f{i}.bin": random.Random(i).randbytes(size)
            for i, size in enumerate([0, 1, 4096, MiB, 3 * MiB + MiB // 2])}
    proxy.rate, proxy.kinds = RATE, ("500", "503", "reset", "truncate")
    for name, content in data.items():
        path = root / name
        path.write_bytes(content)
        with open(path, "rb") as f:
            os.fsync(f.fileno())  # uploaded now, so the rename below streams it from S3
    for name in data:
        os.rename(root / name, root / f"moved-{name}")
    m2 = mount_via(mounter, service, proxy, name="mnt2")  # a cold cache: bytes from the store
    for name, content in data.items():
        assert (m2.path / "private" / f"moved-{name}").read_bytes() == content, name
        assert not (m2.path / "private" / name).exists()
    assert {"reset", "truncate"} <= set(proxy.injected), proxy.report()


def test_fault_replies_speak_each_services_format(service: DcssService,
                                                  proxy: FaultProxy) -> None:
    proxy.rate, proxy.kinds = 1.0, ("503",)
    for path, looks_like in [("/api/v1/dcss/authorize/get_object/"
                              f"{BUCKETS['private']}/k", "json"),
                             (f"/{BUCKETS['public']}/k", "xml")]:
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(proxy.url + path, timeout=10)
        assert raised.value.code == 503
        body = raised.value.read()
        if looks_like == "json":
            assert json.loads(body) == {"success": False, "result": None,
                                        "messages": ["ServiceUnavailable: injected by the "
                                                     "fault proxy"]}
        else:
            assert body.startswith(b"<?xml") and b"<Code>ServiceUnavailable</Code>" in body


def test_concurrent_cold_reads_ask_for_one_presigned_url(mounter: Mounter, service: DcssService,
                                                         proxy: FaultProxy) -> None:
    """GETs of one file that start together (readers at several places, a read and its
    read-ahead) wait for one authorize request, and its URL serves them all."""
    data = random.Random(5).randbytes(16 * MiB)
    service.s3.put_object(Bucket=BUCKETS["private"], Key="big.bin", Body=data)
    m = mount_via(mounter, service, proxy)
    fd = os.open(m.path / "private" / "big.bin", os.O_RDONLY)
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda at: os.pread(fd, MiB, at), range(0, 16 * MiB, 2 * MiB)))
    finally:
        os.close(fd)
    assert got == [data[at:at + MiB] for at in range(0, 16 * MiB, 2 * MiB)]
    assert proxy.seen["authorize get_object"] == 1, proxy.seen


def test_a_lookup_asks_for_no_parts_of_a_directory(mounter: Mounter, service: DcssService,
                                                   proxy: FaultProxy) -> None:
    """A path's directories (prefixes without markers, as the official client leaves them) cost
    a lookup one HEAD each for the marker that would hold their attributes, not a second for
    `dir/.000` as if the marker were a file stored in parts; the file's own HEAD is the third."""
    service.s3.put_object(Bucket=BUCKETS["private"], Key="a/b/file.bin", Body=b"x" * 10)
    m = mount_via(mounter, service, proxy)
    assert (m.path / "private" / "a" / "b" / "file.bin").stat().st_size == 10
    assert proxy.seen["authorize head_object"] == 3, proxy.seen
    assert proxy.seen["HeadObject"] == 3, proxy.seen
