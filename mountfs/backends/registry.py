"""The driver registry: what each driver declares, and what is generated from the declarations.

A driver module ends with `DRIVER = Driver(...)`: its name and SOURCE schemes, its options
(`Option`: name, help, type, default, environment variables, secret or not), an async factory
that turns a SOURCE into a `Source`, and optionally subcommands (`mountfs <name> ...`). From
these the registry makes, for every driver alike:

- the mount flags `--<driver>-<option>` (plus the older spellings a driver keeps as aliases),
  grouped per driver in `mountfs mount --help`, and the `-o <driver>_<option>=VALUE` form;
  a name can never mean two things (cli.add_driver_options refuses a flag taken twice when
  it builds the parser);
- the cache-dir key: the SOURCE plus the options that say which service it names;
- secrets: read only from a file an option names or from the environment, never from argv,
  and remembered for the log filter (`mountfs.secrets`);
- a private state directory per driver (0700) for what it keeps between mounts.

Every command builds the parser from the declarations, so a driver module imports no client
library at its top: its factory (and a subcommand's handler) imports the driver's store when
it runs.

Drivers are the modules in `BUILTIN`, then those named in the environment variable
`MOUNTFS_DRIVERS` (comma-separated module names): a driver outside the package (a plugin, a
test's example driver) is added without touching this file.
"""
from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mountfs import secrets
from mountfs.errors import ConfigError

if TYPE_CHECKING:
    from mountfs.backends import Source

BUILTIN = ("mountfs.backends.local", "mountfs.backends.s3", "mountfs.backends.dcss",
           "mountfs.backends.firecrest", "mountfs.backends.metadisk",
           "mountfs.backends.amigocloud", "mountfs.backends.storj")
PLUGINS_ENV = "MOUNTFS_DRIVERS"
# A SOURCE without a scheme (a plain path) is a store of this driver.
DEFAULT_DRIVER = "local"


@dataclass(frozen=True)
class Option:
    """One setting of a driver. Given as `--<driver>-<name>` (or an alias), as
    `-o <driver>_<name>=VALUE`, else taken from the first of `env` that is set, else `default`.

    A `secret` option names a FILE holding the secret (a token, a password); `env` then names
    variables holding the secret itself. Its value reaches the driver only through
    `DriverContext.secret`, which also has it redacted from every log line."""

    name: str
    help: str
    parse: Callable[[str], Any] = str
    default: Any = None
    env: tuple[str, ...] = ()
    secret: bool = False
    switch: bool = False  # a flag without a value
    aliases: tuple[str, ...] = ()  # older flags that keep working
    identity: bool = False  # says which service the SOURCE names: part of the cache-dir key
    metavar: str | None = None

    def dest(self, driver: str) -> str:
        return f"{driver}_{self.name}"

    def flag(self, driver: str) -> str:
        return "--" + self.dest(driver).replace("_", "-")


def as_given(rest: str) -> str:
    return rest


@dataclass(frozen=True)
class Driver:
    """A driver's declaration. `open` makes the driver's `Source` for a SOURCE; it may do
    network requests only through `Source.check`, which the mount calls next."""

    name: str
    schemes: tuple[str, ...]
    summary: str  # one line for --help: what SOURCE looks like, where credentials come from
    open: Callable[[DriverContext], Awaitable[Source]]
    options: tuple[Option, ...] = ()
    # Variables whose values are credentials the driver's client library reads by itself
    # (AWS_SECRET_ACCESS_KEY): redacted from logs like the secrets read through the registry.
    secret_env: tuple[str, ...] = ()
    # How the driver writes its SOURCE canonically (for the cache-dir key and the mount table):
    # what follows "scheme:" -> its canonical form.
    canonical: Callable[[str], str] = as_given
    # Adds the subcommands of `mountfs <name> ...` to the parser given; each sets
    # `handler=<function(args) -> exit code>` with `set_defaults`.
    commands: Callable[[argparse.ArgumentParser], None] | None = None

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(f"driver {self.name} has no option {name!r}")


@dataclass
class DriverContext:
    """What a driver's factory gets: the SOURCE, split, and its option values."""

    driver: Driver
    source: str  # as given
    scheme: str
    rest: str  # what follows "scheme:"
    values: dict[str, Any] = field(default_factory=dict)  # option name -> value, defaults in

    def __getitem__(self, name: str) -> Any:
        self.driver.option(name)  # a typo in a driver is a KeyError, not a silent None
        return self.values.get(name)

    def secret(self, name: str) -> str | None:
        """The secret of option `name`: the text of the file it names, else the first of its
        variables that is set; None when there is none. Remembered for redaction."""
        option = self.driver.option(name)
        assert option.secret, f"{self.driver.name}.{name} is not declared secret"
        path = self.values.get(name)
        if path is not None:
            try:
                text = Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{option.flag(self.driver.name)} {path}: "
                                  f"{exc.strerror}") from None
            if not text:
                raise ConfigError(f"{option.flag(self.driver.name)} {path} is empty")
        else:
            text = next((v.strip() for v in map(os.environ.get, option.env) if v and v.strip()),
                        "")
        if not text:
            return None
        secrets.remember(text)
        return text

    def state_dir(self) -> Path:
        return state_dir(self.driver.name)


def state_dir(driver: str) -> Path:
    """The driver's private directory for what it keeps between mounts (a nonce, cached
    credentials): $XDG_STATE_HOME/mountfs/<driver>, mode 0700, made on first use."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    path = base / "mountfs" / driver
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # made earlier with another mode, or by a umask-bound parent
    return path


# Drivers by the value of PLUGINS_ENV they were loaded for (a test may set it after start).
_loaded: dict[str, list[Driver]] = {}


def drivers() -> list[Driver]:
    """Every registered driver, the built-in ones first."""
    plugins = os.environ.get(PLUGINS_ENV, "")
    if plugins not in _loaded:
        found: dict[str, Driver] = {}
        extra = [m.strip() for m in plugins.split(",") if m.strip()]
        for module_name in (*BUILTIN, *extra):
            try:
                driver = importlib.import_module(module_name).DRIVER
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"driver module {module_name!r} ({PLUGINS_ENV}): {exc}") \
                    from None
            found[driver.name] = driver
        secrets.watch_variables(v for d in found.values() for v in secret_variables(d))
        _loaded[plugins] = list(found.values())
    return _loaded[plugins]


def secret_variables(driver: Driver) -> Iterator[str]:
    yield from driver.secret_env
    for option in driver.options:
        if option.secret:
            yield from option.env


def split_source(source: str) -> tuple[Driver, str, str]:
    """The driver of SOURCE, its scheme and the rest; a SOURCE without a scheme is a path of
    the default driver."""
    scheme, sep, rest = source.partition(":")
    if not sep or not scheme or "/" in scheme:
        scheme, rest = DEFAULT_DRIVER, source
    for driver in drivers():
        if scheme in driver.schemes:
            return driver, scheme, rest
    known = ", ".join(s for d in drivers() for s in d.schemes)
    raise ConfigError(f"unknown storage scheme {scheme!r} in {source!r} (known: {known})")


def canonical_source(source: str) -> str:
    driver, scheme, rest = split_source(source)
    return f"{scheme}:{driver.canonical(rest)}"


def with_defaults(driver: Driver, given: Mapping[str, Any]) -> dict[str, Any]:
    """Option values: those given, else from the environment (not for secrets, whose
    variables hold the secret itself), else the defaults."""
    unknown = set(given) - {o.name for o in driver.options}
    if unknown:
        raise ConfigError(f"{driver.name} has no option {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for option in driver.options:
        value = given.get(option.name)
        if value is None and not option.secret:
            env = next((os.environ[v] for v in option.env if os.environ.get(v)), None)
            if env is not None:
                value = parse_value(driver, option, env)
        values[option.name] = option.default if value is None else value
    return values


def parse_value(driver: Driver, option: Option, text: str) -> Any:
    """`text` as `option` takes it; one line naming the option when it does not."""
    if option.switch:
        if text.lower() in ("", "1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{option.dest(driver.name)}: not a yes/no value: {text!r}")
    try:
        return option.parse(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{option.dest(driver.name)}: {exc}") from None


async def open_source(source: str, given: Mapping[str, Any] | None = None) -> Source:
    """The driver's Source for SOURCE with option values `given` (by option name)."""
    driver, scheme, rest = split_source(source)
    context = DriverContext(driver, source, scheme, rest, with_defaults(driver, given or {}))
    return await driver.open(context)


def cache_key(source: str, given: Mapping[str, Any]) -> str:
    """What names the cache of a mount: the canonical SOURCE and the options that say which
    service it names (one cache per service a source names)."""
    driver, _, _ = split_source(source)
    identity = [str(given[o.name]) for o in driver.options
                if o.identity and given.get(o.name) is not None]
    return "@".join([canonical_source(source), *identity])
