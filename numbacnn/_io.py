"""Atomic file writes: nothing a user saved is ever left half-written.

``atomic_write(path, write)`` is the one way numbacnn writes a file that matters
(checkpoints, metrics, curves, the MNIST cache and downloads):

1. ``write(f)`` fills a temporary file created next to ``path`` (same directory, so the
   final rename cannot cross file systems);
2. the file is flushed and ``fsync``-ed, then ``os.replace``-d over ``path`` (atomic on
   POSIX and Windows);
3. the directory is ``fsync``-ed, so the rename itself survives a power cut.

A crash, an exception or Ctrl-C at any moment leaves either the old complete file or the
new complete one under ``path``, never a torn one, and no temporary file behind.

``directory_lock(directory)`` keeps two runs from writing into one output directory at once.
"""

import contextlib
import os
import tempfile

__all__ = ["atomic_write", "directory_lock", "DirectoryInUse", "LOCK_NAME"]


def _umask():
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(dirname):
    """fsync a directory so a rename inside it is durable (best effort: some file systems
    and platforms cannot open or fsync a directory)."""
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync it, rename it over
    ``path``, then fsync the directory.

    path: str or os.PathLike; its directory is created if missing. write: a function of
    one binary file object. On any exception (KeyboardInterrupt included) the temp file
    is removed, ``path`` is left untouched, and the exception propagates. The new file
    gets the usual umask-based mode (mkstemp's 0600 is widened to 0666 & ~umask).
    """
    path = os.fspath(path)
    dirname = os.path.dirname(os.path.abspath(path))
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=dirname)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(dirname)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


LOCK_NAME = ".numbacnn.lock"


class DirectoryInUse(RuntimeError):
    """Another live numbacnn process holds the directory's lock."""


def _lock_owner(path):
    """The pid written in a lock file, or None if it cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def directory_lock(directory):
    """Hold ``directory/.numbacnn.lock`` (created with O_EXCL, holding this pid) while the
    block runs, so two runs writing to one output directory cannot interleave their files.

    Raises DirectoryInUse if a live process holds it. A lock left by a process that has
    died (a crash, a kill -9) is taken over. Re-entrant within one process. The lock file is
    removed when the block ends, however it ends.
    """
    path = os.path.join(os.fspath(directory), LOCK_NAME)
    # The lock appears with its pid already in it: written to a private file, then hard-linked
    # to LOCK_NAME (atomic, fails if it exists), so no reader ever sees an empty lock.
    mine = f"{path}.{os.getpid()}"
    with open(mine, "w") as f:
        f.write(f"{os.getpid()}\n")
    held = False  # by this process already (fit inside run)
    try:
        for _ in range(2):
            try:
                os.link(mine, path)
                break
            except FileExistsError:
                owner = _lock_owner(path)
                if owner == os.getpid():
                    held = True
                    break
                if owner is None or _alive(owner):  # unreadable: another writer's, keep out
                    raise DirectoryInUse(
                        f"{os.fspath(directory)} is in use by another numbacnn run (pid {owner}); wait "
                        f"for it to finish or choose another --out (if no run is alive, delete {path})"
                    ) from None
                for stale in (path, f"{path}.{owner}"):  # its process is gone (killed)
                    try:
                        os.unlink(stale)
                    except FileNotFoundError:
                        pass
        else:  # pragma: no cover - lost a race twice
            raise DirectoryInUse(f"{os.fspath(directory)}: could not take the lock {path}")
    finally:
        os.unlink(mine)
    if held:
        yield
        return
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
