"""A node's extended attributes: which names are kept (user.*, trusted.* and security.*, but
SELinux labels and POSIX ACLs), reading them from the node, and changing them, stored with
the node's other attributes (the namespace's `save_attrs`: with the data while an upload is
pending, else as the object's metadata)."""
from __future__ import annotations

import errno
import time
from collections.abc import Awaitable, Callable

from mountfs.backends.base import Backend
from mountfs.errors import NoSuchAttribute
from mountfs.nodes import Node

# Extended attribute namespaces kept (the kernel checks who may set trusted.* and security.*).
XATTR_NAMESPACES = ("user.", "trusted.", "security.")
# Attributes the kernel would give a meaning the mount cannot: SELinux labels and POSIX ACLs
# would not be enforced here. Refused as a filesystem without them refuses them, ENOTSUP to
# read, set or remove. That answer also spares `ls -l` two FUSE requests per entry: coreutils
# asks each file for security.selinux and system.posix_acl_access, and once told ENOTSUP it
# asks no other file of the same mount (ENODATA it takes for that file alone).
UNKEPT_XATTRS = frozenset({"security.selinux", "system.posix_acl_access",
                           "system.posix_acl_default"})


class Xattrs:
    """The extended attributes of nodes, as the FUSE layer reads and changes them."""

    def __init__(self, backend: Backend, save: Callable[[Node], Awaitable[None]]) -> None:
        self.backend = backend
        self.save = save

    def get(self, node: Node, name: str) -> bytes:
        refuse_unkept(name)
        try:
            return node.attrs.xattrs[name]
        except KeyError:
            raise NoSuchAttribute(name) from None

    def names(self, node: Node) -> list[str]:
        """The names a get answers (an unkept one another tool stored stays unshown)."""
        return [name for name in node.attrs.xattrs if name not in UNKEPT_XATTRS]

    async def set(self, node: Node, name: str, value: bytes) -> None:
        refuse_unkept(name)
        if not name.startswith(XATTR_NAMESPACES):
            # setxattr(2): ENOTSUP is the answer for a namespace the filesystem lacks.
            raise OSError(errno.ENOTSUP, f"{name}: only {', '.join(XATTR_NAMESPACES)}* "
                          "attributes are kept")
        if not self.backend.features.keeps("xattr"):
            raise OSError(errno.ENOTSUP, f"{self.backend.describe()} keeps no extended "
                          "attributes")
        node.attrs.xattrs[name] = value
        node.attrs.changed(time.time_ns())
        await self.save(node)

    async def remove(self, node: Node, name: str) -> None:
        refuse_unkept(name)
        if name not in node.attrs.xattrs:
            raise NoSuchAttribute(name)
        del node.attrs.xattrs[name]
        node.attrs.changed(time.time_ns())
        await self.save(node)


def refuse_unkept(name: str) -> None:
    if name in UNKEPT_XATTRS:
        raise OSError(errno.ENOTSUP, f"{name}: SELinux labels and POSIX ACLs are not kept")
