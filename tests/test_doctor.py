"""`mountfs doctor`: one line per finding (ok / warning / error, how to fix), exit code 1 on an
error; against real stores of each kind, wrong credentials, and cache dirs that are wrong."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import BACKENDS, Mount, run_cli
from kits import Store
from test_cli import assert_one_line_error

LINE = re.compile(r"(ok|warning|error): \S.*")


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = run_cli("doctor", *args, check=False, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    for line in proc.stdout.splitlines():
        assert LINE.fullmatch(line), line
    return proc


def has(proc: subprocess.CompletedProcess[str], level: str, *words: str) -> bool:
    return any(line.startswith(f"{level}: ") and all(w in line for w in words)
               for line in proc.stdout.splitlines())


def test_without_source(tmp_path: Path) -> None:
    proc = doctor(env={"XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout
    assert has(proc, "ok", "fuse3") and has(proc, "ok", "/dev/fuse")
    assert has(proc, "ok", "free for the cache")


def test_cache_dir_problems(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = doctor("--cache-dir", str(tmp_path / "file"))
    assert proc.returncode == 1 and has(proc, "error", "not a directory")
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    proc = doctor("--cache-dir", str(tmp_path / "open"), "--cache-size", "1000T")
    assert proc.returncode == 0
    assert has(proc, "warning", "mode 755", "chmod 700")
    assert has(proc, "warning", "less than the cap", "--cache-size")


def test_cache_dir_of_a_running_mount(mounted: Mount) -> None:
    proc = doctor(mounted.source, "--cache-dir", str(mounted.cache))
    assert proc.returncode == 0
    assert has(proc, "ok", "mode 700") and has(proc, "warning", "in use by a running mount")


@pytest.mark.backends("local", "s3", "dcss")
def test_a_store(store: Store, tmp_path: Path) -> None:
    """Reached, what the driver supports, and what the credentials allow: list, read, and
    (only when asked) a write that leaves nothing behind."""
    (store.stored / "dir").mkdir()
    (store.stored / "dir" / "small").write_bytes(b"x")
    (store.stored / "large").write_bytes(b"y" * 100_000)
    env = {**store.env, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    run_cli("remote", "add", "here", store.source, *store.options, env=env)
    # the bucket below the remote (a local store's path below is another store: its root)
    proc = doctor("here:" if store.kit.name == "local" else f"here:{store.bucket}", env=env)
    assert proc.returncode == 0, proc.stdout
    assert has(proc, "ok", "reached") and has(proc, "ok", "list")
    assert has(proc, "ok", "read:", f"{store.bucket}/large")  # the top's only file
    assert has(proc, "warning", "write: not checked", "--write-probe")
    copies = "warning" if store.kit.name == "dcss" else "ok"
    assert has(proc, copies, "server-side copy")
    assert has(proc, "ok", "ranged reads")

    probed = doctor(store.source, *store.options, "--write-probe", env=store.env)
    assert probed.returncode == 0, probed.stdout
    assert has(probed, "ok", "write: a file written and deleted")
    assert sorted(p.name for p in store.stored.iterdir()) == ["dir", "large"]


@pytest.mark.backends(*BACKENDS)
def test_every_driver(store: Store) -> None:
    """Each driver through the registry: reached, its five features said, list allowed."""
    proc = doctor(store.source, *store.options, env=store.env)
    assert proc.returncode == 0, proc.stdout
    assert has(proc, "ok", "reached") and has(proc, "ok", "list:")
    for feature in ("ranged reads", "server-side copy", "metadata:", "writes:",
                    "change notifications"):
        assert sum(feature in line for line in proc.stdout.splitlines()) == 1, feature
    announced = "ok" if store.kit.name == "amigocloud" else "warning"
    assert has(proc, announced, "change notifications")


@pytest.mark.backends("s3")
def test_wrong_credentials(store: Store, tmp_path: Path) -> None:
    env = {**store.env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none")}
    proc = doctor(f"{store.source}{store.bucket}", *store.options, env=env)
    assert proc.returncode == 1
    assert has(proc, "error", "credentials")
    assert not has(proc, "ok", "read:")


@pytest.mark.backends("dcss")
def test_forged_token(store: Store, tmp_path: Path) -> None:
    forged = tmp_path / "forged"
    token = Path(store.driver_options["token_file"]).read_text().strip()
    forged.write_text(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    flags = [a if a != str(store.driver_options["token_file"]) else str(forged)
             for a in store.options]
    proc = doctor("dcss:private", *flags, env=store.env)
    assert proc.returncode == 1
    assert has(proc, "error", "token")


def test_bad_input(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("doctor", "nowhere:", check=False,
                                  env={"XDG_CONFIG_HOME": str(tmp_path)}), "nowhere")
    assert_one_line_error(run_cli("doctor", "s3://b", "-o", "s3_bogus=1", check=False),
                          "s3_bogus")
