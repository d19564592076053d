"""A bounded on-disk cache of fetched objects, so epochs after the first read images from local scratch.

`pipeline.ImageLoader` consults it before fetching from storage and fills it after. It holds at most
``max_bytes`` of object data: the least recently used entries are evicted first, and an object bigger than the
whole budget is never stored. Entries are files named by a hash of the key, written atomically, so a
restarted trainer pod with the same scratch volume finds them again. Safe to share between threads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

__all__ = ["DiskCache"]

log = logging.getLogger(__name__)

_SUFFIX = ".obj"


class DiskCache:
    """An LRU cache of bytes in a folder, bounded by total size.

    Args:
        directory: Folder for the entries (created if missing); entries already there are adopted,
            oldest-modified first in the eviction order.
        max_bytes: Upper bound on the total size of the entries.

    Raises:
        ValueError: If ``max_bytes`` is negative.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # file name -> size, least recent first
        self._size = 0
        self.hits = 0
        self.misses = 0
        existing = sorted(
            (p for p in self.directory.glob(f"*{_SUFFIX}") if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        for path in existing:
            self._entries[path.name] = path.stat().st_size
            self._size += path.stat().st_size
        with self._lock:
            self._evict()

    @property
    def size_bytes(self) -> int:
        """Total size of the entries now stored."""
        with self._lock:
            return self._size

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @staticmethod
    def _name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest() + _SUFFIX

    def get(self, key: str) -> bytes | None:
        """Return the cached bytes of ``key`` and mark it recently used, or None if not cached."""
        name = self._name(key)
        with self._lock:
            if name not in self._entries:
                self.misses += 1
                return None
            self._entries.move_to_end(name)
        try:
            data = (self.directory / name).read_bytes()
        except OSError:
            with self._lock:  # removed behind our back: forget it
                self._size -= self._entries.pop(name, 0)
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return data

    def put(self, key: str, data: bytes) -> bool:
        """Store ``data`` as ``key``, evicting least recently used entries to stay within the bound.

        Returns:
            Whether it was stored (False when it is bigger than the whole cache or the disk refused it).
        """
        if len(data) > self.max_bytes:
            return False
        name = self._name(key)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            log.warning("Object cache in %s cannot store more: %s", self.directory, exc)
            return False
        with self._lock:
            Path(tmp).replace(self.directory / name)
            self._size -= self._entries.pop(name, 0)
            self._entries[name] = len(data)
            self._size += len(data)
            self._evict()
        return True

    def _evict(self) -> None:
        """Drop least recently used entries until the total fits; call with the lock held."""
        while self._size > self.max_bytes and self._entries:
            name, size = self._entries.popitem(last=False)
            self._size -= size
            (self.directory / name).unlink(missing_ok=True)
