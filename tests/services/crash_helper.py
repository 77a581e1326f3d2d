"""Child process of the crash-recovery tests: does one step the way the services do, dies by SIGKILL.

    python crash_helper.py write DATABASE_URL MEDIA_DIR HEX_BYTES [--wait]
        announces and writes a photo like enrollment, then (before its commit) kills itself,
        or with --wait prints "written" and sleeps until the parent kills it (a live writer);
    python crash_helper.py erase DATABASE_URL MEDIA_DIR CHILD_ID
        erases a child and kills itself right after the first photo file is deleted.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from childface.db import Actor, Database
from childface.services import file_journal
from childface.services.erasure import ERASE_CONFIRMATION, erase_child
from childface.services.media import MediaStore


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def write(db: Database, media: MediaStore, data: bytes, wait: bool) -> None:
    sha, relative = media.locate(data)
    with media.hold(sha), file_journal.pending_writes(db, media, [(sha, relative)]):
        media.put(data)
        if wait:
            print("written", flush=True)
            time.sleep(600)
        die()  # between the file and the transaction that would refer to it


def erase(db: Database, media: MediaStore, child_id: int) -> None:
    real_delete = MediaStore.delete

    def delete_then_die(self: MediaStore, relative: str) -> None:
        real_delete(self, relative)
        die()

    MediaStore.delete = delete_then_die  # type: ignore[method-assign]
    erase_child(db=db, media=media, actor=Actor("system", "crash-test"), child_id=child_id,
                confirm=ERASE_CONFIRMATION)


if __name__ == "__main__":
    step, url, media_dir, arg = sys.argv[1:5]
    database, store = Database(url), MediaStore(Path(media_dir))
    if step == "write":
        write(database, store, bytes.fromhex(arg), "--wait" in sys.argv)
    else:
        erase(database, store, int(arg))
    sys.exit("the step finished instead of dying")
