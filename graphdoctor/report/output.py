"""Where a report goes: stdout, or a file (`--output FILE`) written atomically.

A CI job uploads the SARIF or JUnit file whatever the exit code: a half-written one (a full disk, an
interrupt) must never be there to upload. The report is written beside the target and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from graphdoctor.errors import GraphDoctorError
from graphdoctor.files import replace_whole

__all__ = ["report_file", "workspace_path"]


@contextlib.contextmanager
def report_file(path: Path) -> Iterator[TextIO]:
    """A text stream whose content replaces `path` when the block ends without an error, else nothing."""
    _refuse_non_file(path)
    buffer = io.StringIO()
    yield buffer
    content = buffer.getvalue().encode("utf-8")
    replace_whole(path, lambda file: file.write(content), "the report")


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


def workspace_path(path: Path) -> Path:
    """The path relative to the current directory when it lies under it, else absolute: where CI tools such as
    GitHub's annotations and code scanning expect a repository's files. Symlinks are kept, not resolved."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path.cwd())
    except ValueError:
        return absolute
