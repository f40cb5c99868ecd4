"""mount(8) and /etc/fstab: the helper called exactly as mount(8) calls it, the form mount.fuse3
runs, and a real `mount -t fuse.mountfs` / `mount -T FSTAB` of a saved remote."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mountfs
from conftest import Mount, Mounter, is_mounted, run_cli
from kits import Store
from test_cli import assert_one_line_error

pytestmark = pytest.mark.mounted

HELPER = Path("/sbin/mount.fuse.mountfs")
# What mount(8) passes for `-o cache_size=64M,allow_other,_netdev,user,nofail,noauto,
# x-systemd.automount,defaults` (it drops noauto, x-systemd.* and defaults itself, and adds
# rw and, for `user`, noexec,nosuid,nodev; seen with a logging helper, util-linux 2.38).
AS_MOUNT_PASSES = "rw,noexec,nosuid,nodev,cache_size=64M,allow_other,_netdev,user,nofail"


@pytest.fixture
def saved(store: Store, tmp_path: Path) -> dict[str, str]:
    """The environment of a user who saved the store as the remote `saved`."""
    env = {**store.env, "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run_cli("remote", "add", "saved", store.source, *store.options, env=env)
    return env


def adopt(mounter: Mounter, store: Store, path: Path) -> Mount:
    """A mount started by hand, handed to the mounter for its teardown."""
    m = Mount("saved:", path, Path(), store)
    mounter.mounts.append(m)
    assert is_mounted(path), "the helper returned before the mount was there"
    m.pid = m.served_status()["pid"]
    return m


def mount_options(path: Path) -> set[str]:
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(path):
                return set(fields[3].split(","))
    raise AssertionError(f"{path} is not mounted")


def helper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mountfs.mount_helper", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


@pytest.mark.backends("local", "s3", "dcss")
def test_helper_as_mount_calls_it(mounter: Mounter, store: Store, saved: dict[str, str],
                                  tmp_path: Path) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    proc = helper("saved:", str(path), "-o", AS_MOUNT_PASSES, env=saved)
    assert proc.returncode == 0, proc.stderr
    m = adopt(mounter, store, path)  # mounted when the helper returned: what mount(8) needs
    assert sorted(os.listdir(path)) == store.buckets
    assert {"allow_other", "nosuid", "nodev", "noexec", "rw"} <= mount_options(path)
    assert m.status()["cache"]["cap"] == 64 * 1024**2
    (m.bucket / "via-fstab").write_bytes(b"helper")
    mounter.umount(m)
    assert (store.stored / "via-fstab").read_bytes() == b"helper"


def test_ro_and_fuse3_form(mounter: Mounter, store: Store, saved: dict[str, str],
                           tmp_path: Path) -> None:
    """mount.fuse3 runs `mountfs SOURCE DIR -o OPTS`: the same mapping (`ro` too)."""
    path = tmp_path / "mnt"
    path.mkdir()
    run_cli("saved:", str(path), "-o", "ro,metadata_ttl=2,_netdev", env=saved)
    adopt(mounter, store, path)
    assert "ro" in mount_options(path)
    with pytest.raises(OSError):
        (path / store.bucket / "x").write_bytes(b"no")


@pytest.mark.parametrize("options,words", [("cache_size", ("cache_size=VALUE",)),
                                           ("allow_other=1", ("takes no value",)),
                                           ("cache_size=lots", ("cache-size",))])
def test_bad_options(saved: dict[str, str], tmp_path: Path, options: str,
                     words: tuple[str, ...]) -> None:
    (tmp_path / "mnt").mkdir()
    proc = helper("saved:", str(tmp_path / "mnt"), "-o", f"rw,{options}", env=saved)
    assert not is_mounted(tmp_path / "mnt")
    assert_one_line_error(proc, *words)


def test_fake_mount_does_nothing(saved: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    assert helper("saved:", str(tmp_path / "mnt"), "-f", "-o", "rw", env=saved).returncode == 0
    assert not is_mounted(tmp_path / "mnt")


@contextlib.contextmanager
def installed_helper() -> Iterator[None]:
    """/sbin/mount.fuse.mountfs as scripts/install puts it; where it is not installed, one
    running this tree's code for the test's duration."""
    if HELPER.exists():
        yield
        return
    root = Path(mountfs.__file__).resolve().parent.parent
    HELPER.write_text(f"#!/bin/sh\nPYTHONPATH={root} PYTHONSAFEPATH=1 exec {sys.executable} "
                      f"-m mountfs.mount_helper \"$@\"\n")
    HELPER.chmod(0o755)
    try:
        yield
    finally:
        HELPER.unlink()


def test_real_mount_and_fstab(mounter: Mounter, store: Store, saved: dict[str, str],
                              tmp_path: Path) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    env = {**os.environ, **saved}
    with installed_helper():
        done = subprocess.run(["mount", "-t", "fuse.mountfs", "saved:", str(path), "-o",
                               "cache_size=64M,allow_other,_netdev,nofail"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        m = adopt(mounter, store, path)
        assert sorted(os.listdir(path)) == store.buckets
        assert "allow_other" in mount_options(path)
        mounter.umount(m)

        fstab = tmp_path / "fstab"
        fstab.write_text(f"saved: {path} fuse.mountfs cache_size=32M,allow_other,_netdev,"
                         f"noauto,x-systemd.automount,user,nofail 0 0\n")
        done = subprocess.run(["mount", "-T", str(fstab), str(path)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    m = adopt(mounter, store, path)
    assert m.status()["cache"]["cap"] == 32 * 1024**2
    assert {"nosuid", "nodev", "noexec"} <= mount_options(path)  # what `user` implies
    mounter.umount(m)
