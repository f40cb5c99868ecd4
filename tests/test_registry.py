"""The driver registry: flags, `-o` options, environment, secrets, cache keys and state dirs are
generated from each driver's declaration, the same way for every driver, and a name means one
thing only."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from mountfs import cli, secrets
from mountfs.backends import registry
from mountfs.errors import ConfigError


def parse(*argv: str) -> tuple[dict[str, object], list[str], str]:
    """What `mountfs mount ARGV` gives the driver: its option values, the FUSE options, and
    the cache key."""
    args = cli.build_parser().parse_args(["mount", *argv])
    driver, _, _ = registry.split_source(args.source)
    items = [o for opt in args.fuse_options for o in opt.split(",") if o]
    values, fuse = cli.driver_values(args, driver, items)
    return values, fuse, registry.cache_key(args.source, values)


def test_every_driver_is_registered_with_its_schemes() -> None:
    names = {d.name for d in registry.drivers()}
    assert {"local", "s3", "dcss"} <= names
    assert registry.split_source("s3://b/p")[0].name == "s3"
    assert registry.split_source("/some/path")[0].name == "local"  # no scheme: a path
    assert registry.split_source("./a:b")[0].name == "local"  # a colon after a slash
    with pytest.raises(ConfigError, match="unknown storage scheme 'nope'.*known: local"):
        registry.split_source("nope:x")


def test_flags_and_o_names_are_generated_and_unique() -> None:
    parser = cli.build_parser()  # raises if two options would share a flag
    mount = next(a for a in parser._actions if a.dest == "command").choices["mount"]
    flags = [f for action in mount._actions for f in action.option_strings]
    assert len(flags) == len(set(flags))
    for driver in registry.drivers():
        for option in driver.options:
            assert option.flag(driver.name) in flags
    dests = [o.dest(d.name) for d in registry.drivers() for o in d.options]
    assert len(dests) == len(set(dests))


def test_new_and_old_flags_and_o_form_set_the_same_option(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    for argv in (["--s3-endpoint-url", url], ["--endpoint-url", url],
                 ["-o", f"s3_endpoint_url={url},allow_other"]):
        values, fuse, key = parse("s3://b", str(tmp_path), *argv)
        assert values["endpoint_url"] == url
        assert key == f"s3://b@{url}"  # one cache per service
    assert fuse == ["allow_other"]  # not a driver's: left for FUSE
    values, _, _ = parse("s3://", str(tmp_path), "-o", "s3_path_style")
    assert values == {"path_style": True}
    values, _, _ = parse("dcss:", str(tmp_path), "-o", "dcss_part_size=64M")
    assert values == {"part_size": 64 * 1024 * 1024}


def test_wrong_driver_options_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--dcss-token-file is an option of dcss sources, "
                                          "not of s3"):
        parse("s3://", str(tmp_path), "--token-file", "/x")
    with pytest.raises(ConfigError, match="-o s3_region is an option of another driver"):
        parse("dcss:", str(tmp_path), "-o", "s3_region=eu")
    with pytest.raises(ConfigError, match="dcss_part_size: not a size"):
        parse("dcss:", str(tmp_path), "-o", "dcss_part_size=lots")
    with pytest.raises(ConfigError, match="needs a value"):
        parse("s3://", str(tmp_path), "-o", "s3_region")
    place = tmp_path / "mnt"
    place.mkdir()
    proc = run_cli("mount", "s3://", str(place), "--api-url", "http://x", check=False)
    assert proc.returncode == 1
    assert proc.stderr == ("mountfs: --dcss-api-url is an option of dcss sources, not of s3\n")


def test_environment_fills_an_option_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = registry.Driver(
        "envtest", ("envtest",), "test", open=None,  # type: ignore[arg-type]
        options=(registry.Option("url", "a URL", env=("ENVTEST_URL",), default="dflt"),
                 registry.Option("size", "a size", parse=int, env=("ENVTEST_SIZE",))))
    assert registry.with_defaults(driver, {}) == {"url": "dflt", "size": None}
    monkeypatch.setenv("ENVTEST_URL", "from-env")
    monkeypatch.setenv("ENVTEST_SIZE", "12")
    assert registry.with_defaults(driver, {}) == {"url": "from-env", "size": 12}
    assert registry.with_defaults(driver, {"url": "given"})["url"] == "given"
    monkeypatch.setenv("ENVTEST_SIZE", "twelve")
    with pytest.raises(ConfigError, match="envtest_size"):
        registry.with_defaults(driver, {})


def secret_context(values: dict[str, object]) -> registry.DriverContext:
    driver = registry.Driver(
        "secrettest", ("secrettest",), "test", open=None,  # type: ignore[arg-type]
        options=(registry.Option("key_file", "a key", secret=True, env=("SECRETTEST_KEY",)),))
    return registry.DriverContext(driver, "secrettest:", "secrettest", "",
                                  registry.with_defaults(driver, values))


def test_secrets_come_from_a_file_or_the_environment_and_are_redacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert secret_context({}).secret("key_file") is None
    monkeypatch.setenv("SECRETTEST_KEY", "sekrit-from-env")
    # the variable holds the secret itself: it is never taken as an option value (a path)
    assert secret_context({}).values == {"key_file": None}
    assert secret_context({}).secret("key_file") == "sekrit-from-env"
    key_file = tmp_path / "key"
    key_file.write_text("sekrit-from-file\n")
    assert secret_context({"key_file": key_file}).secret("key_file") == "sekrit-from-file"
    with pytest.raises(ConfigError, match=r"--secrettest-key-file .*/missing: No such file"):
        secret_context({"key_file": tmp_path / "missing"}).secret("key_file")
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        secret_context({"key_file": key_file}).secret("key_file")
    # both secrets read are redacted from whatever a log line says
    record = logging.LogRecord("t", logging.INFO, __file__, 1,
                               "token %s and %s, Authorization: Token abc def",
                               ("sekrit-from-env", "sekrit-from-file"), None)
    assert secrets.RedactSecrets().filter(record)
    assert record.getMessage() == "token <redacted> and <redacted>, Authorization: <redacted>"


def test_state_dir_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    os.umask(0o022)
    path = registry.state_dir("s3")
    assert path == tmp_path / "state" / "mountfs" / "s3"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o755)
    assert stat.S_IMODE(registry.state_dir("s3").stat().st_mode) == 0o700


def test_a_missing_plugin_driver_is_one_line(tmp_path: Path) -> None:
    place = tmp_path / "mnt"
    place.mkdir()
    proc = run_cli("mount", str(tmp_path), str(place), check=False,
                   env={registry.PLUGINS_ENV: "no_such_driver_module"})
    assert proc.returncode == 1
    assert proc.stderr.startswith("mountfs: driver module 'no_such_driver_module' "
                                  "(MOUNTFS_DRIVERS): No module named")
    assert proc.stderr.count("\n") == 1


PLUGIN = '''
"""A driver outside the package, with a subcommand that uses its state directory."""
from mountfs.backends.registry import Driver, state_dir


def add_commands(parser):
    sub = parser.add_subparsers(dest="action", required=True)
    hello = sub.add_parser("hello")
    hello.add_argument("who")
    hello.set_defaults(handler=lambda args: say_hello(args.who))


def say_hello(who):
    note = state_dir("plugin") / "greeted"
    note.write_text(who)
    print(f"hello {who}, noted in {note}")
    return 0


async def _open(context):
    raise NotImplementedError


DRIVER = Driver(name="plugin", schemes=("plugin",), open=_open, summary="plugin:",
                commands=add_commands)
'''


def test_a_plugin_driver_brings_its_own_subcommand(tmp_path: Path) -> None:
    (tmp_path / "mountfs_plugin_test.py").write_text(PLUGIN)
    env = {registry.PLUGINS_ENV: "mountfs_plugin_test", "XDG_STATE_HOME": str(tmp_path / "st"),
           "PYTHONPATH": str(tmp_path)}
    proc = run_cli("plugin", "hello", "world", env=env)
    note = tmp_path / "st" / "mountfs" / "plugin" / "greeted"
    assert proc.stdout == f"hello world, noted in {note}\n"
    assert note.read_text() == "world"
    assert stat.S_IMODE(note.parent.stat().st_mode) == 0o700
    assert "plugin:" in run_cli("mount", "--help", env=env).stdout  # its group in the help
    wrong = run_cli("plugin", check=False, env=env)
    assert wrong.returncode == 2 and wrong.stderr.startswith("mountfs: ")


# What serves a mount or one driver: every command builds the parser from every driver's
# declaration, so none of these may load for a command that does not use it (~0.4 s of CPU at
# each `mountfs status`, `umount`, completion and mount helper when they did).
HEAVY = ("awscrt", "boto3", "botocore", "urllib3", "prometheus_client", "trio", "rich", "shtab",
         "websockets", "ecdsa", "cache.blocks", "mountfs.backends.base")


def test_commands_start_without_the_drivers_clients(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from mountfs import cli\n"
            f"cli.main(['status', {str(tmp_path)!r}])\n"  # builds the parser, runs a command
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != registry.PLUGINS_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "is not a mountfs mount" in proc.stderr  # the command ran
    assert proc.stdout.split() == []
