"""``file://`` store: a directory. Writes go to a temporary sibling and are renamed into place (atomic)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from htgrpo.errors import ConfigError
from htgrpo.storage.base import Store


class FileStore(Store):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        if any(part == ".." for part in key.split("/")):
            raise ConfigError(f"key {key!r} leaves the store {self.uri} (a '..' segment)")
        return self.root / key if key else self.root

    def _atomic(self, key: str, write) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{time.time_ns()}"
        try:
            write(tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: str | Path) -> None:
        self._atomic(key, lambda tmp: shutil.copyfile(path, tmp))

    def get_file(self, key: str, path: str | Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.child(key)} does not exist")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic(key, lambda tmp: tmp.write_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.child(key)} does not exist")
        return src.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [prefix.strip("/")]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and ".tmp-" not in p.name
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
