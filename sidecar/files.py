"""Telling that a watched file changed: its signature, the one the sidecar polls everywhere
(config, TLS files, token files)."""

from __future__ import annotations

import os

__all__ = ["FileSignature", "file_signature", "signature_or_none"]

FileSignature = tuple[int, int, int, int]
"""(device, inode, mtime in ns, size)."""


def file_signature(path: str) -> FileSignature:
    """The signature of ``path`` after following symlinks; ``OSError`` if it cannot be read.

    Following the links is what makes a Kubernetes ConfigMap or Secret update visible: the
    kubelet swaps the ``..data`` symlink to a new directory, so the file we open is a new inode
    although its path (and often its size and mtime) did not change.
    """
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def signature_or_none(path: str) -> FileSignature | None:
    """:func:`file_signature`, ``None`` when the file is absent or unreadable."""
    try:
        return file_signature(path)
    except OSError:
        return None
