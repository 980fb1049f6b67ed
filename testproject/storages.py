"""Storages for the fault tests: a disk that fills up after some writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from django.core.files.storage import FileSystemStorage


class DiskFullAfter(FileSystemStorage):
    """A FileSystemStorage whose disk is full once ``budget`` objects were saved.

    The failing save writes part of the object first, as a filling disk does. The
    count lives in a file next to the objects so it survives process restarts.
    """

    def __init__(self, budget: int = 1, **kwargs: Any):
        super().__init__(**kwargs)
        self.budget = budget

    def _save(self, name: str, content: Any) -> str:
        counter = Path(self.location) / ".saves"
        saved = int(counter.read_text()) if counter.exists() else 0
        if saved >= self.budget:
            path = Path(self.path(name))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as partial:
                partial.write(content.read(512))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        counter.write_text(str(saved + 1))
        return super()._save(name, content)
