"""Where a report goes: stdout, or a file (`--output FILE`) written atomically.

A CI job uploads the SARIF or JUnit file whatever the exit code: a half-written one (a full disk, an
interrupt) must never be there to upload. The report is written beside the target and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from graphdoctor.errors import GraphDoctorError, first_line

__all__ = ["report_file"]


@contextlib.contextmanager
def report_file(path: Path) -> Iterator[TextIO]:
    """A text stream whose content replaces `path` when the block ends without an error, else nothing."""
    _refuse_non_file(path)
    buffer = io.StringIO()
    yield buffer
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(temp, "x", encoding="utf-8") as file:
            file.write(buffer.getvalue())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as error:
        reason = error.strerror or first_line(error)
        raise GraphDoctorError(f"cannot write the report to {path}: {reason}; nothing was written") from None
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


def _refuse_non_file(path: Path) -> None:
    """A folder, FIFO or device in the report's place is refused, not replaced."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise GraphDoctorError(f"cannot write the report to {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        raise GraphDoctorError(f"cannot write the report to {path}: it is not a regular file")
