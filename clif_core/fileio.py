"""Writing files safely: atomic writes, filesystem errors as ClifErrors, and locks on folders in use.

- `atomic_path` / `atomic_dir`: a crash, a cancel or a full disk never leaves a half-written file where a
  good one was, nor a temp file beside it. Temps are named `.NAME.clif-PID-RANDOM.tmp`; the next write into
  the same folder removes those whose process is gone (a run killed with SIGKILL cannot clean up itself).
  The data is flushed to disk (fsync) before the rename, and the folder after it.
- `filesystem_errors`: the one place where a read-only folder, a full disk or a permission problem
  (EROFS, ENOSPC, EDQUOT, EACCES, EPERM) becomes a ClifError naming the path and what to do. The atomic
  writers and the `clif` command's top-level handler use it.
- `in_use`: a run folder or an output one process is writing is locked; a second run on it is refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Optional

from .errors import ClifError

if TYPE_CHECKING:
    import torch

_TEMP = re.compile(r"^\..*\.clif-(\d+)-[0-9a-f]+\.tmp$")
"""Names of the temps `atomic_path` and `atomic_dir` make: `.NAME.clif-PID-RANDOM.tmp`."""
_OLD = re.compile(r"^\.(.+)\.old-clif-(\d+)$")
"""A previous folder `atomic_dir` moved aside: `.NAME.old-clif-PID` (the sandbox pretrainer looks for it too)."""

_FIXES = {
    errno.ENOSPC: "the disk is full; free some space there or choose a folder on another disk",
    errno.EDQUOT: "your disk quota is used up; free some space there or choose a folder on another disk",
    errno.EROFS: "the file system is read-only; choose a folder you can write to",
    errno.EACCES: "permission denied; change the permissions or choose another location",
    errno.EPERM: "the operation is not permitted; change the permissions or choose another location",
}
"""The filesystem errors a user can fix, with what to do."""
_UNCHANGED = "nothing was replaced: what was there before is unchanged"


# ------------------------------------------------------------------------------------------- errors


def filesystem_error(err: OSError, path: Optional[str | os.PathLike] = None, note: str = "") -> Optional[ClifError]:
    """A ClifError naming `path` (else the error's own file name) and the fix, for the errors a user can fix
    (full disk, read-only folder, permissions); None for any other OSError. `note` is appended."""
    fix = _FIXES.get(err.errno)
    if fix is None:
        return None
    where = path if path is not None else err.filename
    return ClifError(f"{where if where is not None else 'a file'}: {fix}{f' ({note})' if note else ''}")


@contextmanager
def filesystem_errors(path: Optional[str | os.PathLike] = None, note: str = "") -> Iterator[None]:
    """Turn a full disk, a read-only folder or a permission problem inside the block into a ClifError naming
    `path` (else the file the error names) and ending with `note`; other OSErrors pass unchanged."""
    try:
        yield
    except OSError as err:
        mapped = filesystem_error(err, path, note)
        if mapped is None:
            raise
        raise mapped from err


# ------------------------------------------------------------------------------------------------ temps


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _sweep_stale(folder: Path) -> None:
    """Remove the temps in `folder` left by processes that are gone; a previous folder `atomic_dir` had
    moved aside when its process died is put back if nothing replaced it, else removed.

    Best effort: another process may be sweeping the same entries, so what fails here is left as it is.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        temp, old = _TEMP.match(name), _OLD.match(name)
        if (temp is None and old is None) or _alive(int(temp.group(1) if temp else old.group(2))):
            continue
        path = folder / name
        with suppress(OSError):
            if old is not None and not (folder / old.group(1)).exists():
                os.replace(path, folder / old.group(1))
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _make_temp_dir(target: Path) -> Path:
    """A private folder beside `target` named as a temp of this process, after sweeping stale ones."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target.parent)
    tmp = target.parent / f".{target.name[:180]}.clif-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir(mode=0o700)
    return tmp


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders may refuse it on some file systems)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if not path.is_dir() or err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (same file name, in a private temp folder beside `path`); on success it is
    flushed and renamed onto `path`, else removed, along with anything a library left beside it (safetensors
    writes its own temp next to the file it is asked to write).

    A full disk, a read-only folder or a permission problem is a ClifError naming `path`; the previous file
    at `path` is untouched on any failure.
    """
    target = Path(path)
    with filesystem_errors(target, _UNCHANGED):
        tmp_dir = _make_temp_dir(target)
        tmp = tmp_dir / target.name
        try:
            yield tmp
            _fsync(tmp)
            os.replace(tmp, target)
            _fsync(target.parent)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path`, else it is removed.

    A previous folder at `path` is moved aside and deleted only after the new one is in place, so a crash
    at any point leaves either the old or the new folder, never a half-written one. `path` is held
    (`in_use`) while it is written, so two processes cannot write it at once. Filesystem errors are ClifErrors
    naming `path`, as in `atomic_path`.
    """
    target = Path(path)
    with in_use(target), filesystem_errors(target, _UNCHANGED):
        tmp = _make_temp_dir(target)
        os.chmod(tmp, 0o777 & ~_umask())  # private while written; the result should read like any folder
        try:
            yield tmp
            _fsync_tree(tmp)
            if not target.exists():
                os.replace(tmp, target)
                _fsync(target.parent)
                return
            old = target.with_name(f".{target.name}.old-clif-{os.getpid()}")
            if old.exists():  # left by a run that crashed between the two renames below
                shutil.rmtree(old)
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old, target)
                raise
            _fsync(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Optional[Mapping[str, str]] = None
) -> Path:
    """Write a safetensors file atomically (contiguous CPU copies of the tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(plain, str(tmp), metadata=dict(metadata) if metadata else None)
        except SafetensorError as err:  # its I/O errors come as text: "... (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(tmp)) from err
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------------------------------------ locks


@contextmanager
def in_use(path: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold `path` (a run folder, an output folder or file) for this process while the block runs; a second
    holder, in this process or another, is refused with a ClifError naming the holder's pid.

    The lock is an flock on `.NAME.lock` beside `path`, removed on release. The kernel drops an flock when its
    process dies, so a killed run leaves nothing that blocks the next one. `enabled=False` (the non-main
    processes of a multi-process run, whose main process holds it) does nothing.
    """
    if not enabled:
        yield
        return
    target = Path(path)
    lock = target.parent / f".{target.name[:200]}.lock"
    with filesystem_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise ClifError(
                    f"{target} is in use by another run{f' (pid {holder})' if holder else ''}; wait for it to "
                    "finish or choose another folder") from None
            try:
                current = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:  # its holder released and removed it between our open and flock
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
