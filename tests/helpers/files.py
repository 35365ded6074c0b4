"""What a folder holds, to check that a refused or failed command wrote, replaced or left nothing."""

from __future__ import annotations

from pathlib import Path


def snapshot_files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden temps included) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
