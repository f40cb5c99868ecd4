"""Saved remotes: `mountfs remote add|list|show|delete`, and `NAME:` / `NAME:path` mounted on
every driver's store, its options checked at `add`, its secrets never in the file."""
from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from pathlib import Path

import pytest

from conftest import BACKENDS, Mounter, run_cli
from kits import Store
from test_cli import assert_one_line_error

pytestmark = pytest.mark.mounted


@pytest.fixture
def config(tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose remotes live under tmp_path."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "config")}


def remotes_toml(config: dict[str, str]) -> Path:
    return Path(config["XDG_CONFIG_HOME"]) / "mountfs" / "remotes.toml"


def test_add_list_show_delete(config: dict[str, str], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("dt2-not-in-the-file\n")
    run_cli("remote", "add", "work", "s3://bucket/some/prefix", "--s3-endpoint-url",
            "http://127.0.0.1:9", "--path-style", "-o", "s3_region=eu-west-1", env=config)
    run_cli("remote", "add", "duck", "dcss:", "--dcss-token-file", str(token),
            "--secret-env", "dcss_token_file=WORK_DT_TOKEN", env=config)
    path = remotes_toml(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = tomllib.loads(path.read_text())
    assert saved["work"] == {"source": "s3://bucket/some/prefix", "options": {
        "endpoint_url": "http://127.0.0.1:9", "path_style": True, "region": "eu-west-1"}}
    assert saved["duck"]["options"] == {"token_file": str(token)}
    assert saved["duck"]["secret_env"] == {"token_file": "WORK_DT_TOKEN"}
    assert "dt2-not-in-the-file" not in path.read_text()

    assert_one_line_error(run_cli("remote", "add", "work", "s3://other", check=False,
                                  env=config), "exists")
    listed = run_cli("remote", "list", env=config).stdout.splitlines()
    assert listed == ["duck\tdcss:", "work\ts3://bucket/some/prefix"]
    shown = run_cli("remote", "show", "work", env=config).stdout
    assert "s3_endpoint_url: http://127.0.0.1:9" in shown and "driver: s3" in shown
    assert "from $WORK_DT_TOKEN" in run_cli("remote", "show", "duck:", env=config).stdout

    run_cli("remote", "delete", "work", env=config)
    assert run_cli("remote", "list", env=config).stdout.splitlines() == ["duck\tdcss:"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert_one_line_error(run_cli("remote", "show", "work", check=False, env=config),
                          "no remote")


@pytest.mark.parametrize("args,words", [
    (("s3", "s3://b"), ("storage scheme",)),
    (("a/b", "s3://b"), ("not a remote name",)),
    (("x", "s3://b", "-o", "s3_bogus=1"), ("s3_bogus",)),
    (("x", "s3://b", "--dcss-api-url", "http://a"), ("--dcss-api-url", "dcss")),
    (("x", "dcss:", "--dcss-part-size", "lots"), ("--dcss-part-size",)),
    (("x", "dcss:", "-o", "dcss_part_size=lots"), ("dcss_part_size",)),
    (("x", "dcss:", "--dcss-token-file", "dt2-pasted-token"), ("no such file", "secret")),
    (("x", "dcss:", "--secret-env", "dcss_token_file=dt2-pasted"), ("environment variable",)),
    (("x", "dcss:", "--secret-env", "dcss_api_url=URL"), ("not a secret",)),
    (("x", "dcss:", "--secret-env", "nothing"), ("OPTION=VARIABLE", "dcss_token_file")),
    (("x", "nosuch:thing"), ("nosuch",)),
    (("x", "s3://b", "--no-such-flag"), ("--no-such-flag",)),
])
def test_bad_remotes(config: dict[str, str], args: tuple[str, ...],
                     words: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli("remote", "add", *args, check=False, env=config), *words)
    assert not remotes_toml(config).exists()


def test_bad_file_and_unknown_remote(config: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    assert_one_line_error(run_cli("mount", "nowhere:", str(tmp_path / "mnt"), check=False,
                                  env=config), "nowhere", "remote")
    remotes_toml(config).parent.mkdir(parents=True)
    remotes_toml(config).write_text('[x]\nsource = "s3://b"\n[x.options]\nbogus = "1"\n')
    assert_one_line_error(run_cli("mount", "x:", str(tmp_path / "mnt"), check=False,
                                  env=config), "remote x", "bogus")
    remotes_toml(config).write_text("[x\n")
    assert_one_line_error(run_cli("remote", "list", check=False, env=config), "not TOML")


@pytest.mark.backends(*BACKENDS)
def test_mount_a_remote(mounter: Mounter, store: Store, config: dict[str, str]) -> None:
    """Every driver: its SOURCE and options saved, then `NAME:` mounted with no option."""
    run_cli("remote", "add", "saved", store.source, *store.options, env={**store.env, **config})
    m = mounter.mount(dataclasses.replace(store, source="saved:", options=[]),
                      env={**store.env, **config})
    assert sorted(os.listdir(m.path)) == store.buckets
    assert m.status()["source"].startswith(store.source.rstrip("/").split(":")[0])
    (m.bucket / "through-a-remote").write_bytes(b"saved")
    mounter.umount(m)
    assert (store.stored / "through-a-remote").read_bytes() == b"saved"


@pytest.mark.backends("s3", "dcss")
def test_path_inside_a_remote(mounter: Mounter, store: Store, config: dict[str, str]) -> None:
    """`NAME:path` is the remote's SOURCE with the path below it: here one bucket."""
    (store.stored / "dir").mkdir()
    (store.stored / "dir" / "f").write_bytes(b"inside")
    run_cli("remote", "add", "saved", store.source, *store.options, env={**store.env, **config})
    m = mounter.mount(dataclasses.replace(store, source=f"saved:{store.bucket}", options=[]),
                      env={**store.env, **config})
    assert os.listdir(m.path) == ["dir"]
    assert (m.path / "dir" / "f").read_bytes() == b"inside"


@pytest.mark.backends("dcss")
def test_secret_from_a_named_variable(mounter: Mounter, store: Store,
                                      config: dict[str, str], tmp_path: Path) -> None:
    """The token comes from the variable the remote names, never from the file."""
    options = dict(store.driver_options)
    token = Path(options.pop("token_file")).read_text().strip()
    flags = [a for name, value in options.items()
             for a in (f"--dcss-{name.replace('_', '-')}", str(value))]
    run_cli("remote", "add", "duck", "dcss:", *flags, "--secret-env",
            "dcss_token_file=WORK_DT_TOKEN", env={**store.env, **config})
    assert token not in remotes_toml(config).read_text()
    (tmp_path / "m2").mkdir()
    proc = run_cli("mount", "duck:private", str(tmp_path / "m2"), check=False,
                   env={**store.env, **config})
    assert_one_line_error(proc, "WORK_DT_TOKEN")
    m = mounter.mount(dataclasses.replace(store, source="duck:", options=[]),
                      env={**store.env, **config, "WORK_DT_TOKEN": token})
    assert "user" in os.listdir(m.path)  # only a token shows the user space
