"""What the namespace keeps per name: the `Node` (one per inode) and the rule for valid names.

`NodeTable` (mountfs/table.py) creates nodes and keeps them; the namespace (mountfs/namespace.py),
the listings (mountfs/listings.py), the FUSE layer (mountfs/operations.py), the handles, renames
(mountfs/rename.py) and conflict settling (mountfs/conflicts.py) read and set their fields as
the table in `Node` says.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass, field

from cache.objects import CachedObject
from mountfs.attrs import Attributes
from mountfs.errors import InvalidArgument, NameTooLong

NAME_MAX = 255


@dataclass(eq=False)
class Node:
    """A file, directory, symlink or bucket of the tree, or its root. Times are
    `time.monotonic()` (-1e18: never); "ns" is `Namespace`, "table" the `NodeTable`, "lst" the
    `Listings`, "ops" the FUSE layer (`Operations`), "rename" and "conflicts" the modules of
    those names.

    field         meaning                               set by                    valid
    ------------  ------------------------------------  ------------------------  ------------------
    inode         its key in table.nodes; the kernel's  table.new                 always
                  inode number
    parent, name  where it is: parent.children[name]    table.new; ns.rename;     always; parent is
                  is this node while it is attached     conflicts (renamed to     None at the root
                                                        the copy)                 only
    attrs         mode, owner, times, rdev, xattrs,     lst._apply; ns (new,      if meta_known;
                  other tools' metadata                 truncate, xattrs); ops    else defaults
                                                        (setattr, write,
                                                        O_TRUNC)
    meta_known    False: attrs are the defaults a       lst (_apply,              always
                  listing left; lst.complete reads the  _child_from_info,
                  metadata                              _probe, _read_metadata)
    size          a file's bytes (a symlink's: its      lst._apply; settle;       files
                  target's)                             ns.truncate; ops (write,
                                                        truncate, O_TRUNC)
    sized         False: size is a listing's stand-in   lst (_apply,              files
                  (ObjectInfo.sized): open_data stats   _child_from_info)
                  the file first
    etag          the server version this mount last    lst._apply; settle; ns    files; obj's
                  saw ("": none or unknown)             (save_attrs,              record is newer
                                                        discard_upload); rename   while obj is set
    on_server     the server has an object by this      table.new; lst._apply;    while obj is None
                  name (a created file has not)         settle; rename;           (see
                                                        ns.discard_upload;        exists_on_server)
                                                        conflicts
    obj           the cached object, while the file is  ns (create, open_data;    files
                  open or pending (holds data not       settle and
                  uploaded)                             discard_upload clear it)
    kernel_       the version (cache ETag) of the file  ns.open_data             files; "": none
    version       the kernel last opened: its pages of
                  another version are dropped at open
    link_target   a symlink's target, once read         ns (symlink, readlink);   symlinks; None:
                                                        lst._apply clears it      not read yet
    lookups       the kernel's lookup count             ops (+: entry replies);   always
                                                        table.forget (-)
    open_count    open handles of the file              ns (open_data,            always
                                                        close_data)
    unlinked      gone from the tree (unlink, rmdir,    ns                        always
                  replaced by a rename, upload
                  discarded) while the kernel or a
                  handle holds it
    refreshed_at  when its attributes last came from    table.new; lst; ns        fresh for the TTL
                  the server or changed here
    children      a directory's entries by name, this   table (new, detach); lst  directories (None
                  mount's pending files included        (listings); ns.rename;    for files)
                                                        conflicts
    listed_at     when the last complete listing        lst.list_dir; ns.mkdir;   directories; see
                  ended; children are the whole         ns._check_empty and       table.listing_
                  directory while it is fresh           conflicts reset it        fresh
    changed_at    when the service last said the        table.set_aside           directories; a
                  directory changed (a change feed)     (changes.expire)          listing or stat
                                                                                  begun before is
                                                                                  not fresh
    listed_size   entries in the last listing (None:    lst (list_dir, a lookup's directories
                  never listed; a listing a lookup      listing); ns.mkdir
                  cut short counts what it read)
    listings      listings of this directory under way  lst.list_dir              directories
    readers       when each open directory handle on    table.reading,            directories
                  it was opened (a listing that ended   table.done_reading
                  after one stays fresh while it is
                  open: table.listing_fresh)
    removed       name -> when removed here, so that    table.note_removed;       while listings > 0
                  listings under way do not bring it    lst.list_dir clears it
                  back                                  when no listing runs
    absent        name -> when the server lacked it     lst (lookup, list_dir);   directories; fresh
                  (negative lookups)                    table.new; ns.rename;     for the TTL
                                                        conflicts
    entries_      when this mount last changed the      ns._entries_changed;      directories; 0:
    changed_ns    directory's entries (ns since the     cleared once stored on    nothing newer
                  epoch); its times are at least that   its marker (dirtimes)     than the store
    directory_    the key of an older tool's object     lst._child_from_info      directories; "":
    object        that makes it a directory (NAME_$fol-                           none
                  der$, or NAME of x-directory type)
    """
    inode: int
    parent: Node | None
    name: str
    attrs: Attributes
    size: int = 0
    etag: str = ""
    on_server: bool = True
    lookups: int = 0
    open_count: int = 0
    unlinked: bool = False
    refreshed_at: float = 0.0
    children: dict[str, Node] | None = None
    listed_at: float = -1e18
    changed_at: float = -1e18
    obj: CachedObject | None = None
    link_target: bytes | None = None
    kernel_version: str = ""
    meta_known: bool = True
    listings: int = 0
    readers: list[float] = field(default_factory=list)
    removed: dict[str, float] = field(default_factory=dict)
    listed_size: int | None = None
    entries_changed_ns: int = 0
    directory_object: str = ""
    absent: dict[str, float] = field(default_factory=dict)
    sized: bool = True

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.attrs.mode)

    @property
    def exists_on_server(self) -> bool:
        return self.obj.record.on_server if self.obj is not None else self.on_server

    def settle(self) -> None:
        """Adopt the server version of an object uploaded since it was last used here."""
        obj = self.obj
        if obj is not None and not obj.dirty:
            # Also while open: a clean object's record is this mount's newest word on the
            # server version (the base of the next upload, via open_object).
            self.etag, self.size, self.on_server = obj.record.etag, obj.size, obj.record.on_server
            if self.open_count == 0:
                self.obj = None

    @property
    def pending(self) -> bool:
        """Holds data only this mount has: keep it even where the server does not list it."""
        return self.obj is not None and self.obj.dirty

    def path(self) -> list[str]:
        names: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            names.append(node.name)
            node = node.parent
        return names[::-1]

    def is_under(self, ancestor: Node) -> bool:
        """This node is `ancestor` or below it."""
        walk: Node | None = self
        while walk is not None:
            if walk is ancestor:
                return True
            walk = walk.parent
        return False


def check_name(name: str) -> None:
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a store's name that is not UTF-8 (the local store's bytes)
        raise InvalidArgument(repr(name[:40])) from None
    if size > NAME_MAX:
        raise NameTooLong(name[:40])
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise InvalidArgument(name)
