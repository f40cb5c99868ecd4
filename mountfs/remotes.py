"""Saved remotes: `mountfs remote add|list|show|delete`, and `NAME:` / `NAME:path` as a SOURCE.

A remote is a SOURCE with its driver's options, under a name, in
`$XDG_CONFIG_HOME/mountfs/remotes.toml` (mode 0600, in a 0700 directory; one table per
remote). Options are checked against the driver's declarations (`registry.Option`) when the
remote is added, and again when it is used (the file may have been edited by hand). A secret
is never stored: a secret option names the file holding it, as on the command line, or the
remote names an environment variable holding it (`--secret-env dcss_token_file=WORK_TOKEN`),
which is handed to the driver under the variable the driver declares (`DT_TOKEN`).

The file is read with tomllib and written whole with tomli-w (see pyproject.toml).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from mountfs.backends import registry
from mountfs.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# A remote's name: what stands before ':' in a SOURCE, so no ':' or '/'; and not a scheme.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def remotes_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "mountfs" / "remotes.toml"


@dataclass
class Remote:
    """A saved SOURCE. `options` by the driver's option name, as TOML keeps them (text, or
    true/false for a switch); `secret_env`: secret option name -> the variable holding it."""

    name: str
    source: str
    options: dict[str, str | bool] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)

    @property
    def driver(self) -> registry.Driver:
        return registry.split_source(self.source)[0]

    def values(self) -> dict[str, Any]:
        """The options as the driver takes them; one line naming the remote for a bad one."""
        driver = self.driver
        values: dict[str, Any] = {}
        for name, text in self.options.items():
            try:
                option = driver.option(name)
            except KeyError:
                raise ConfigError(f"remote {self.name}: {driver.name} has no option "
                                  f"{name!r} ({remotes_file()})") from None
            if isinstance(text, bool) and option.switch:
                values[name] = text
            else:
                try:
                    values[name] = registry.parse_value(driver, option, str(text))
                except ConfigError as exc:
                    raise ConfigError(f"remote {self.name}: {exc}") from None
        for name, variable in self.secret_env.items():
            secret_option(driver, name, variable)
        return values

    def environment(self) -> dict[str, str]:
        """The driver's own secret variables, set from those the remote names."""
        driver, env = self.driver, {}
        for name, variable in self.secret_env.items():
            option = secret_option(driver, name, variable)
            value = os.environ.get(variable)
            if not value:
                raise ConfigError(f"remote {self.name}: ${variable} is not set (it holds the "
                                  f"secret of {option.flag(driver.name)})")
            env[option.env[0]] = value
        return env

    def as_toml(self) -> dict[str, Any]:
        table: dict[str, Any] = {"source": self.source}
        if self.options:
            table["options"] = dict(self.options)
        if self.secret_env:
            table["secret_env"] = dict(self.secret_env)
        return table


def secret_option(driver: registry.Driver, name: str, variable: str) -> registry.Option:
    """The secret option `name` of `driver`, which `variable` may stand in for."""
    try:
        option = driver.option(name)
    except KeyError:
        raise ConfigError(f"{driver.name} has no option {name!r}") from None
    if not option.secret or not option.env:
        raise ConfigError(f"{option.dest(driver.name)} is not a secret taken from the "
                          f"environment")
    if not VARIABLE.fullmatch(variable):
        raise ConfigError(f"{option.dest(driver.name)}: {variable!r} is not the name of an "
                          f"environment variable (the secret itself is never stored)")
    return option


def load() -> dict[str, Remote]:
    path = remotes_file()
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    remotes = {}
    for name, table in document.items():
        if not isinstance(table, dict) or not isinstance(table.get("source"), str):
            raise ConfigError(f"{path}: [{name}] has no source")
        remotes[name] = Remote(name, table["source"], dict(table.get("options", {})),
                               dict(table.get("secret_env", {})))
    return remotes


def save(remotes: Mapping[str, Remote]) -> None:
    """Write the file whole: a new file of mode 0600 renamed over the old one, so no reader
    ever sees half of it and it is never readable by others, not even for a moment."""
    path = remotes_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".remotes-")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump({n: r.as_toml() for n, r in sorted(remotes.items())}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def split(source: str) -> tuple[str, str] | None:
    """(remote name, path inside) when SOURCE is written `NAME:` or `NAME:path`; None when it
    names a driver's scheme or a plain path."""
    name, sep, inside = source.partition(":")
    if not sep or not NAME.fullmatch(name):
        return None
    if any(name in d.schemes for d in registry.drivers()):
        return None
    return name, inside


def join(source: str, inside: str) -> str:
    """SOURCE with a path below it: `s3://b` + `x/y` is `s3://b/x/y`, `dcss:` + `public` is
    `dcss:public`."""
    inside = inside.strip("/")
    if not inside:
        return source
    return source + inside if source.endswith((":", "/")) else f"{source}/{inside}"


@dataclass
class Resolved:
    """A SOURCE as the mount takes it: the driver's SOURCE, the saved option values (which
    the command line's override) and the variables to set for the driver's secrets."""

    source: str
    values: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)


def resolve(source: str) -> Resolved:
    """What SOURCE means: itself, or the saved remote it names."""
    parts = split(source)
    if parts is None:
        return Resolved(source)
    name, inside = parts
    remote = load().get(name)
    if remote is None:
        known = ", ".join(s for d in registry.drivers() for s in d.schemes)
        raise ConfigError(f"{name!r} in {source!r} is neither a saved remote (mountfs remote "
                          f"list) nor a storage scheme (known: {known})")
    return Resolved(join(remote.source, inside), remote.values(), remote.environment())


# ---- the commands ----------------------------------------------------------------------------

def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from mountfs.cli import add_driver_options

    remote = sub.add_parser("remote", help="saved sources: mount NAME: instead of a SOURCE")
    verbs = remote.add_subparsers(dest="verb", required=True, parser_class=type(remote))
    add = verbs.add_parser("add", help="save SOURCE with its driver options under NAME")
    add.add_argument("name")
    add.add_argument("source")
    add.add_argument("-o", dest="fuse_options", action="append", default=[],
                     help="driver options, comma separated: <driver>_<name>=VALUE")
    add.add_argument("--secret-env", action="append", default=[],
                     metavar="OPTION=VARIABLE", help="take the secret of a secret option "
                     "(<driver>_<name>, e.g. dcss_token_file) from this environment variable "
                     "when mounting")
    add_driver_options(add)
    add.set_defaults(handler=cmd_add)
    listing = verbs.add_parser("list", help="the saved remotes")
    listing.set_defaults(handler=cmd_list)
    show = verbs.add_parser("show", help="one remote, as saved")
    show.add_argument("name")
    show.set_defaults(handler=cmd_show)
    delete = verbs.add_parser("delete", help="forget a remote")
    delete.add_argument("name")
    delete.set_defaults(handler=cmd_delete)


def stored(value: Any) -> str | bool:
    """A parsed option value as the file keeps it: paths absolute (the remote is used from
    any directory), switches as booleans, the rest as text the option parses back."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Path):
        return str(value.expanduser().absolute())
    return str(value)


def cmd_add(args: argparse.Namespace) -> int:
    from mountfs.cli import driver_values

    if not NAME.fullmatch(args.name):
        raise ConfigError(f"{args.name!r} is not a remote name (a letter, then letters, "
                          f"digits, '.', '_' or '-')")
    if split(f"{args.name}:") is None:
        raise ConfigError(f"{args.name!r} is a storage scheme: give the remote another name")
    if split(args.source) is not None:
        raise ConfigError(f"{args.source!r}: a remote's SOURCE names a driver's scheme or a "
                          f"path, not another remote")
    driver, _, _ = registry.split_source(args.source)
    source = registry.canonical_source(args.source)
    items = [o for opt in args.fuse_options for o in opt.split(",") if o]
    values, left = driver_values(args, driver, items)
    if left:
        raise ConfigError(f"-o {left[0]}: not an option of the {driver.name} driver "
                          f"({driver.name}_<name>=VALUE)")
    remote = Remote(args.name, source)
    for name, value in values.items():
        option = driver.option(name)
        if option.secret and not Path(value).expanduser().is_file():
            raise ConfigError(f"{option.flag(driver.name)} {value}: no such file (it names "
                              f"the file holding the secret, never the secret itself)")
        remote.options[name] = stored(value)
    for item in args.secret_env:
        name, sep, variable = item.partition("=")
        by_dest = {o.dest(driver.name): o.name for o in driver.options}
        if not sep or name not in by_dest:
            raise ConfigError(f"--secret-env {item}: give OPTION=VARIABLE with a secret option "
                              f"of {driver.name} ({secret_names(driver) or 'it has none'})")
        secret_option(driver, by_dest[name], variable)
        remote.secret_env[by_dest[name]] = variable
    remotes = load()
    if args.name in remotes:  # never replace what may hold hand-made settings silently
        raise ConfigError(f"remote {args.name} exists: mountfs remote delete {args.name} first")
    remotes[args.name] = remote
    save(remotes)
    print(f"saved remote {args.name}: {source} in {remotes_file()}")
    return 0


def secret_names(driver: registry.Driver) -> str:
    return ", ".join(o.dest(driver.name) for o in driver.options if o.secret and o.env)


def named(name: str) -> Remote:
    remote = load().get(name.rstrip(":"))
    if remote is None:
        raise ConfigError(f"no remote {name!r} (mountfs remote list)")
    return remote


def cmd_list(args: argparse.Namespace) -> int:
    for remote in load().values():
        print(f"{remote.name}\t{remote.source}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    remote = named(args.name)
    driver = remote.driver
    print(f"name: {remote.name}")
    print(f"source: {remote.source}")
    print(f"driver: {driver.name}")
    for name, value in remote.options.items():
        print(f"{driver.name}_{name}: {value}")
    for name, variable in remote.secret_env.items():
        print(f"{driver.name}_{name}: from ${variable}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    remotes = load()
    remote = named(args.name)
    del remotes[remote.name]
    save(remotes)
    print(f"deleted remote {remote.name}")
    return 0
