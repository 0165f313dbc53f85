"""Where results and data live: a local folder or an object-store URI, through pyarrow filesystems.

``storage.path``, ``data.path``, ``--resume-from`` and ``predict --checkpoint`` take a local path
or a URI (``s3://bucket/prefix``, or any scheme pyarrow knows, e.g. ``gs://``). Settings are
never in a profile: S3 credentials and region come from the usual AWS environment variables,
``~/.aws`` or the node's instance role, and an S3-compatible store (MinIO, Ceph, a test server)
is chosen with the standard ``AWS_ENDPOINT_URL`` (e.g. ``http://127.0.0.1:9000``), which pyarrow,
Ray and the AWS tools all read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from lfa_ray.errors import UserError


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


@contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A temporary local folder beside ``out`` to fill, renamed to ``out`` (absent or empty) when the
    block ends, removed when it raises: ``out`` appears complete or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class Location:
    """A file or folder on some filesystem; ``uri`` is what users see and pass back."""
    fs: pafs.FileSystem
    path: str  # the filesystem's own path: absolute for local, bucket/key for S3
    scheme: str = ""  # "" for local

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.path}" if self.scheme else self.path

    def __str__(self) -> str:
        return self.uri

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def local(self) -> Path:
        assert self.is_local, self.uri
        return Path(self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> "Location":
        return Location(self.fs, self.path.rstrip("/").rsplit("/", 1)[0], self.scheme)

    def __truediv__(self, name: str) -> "Location":
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", self.scheme)

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise UserError(f"{self.uri}: cannot be read ({str(exc).splitlines()[0]}); "
                            f"check the URI, credentials and AWS_ENDPOINT_URL") from None

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def size(self) -> int:
        return self._info().size

    def children(self, files_only: bool = False) -> list["Location"]:
        """What is directly inside (files only, if asked), sorted by name, hidden entries left out."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((Location(self.fs, i.path, self.scheme) for i in infos if not i.base_name.startswith(".")
                       and (i.type == pafs.FileType.File or not files_only)), key=lambda loc: loc.name)

    def files(self) -> list["Location"]:
        return self.children(files_only=True)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> "Location":
        """Atomically: a local file is renamed into place; an object-store PUT is atomic already."""
        if self.is_local:
            target = self.local
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
        return self

    def write_text(self, text: str) -> "Location":
        return self.write_bytes(text.encode())

    def mkdir(self) -> None:
        try:
            self.fs.create_dir(self.path, recursive=True)
        except OSError as exc:
            raise UserError(f"{self.uri}: cannot be created ({str(exc).splitlines()[0]}); check that the "
                            f"bucket exists and the credentials may write there") from None

    def unlink(self) -> None:
        self.fs.delete_file(self.path)

    def rmtree(self) -> None:
        if self.exists():
            self.fs.delete_dir(self.path)

    def upload(self, local_dir: str | Path) -> None:
        """Copy a local folder's files into this folder (overwriting)."""
        pafs.copy_files(str(local_dir), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def ray_storage(self) -> dict:
        """``storage_path`` and ``storage_filesystem`` for a Ray RunConfig / Tuner.restore."""
        return {"storage_path": self.path, "storage_filesystem": None if self.is_local else self.fs}


def locate(path: str | os.PathLike | Location) -> Location:
    """A local path or a URI as a :class:`Location`."""
    if isinstance(path, Location):
        return path
    path = str(path)
    if not is_uri(path):
        return Location(pafs.LocalFileSystem(), str(Path(path).expanduser().resolve()))
    scheme, _, rest = path.partition("://")
    if scheme == "file":
        return locate(rest)
    try:
        fs, fs_path = pafs.FileSystem.from_uri(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a usable location ({str(exc).splitlines()[0]}); "
                        f"use a local path or a URI like s3://bucket/prefix") from None
    return Location(fs, fs_path.rstrip("/"), scheme)


def on_filesystem(fs: pafs.FileSystem, path: str) -> Location:
    """A Location for a (filesystem, path) pair that Ray hands back, e.g. a checkpoint's."""
    scheme = "" if fs.type_name == "local" else {"gcs": "gs"}.get(fs.type_name, fs.type_name)
    return Location(fs, path.rstrip("/"), scheme)
