"""Files written whole or not at all: to a temporary file beside the target, synced, then renamed into place.

An interrupt or a full disk then leaves no half-written file for a replay (`--save-inputs`) or a CI upload
(`lint --output`) to pick up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from graphdoctor.errors import GraphDoctorError, first_line

__all__ = ["replace_whole"]


def replace_whole(target: Path, write: Callable[[BinaryIO], None], what: str) -> None:
    """`write` the content into a temporary file beside `target`, then rename it over `target`; on an
    OSError, one line naming `what` was being written ("inputs", "the report") and nothing is left."""
    temp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(temp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except OSError as error:
        reason = error.strerror or first_line(error)
        raise GraphDoctorError(f"cannot write {what} to {target}: {reason}; nothing was written") from None
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
