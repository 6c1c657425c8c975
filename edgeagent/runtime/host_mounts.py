"""Binding a part of a volume for a pod without ever following a link a pod made.

A ``subPath`` names a path inside a volume that pods write to. Bound by its
path, the bind follows whatever symbolic links a pod left on the way, and
``x/y -> /`` gives the next pod the host's root (the kubelet's
CVE-2017-1002101). So the runtime never hands podman such a path:

1. ``open_beneath`` walks the path from the volume's root one component at a
   time, each opened relative to the last with ``O_NOFOLLOW`` (a link is
   refused, naming the path), creating missing directories with ``mkdirat``
   (the last one mode 0777: without fsGroup a non-root container could not
   write to it otherwise; those on the way 0755) and opening what it made
   again with ``O_NOFOLLOW``, so a link swapped in meanwhile is refused too;
2. ``bind`` mounts what it opened, by its file descriptor
   (``/proc/self/fd/N``, which the kernel resolves to that very inode), onto
   a mount point in the release's mounts dir, which only the agent can reach;
3. podman binds that mount point. A link made in the volume afterwards
   changes nothing: the mount holds the inode, on every container restart.

Mount points live as long as the release's pods: ``apply`` binds them anew
after removing the old pods (so a link made during the last revision is
seen), ``detach_all`` unmounts them (lazily: a pod still using one keeps its
own copy). A reboot drops them; ``observe`` then reports the pods that use
them dead, and the agent plays the release again.

Blocking (system calls on the node's disks): call these in a thread.
Linux only; the agent must be allowed to mount (root, as rootful podman).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from pathlib import Path

from .base import RuntimeApplyError

__all__ = ["bind", "detach_all", "is_mounted", "mount_points", "open_beneath"]

_MS_BIND = 4096
_MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def open_beneath(root: str, relative: str, *, what: str) -> int:
    """An ``O_PATH`` descriptor of ``root/relative``, resolved without following any link after ``root``.

    Missing directories on the way, and the last component, are created.
    ``root`` itself is trusted (a podman volume's directory, or a hostPath the
    node's policy allowed). Raises RuntimeApplyError naming ``what`` and the
    component at fault for a link, a ``..`` or anything that cannot be opened.
    The caller closes the descriptor.
    """
    parts = relative.split("/")
    if any(part in (".", "..") for part in parts):
        raise RuntimeApplyError(f"{what}: {relative!r} has a '.' or '..' component; refused")
    try:
        current = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeApplyError(f"{what}: cannot open {root}: {exc.strerror}") from exc
    walked = root.rstrip("/")
    try:
        for index, part in enumerate(p for p in parts if p):
            walked = f"{walked}/{part}"
            last = index == len([p for p in parts if p]) - 1
            following = _open_component(current, part, walked, what=what, directory=not last)
            os.close(current)
            current = following
        return current
    except BaseException:
        os.close(current)
        raise


def _open_component(parent: int, name: str, shown: str, *, what: str, directory: bool) -> int:
    """``name`` in the directory ``parent``, never followed if it is a link; made as a directory when missing."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(2):
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except FileNotFoundError:
            if attempt:
                raise RuntimeApplyError(f"{what}: {shown} vanished while it was being made; refused") from None
            _make_directory(parent, name, shown, what=what, mode=0o755 if directory else 0o777)
            continue
        except OSError as exc:
            raise RuntimeApplyError(f"{what}: cannot open {shown}: {exc.strerror}") from exc
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            os.close(fd)
            raise RuntimeApplyError(f"{what}: {shown} is a symbolic link; refused (a pod may not point a mount "
                                    "outside its volume)")
        if directory and not stat.S_ISDIR(mode):
            os.close(fd)
            raise RuntimeApplyError(f"{what}: {shown} is not a directory; refused")
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            os.close(fd)
            raise RuntimeApplyError(f"{what}: {shown} is neither a directory nor a file; refused")
        return fd
    raise AssertionError("unreachable")


def _make_directory(parent: int, name: str, shown: str, *, what: str, mode: int) -> None:
    try:
        os.mkdir(name, mode, dir_fd=parent)
    except FileExistsError:
        return  # made meanwhile: opened (and checked) by the caller
    except OSError as exc:
        raise RuntimeApplyError(f"{what}: cannot make {shown}: {exc.strerror}") from exc
    # The umask took bits off; set the mode through a descriptor that cannot be a link.
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:
        raise RuntimeApplyError(f"{what}: {shown} changed while it was being made: {exc.strerror}; refused") from exc
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def bind(fd: int, mount_point: Path) -> None:
    """Bind what ``fd`` (from ``open_beneath``) is onto ``mount_point``, made as a file or directory to match."""
    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    mount_point.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if is_mounted(mount_point):
        _detach(mount_point)
    if mount_point.is_symlink() or (mount_point.exists() and mount_point.is_dir() != is_dir):
        _remove_point(mount_point)
    if is_dir:
        mount_point.mkdir(mode=0o755, exist_ok=True)
    else:
        mount_point.touch(mode=0o644, exist_ok=True)
    source = f"/proc/self/fd/{fd}".encode()
    if _libc.mount(source, str(mount_point).encode(), None, _MS_BIND, None) != 0:
        code = ctypes.get_errno()
        raise RuntimeApplyError(f"cannot bind a subPath onto {mount_point}: {os.strerror(code)}"
                                + (" (the agent must run as root to mount)" if code == errno.EPERM else ""))


def is_mounted(mount_point: Path) -> bool:
    """Whether something is mounted on ``mount_point``."""
    return str(mount_point) in mount_points()


def mount_points() -> set[str]:
    """Every mount point of the agent's mount namespace (``/proc/self/mountinfo``, unescaped).

    ``os.path.ismount`` cannot tell: it compares a path with its parent, and a
    bind from the same filesystem (a file, or a volume's directory under the
    same disk) looks like neither a new device nor a root.
    """
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        return {_unescape(line.split(" ")[4]) for line in table if line.count(" ") >= 4}


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _detach(mount_point: Path) -> None:
    if _libc.umount2(str(mount_point).encode(), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # not mounted, or gone
            raise RuntimeApplyError(f"cannot unmount {mount_point}: {os.strerror(code)}")


def _remove_point(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()  # never rmtree: a point still mounted would take the volume's data with it
    else:
        path.unlink()


def detach_all(mounts_dir: Path) -> None:
    """Unmount every mount point in ``mounts_dir`` and remove them (and the dir): nothing of a volume is deleted."""
    if not mounts_dir.is_dir():
        return
    for point in mounts_dir.iterdir():
        for _ in range(8):  # a point bound twice (a crash between detach and bind) needs two
            if not is_mounted(point):
                break
            _detach(point)
        try:
            _remove_point(point)
        except OSError as exc:
            raise RuntimeApplyError(f"cannot remove the mount point {point}: {exc.strerror}") from exc
    mounts_dir.rmdir()
