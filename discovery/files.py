"""Files that must never be seen half-written: the rendered config, tokens, keys, passwords.

`write_atomic` replaces a file in one rename (a reader sees the old file or the new one);
`write_secret` is the same for a file only its owner may read; `read_secret` reads one back.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int | None = None, *, durable: bool = True) -> None:
    """Replace `path` so that a reader sees the old file or the new one, never a mix. `mode`
    forces the permissions (a file holding a secret); otherwise an existing file keeps its own.
    `durable=False` leaves the rename's durability to a later `sync_directory(path.parent)`
    (the data itself is always on disk before the rename)."""
    directory = path.parent
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, path.stat().st_mode & 0o777)
        if not path.exists():
            os.chmod(temporary, 0o644)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if durable:
        sync_directory(directory)


def sync_directory(directory: Path) -> None:
    """A rename is durable only once the directory entry is on disk."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)



def write_secret(path: Path, text: str, mode: int) -> None:
    """Write atomically with `mode` (the temporary file is owner-only until then), creating the
    directory if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode)


def read_secret(path: Path) -> str | None:
    """The stripped contents of a secret file; None when it is missing or empty."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None
