"""Build a directory beside its final path, then move it into place in one rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_directory(output: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `output`, on any error it is removed.

    The staging directory sits next to `output` (same filesystem), so publishing is a rename and an
    interrupted build never leaves a directory at `output` that looks ready.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield staging
        _make_world_readable(staging)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _make_world_readable(root: Path) -> None:
    # mkdtemp makes 0700 dirs and some writers make 0600 files, but the serving user may not be the
    # preparing one (a Lambda container runs as a non-root user over files copied in as root).
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _publish(staging: Path, output: Path) -> None:
    if not output.exists() and not output.is_symlink():
        os.replace(staging, output)
        return
    # rename(2) cannot replace a non-empty directory: move the old one aside first, then drop it.
    retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
    os.replace(output, retired / output.name)
    os.replace(staging, output)
    shutil.rmtree(retired, ignore_errors=True)
