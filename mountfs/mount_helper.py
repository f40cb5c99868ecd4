"""The mount(8) helper: `mount -t fuse.mountfs SOURCE DIR -o OPTS` and /etc/fstab lines.

mount(8) runs `/sbin/mount.fuse.mountfs SOURCE DIR [-sfnv] [-N NS] -o rw,OPTS` (the entry
point `mount.fuse.mountfs`); without it, fuse3's `mount.fuse3` runs `mountfs SOURCE DIR -o
OPTS` (cli.main hands that form here). Either way this becomes `mountfs mount SOURCE DIR`
with each `-o` item mapped:

- `name=VALUE` / `name` where `--name` (with '-' for '_') is a flag of `mountfs mount`:
  that flag (`cache_size=10G` -> `--cache-size 10G`, `allow_other` -> `--allow-other`), so
  every mount option and every driver's option (`s3_endpoint_url=...`) is taken, from the
  parser itself;
- `ro` -> `--read-only`;
- what is for mount(8), systemd or fstab and not for the filesystem (`rw`, `defaults`,
  `auto`, `noauto`, `user`, `users`, `nouser`, `owner`, `group`, `_netdev`, `nofail`,
  `x-*`, `comment=*`) is dropped;
- anything else (`nosuid`, `nodev`, `noexec`, `default_permissions`, ...) is a FUSE mount
  option, passed on with `-o`.

The mount then returns once the filesystem is mounted, serving in a detached process, which
is what mount(8) expects of a helper.
"""
from __future__ import annotations

import argparse
import os
import sys

from mountfs.errors import ConfigError

# -o items that are mount(8)'s, fstab's or systemd's business, not the filesystem's.
DROPPED = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group",
           "_netdev", "nofail"}
DROPPED_PREFIXES = ("x-", "comment=")
# -o items that name a mountfs flag of another spelling.
RENAMED = {"ro": "--read-only"}
# Flags of `mountfs mount` that are not for an fstab line.
INTERNAL = {"--help", "--ready-fd", "--block-size", "--workers"}


def mount_flags() -> dict[str, argparse.Action]:
    """The long flags of `mountfs mount`, each with its argparse action."""
    from mountfs.cli import build_parser

    return {flag: action for action in subcommands(build_parser())["mount"]._actions
            for flag in action.option_strings
            if flag.startswith("--") and flag not in INTERNAL}


def translate(options: list[str]) -> list[str]:
    """`mountfs mount` arguments for the -o items of an fstab line."""
    flags = mount_flags()
    args: list[str] = []
    fuse: list[str] = []
    for item in options:
        name, sep, value = item.partition("=")
        if item in DROPPED or item.startswith(DROPPED_PREFIXES):
            continue
        if item in RENAMED:
            args.append(RENAMED[item])
            continue
        flag = "--" + name.replace("_", "-")
        action = flags.get(flag)
        if action is None:
            fuse.append(item)
        elif action.nargs == 0:  # a switch: `allow_other`
            if sep:
                raise ConfigError(f"-o {item}: {name} takes no value")
            args.append(flag)
        elif not sep:
            raise ConfigError(f"-o {name} needs a value: -o {name}=VALUE")
        else:
            args += [flag, value]
    if fuse:
        args += ["-o", ",".join(fuse)]
    return args


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The helper's arguments as mount(8) passes them."""
    parser = argparse.ArgumentParser(prog="mount.fuse.mountfs", add_help=False)
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("-f", dest="fake", action="store_true")  # mount(8) -f: do nothing
    parser.add_argument("-n", action="store_true")  # no mtab: there is none to write
    parser.add_argument("-s", action="store_true")  # sloppy: unknown options are FUSE's
    parser.add_argument("-v", dest="verbose", action="store_true")
    parser.add_argument("-N", dest="namespace")
    parser.add_argument("-t", dest="type")  # fuse.mountfs: nothing to choose
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unknown argument {unknown[0]!r} (mount.fuse.mountfs SOURCE DIR "
                          f"[-o OPTIONS])")
    if args.namespace:
        raise ConfigError("mount -N (another mount namespace) is not supported")
    items = [o for opt in args.options for o in opt.split(",") if o]
    return args, ["mount", args.source, args.mountpoint, *translate(items),
                  *(["-v"] if args.verbose else [])]


def main(argv: list[str] | None = None) -> int:
    from mountfs import cli

    try:
        args, command = parse(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"mountfs: {exc}", file=sys.stderr)
        return 1
    if args.fake:
        return 0
    return cli.main(command)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The commands of `parser` (`mount`, `umount`, ...), each with its own parser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def helper_form(argv: list[str], commands: set[str]) -> bool:
    """Whether `mountfs ARGV` is how mount.fuse3 runs a filesystem (`mountfs SOURCE DIR -o
    OPTS`): no command first, and the mount point a directory."""
    return (len(argv) >= 2 and argv[0] not in commands and not argv[0].startswith("-")
            and os.path.isdir(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
