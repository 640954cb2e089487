"""Files only the herder may read: the data folder, its secrets, the SQLite file.

Imported by herder/settings.py (and accounts/keys.py), so it imports no Django
models. A secret is written once, atomically: to a private temporary file in the
same folder (O_EXCL, mode 0600), flushed to disk, then hard-linked to its final
name, which fails when another process got there first; that process's file is
then the one everybody reads. So the final name only ever holds a complete
file, a crash leaves at most a stray temporary file, and two first starts at
once agree on one key.
"""

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create the folder (mode 0700) or tighten an existing one the herder owns."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Make sure `path` exists with mode 0600 (created empty when missing, e.g. the
    SQLite file before Django connects, so SQLite never creates it with the umask's
    mode; its journal and WAL files take the database file's mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        _tighten(path, PRIVATE_FILE_MODE)
    except FileNotFoundError:
        pass  # no such folder: Django's own error on connecting says so
    return path


def create_once(path: Path, data: bytes) -> bool:
    """Write `data` to `path` (mode 0600) unless it exists; True when this call wrote it.

    Whoever loses a race reads the winner's file afterwards (read_secret).
    """
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def read_secret(path: Path, *, what: str) -> str:
    """The stripped text of a secret file; an empty one is an error, never a key."""
    _tighten(path, PRIVATE_FILE_MODE)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        text = None
    if not text:
        raise ImproperlyConfigured(
            f"{path} ({what}) is empty or not text: it was damaged. Restore it from a backup, "
            f"or delete it to have a new one made on the next start (everything signed with "
            f"the old one stops being valid)."
        )
    return text


def _tighten(path: Path, mode: int) -> None:
    # Files from before this rule (or an operator's umask) may be readable by others.
    try:
        info = path.stat()
        if info.st_uid == os.geteuid() and info.st_mode & 0o777 & ~mode:
            path.chmod(info.st_mode & 0o777 & mode)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    # The link itself survives a power cut only once its folder is flushed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
