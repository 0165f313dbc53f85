"""One run folder, one owner: a lock beside it (``<parent>/.<name>.lock``) held while a command runs.

A second ``train``/``tune`` on the same name is refused while the first lives, naming the owner.
A lock left by a process that was killed is taken over, safely:

- local folders: an exclusive ``flock`` on the lock file; the kernel releases it when its process
  dies, however it dies, so a stale lock never blocks and two racers never both win;
- ``s3://``: a lock object created with a conditional PUT (``If-None-Match: *``), so only one
  creator wins; its owner refreshes a heartbeat in it every ``HEARTBEAT_S``, and a lock whose
  heartbeat is older than ``STALE_S`` is taken over with a PUT conditional on its ETag
  (``If-Match``), so of two processes taking over the same stale lock one wins.

Other URI schemes have no lock (one line says so).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Optional

from lfa_ray.errors import UserError
from lfa_ray.storage import Location

HEARTBEAT_S = 15.0
STALE_S = 90.0


def _owner() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}


def _describe(owner: dict) -> str:
    started = datetime.fromtimestamp(owner.get("started", 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {started})"


class RunLock:
    """``with RunLock(run_dir): ...``: refuses (UserError) while another live process holds it."""

    def __init__(self, run_dir: Location):
        self.run_dir = run_dir
        self.lock = run_dir.parent / f".{run_dir.name}.lock"
        self._fd: Optional[int] = None
        self._etag: Optional[str] = None
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def __enter__(self) -> "RunLock":
        if self.lock.is_local:
            self._lock_local()
        elif self.lock.scheme == "s3":
            self._lock_s3()
        else:
            print(f"note: no run lock on {self.lock.scheme}:// storage; do not start two commands on {self.run_dir}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy(self, owner: dict) -> UserError:
        return UserError(f"{self.run_dir} is in use by {_describe(owner)}; wait for it to finish or stop it, "
                         f"or pick another --name (lock: {self.lock})")

    # -- local: flock --------------------------------------------------------------------------
    def _lock_local(self) -> None:
        import fcntl

        path = self.lock.local
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    owner = json.loads(os.read(fd, 4096) or b"{}")
                except ValueError:
                    owner = {}
                os.close(fd)
                raise self._busy(owner) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its previous owner unlinked while we opened it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        self._fd = fd

    # -- s3: conditional PUT + heartbeat -------------------------------------------------------
    def _s3(self):
        import boto3

        bucket, _, key = self.lock.path.partition("/")
        return boto3.client("s3"), bucket, key

    def _lock_s3(self) -> None:
        from botocore.exceptions import ClientError

        client, bucket, key = self._s3()
        owner = _owner()
        try:
            self._etag = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(owner), IfNoneMatch="*")["ETag"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise UserError(f"{self.lock}: cannot write the run lock ({exc}); check the bucket and "
                                f"credentials") from None
            held = client.get_object(Bucket=bucket, Key=key)
            current = json.loads(held["Body"].read() or b"{}")
            if time.time() - current.get("heartbeat", 0) < STALE_S:
                raise self._busy(current) from None
            try:  # its owner stopped beating: take over, unless another process just did
                self._etag = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(owner),
                                               IfMatch=held["ETag"])["ETag"]
            except ClientError:
                raise self._busy(current) from None
            print(f"note: took over the stale run lock of {_describe(current)} ({self.lock})")
        self._beat = threading.Thread(target=self._heartbeat, args=(owner,), daemon=True)
        self._beat.start()

    def _heartbeat(self, owner: dict) -> None:
        client, bucket, key = self._s3()
        while not self._stop.wait(HEARTBEAT_S):
            owner["heartbeat"] = time.time()
            try:
                self._etag = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(owner),
                                               IfMatch=self._etag)["ETag"]
            except Exception:  # noqa: BLE001 - lost (taken over) or the store is unreachable: try again
                continue

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.lock.local)  # still ours: we hold the flock on this very file
            except FileNotFoundError:
                pass  # removed by hand meanwhile
            os.close(self._fd)
            self._fd = None
        if self._beat is not None:
            self._stop.set()
            self._beat.join()
            self._beat = None
            client, bucket, key = self._s3()
            try:
                if client.head_object(Bucket=bucket, Key=key)["ETag"] == self._etag:
                    client.delete_object(Bucket=bucket, Key=key)
            except Exception:  # noqa: BLE001 - already gone or taken over: nothing of ours to remove
                pass
