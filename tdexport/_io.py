"""Atomic file and directory writes: outputs appear whole or not at all, with the user's file mode.

Temporary files and folders are created private (``mkstemp`` 0600, ``mkdtemp`` 0700); everything that
becomes a user-visible output gets the mode a plain ``open``/``mkdir`` would give under the current
umask (0644 / 0755 with the usual 022), so the files of one run folder never differ in mode.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError

__all__ = ["atomic_dir", "atomic_write", "atomic_write_bytes", "check_out_dir", "publish_dir", "output_mode"]


def output_mode(directory: bool = False) -> int:
    """The mode a new file (0o666) or directory (0o777) gets under this process's umask."""
    # os.umask can only be read by setting it; set it straight back (the process is single-threaded here).
    mask = os.umask(0o022)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _fix_modes(root: Path) -> None:
    """Give a staged tree the modes of normally created files and folders."""
    file_mode, dir_mode = output_mode(), output_mode(directory=True)
    os.chmod(root, dir_mode)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(parent, name), file_mode)


def check_out_dir(target: str | Path, *, overwrite: bool = False, option: str = "--out") -> None:
    """Refuse an output folder that would mix old and new files.

    Raises:
        UsageError: ``target`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    target = Path(target)
    if target.is_file() or (target.exists() and not target.is_dir()):
        raise UsageError(f"{option} {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UsageError(f"{option} {target} exists and is not empty; pass --overwrite to replace it whole, "
                         f"or choose another {option}")


def publish_dir(staged: Path, target: Path) -> None:
    """Move a finished staging folder to ``target``, replacing an existing one whole.

    The old folder is renamed aside first, the new one renamed into place, and only then is the old one
    deleted: a reader sees the old folder or the new one, never a mix, and a crash in between leaves
    both on disk rather than neither.
    """
    _fix_modes(staged)
    if not target.exists():
        os.replace(staged, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target`` that becomes ``target`` only on success.

    An existing non-empty ``target`` is refused (`UsageError`) unless ``overwrite``, in which case it is
    replaced whole (see `publish_dir`). On an exception the temporary folder is removed and ``target``
    is untouched.
    """
    target = Path(target)
    check_out_dir(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same directory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:  # the bytes reach the disk before the rename makes them visible
            os.fsync(fh.fileno())
        os.chmod(tmp, output_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see `atomic_write`)."""
    atomic_write(path, lambda p: p.write_bytes(data))
