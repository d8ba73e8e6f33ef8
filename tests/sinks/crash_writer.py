"""Child process for the store's crash tests (killed with SIGKILL by the test).

    python crash_writer.py STORE loop BATCH_SIZE
        Resumes after the stored checkpoint of ("crashpool", "jobsub01", "history")
        and commits batch after batch forever: batch i holds records
        ``b{i:06d}-{j:04d}`` (j < BATCH_SIZE) plus an update of the record
        ``latest`` (whose doc says batch i), with checkpoint ``str(i)``.  Prints
        ``committed i`` after each commit returns.

    python crash_writer.py STORE long BATCH_SIZE
        Commits batch 0 (checkpoint "0"), prints ``base``, builds one huge batch
        (checkpoint "long"), prints ``long-start`` and commits it; prints
        ``long-done`` if it ever returns.

Documents are checkable: ``{"batch": i, "j": j, "pad": ...}`` where the pad is
derived from (i, j), so a torn or mixed-up document is detected.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import orjson

from opos_monitor.sinks.store import Checkpoint, Store, StoredRecord

CP = ("crashpool", "jobsub01", "history")


def pad(i: int, j: int, size: int = 1500) -> str:
    seed = hashlib.sha256(f"{i}:{j}".encode()).hexdigest()
    return (seed * (size // len(seed) + 1))[:size]


def doc(i: int, j: int) -> bytes:
    return orjson.dumps({"batch": i, "j": j, "pad": pad(i, j)})


def record(doc_id: str, i: int, j: int) -> StoredRecord:
    return StoredRecord(
        doc_id=doc_id, kind="job", pool=CP[0], schedd=CP[1], global_job_id=f"{CP[1]}#{i}.{j}#1718000000",
        owner="novapro", status="completed", site="FermiGrid", category="none" if j % 3 else "code",
        rule="r", signature=None, signature_hash=None, explanation=f"batch {i} record {j}",
        end_time=1_718_000_000.0 + i, updated_at=1_718_000_000.0 + i, doc=doc(i, j),
    )


def batch(i: int, n: int) -> list[StoredRecord]:
    return [record(f"b{i:06d}-{j:04d}", i, j) for j in range(n)] + [record("latest", i, -1)]


def main(argv: list[str]) -> int:
    path, mode, n = Path(argv[1]), argv[2], int(argv[3])
    store = Store.open(path, max_bytes=1 << 40)
    if mode == "loop":
        cp = store.checkpoint(*CP)
        i = int(cp) + 1 if cp is not None else 0
        while True:
            store.commit_batch(batch(i, n), Checkpoint(*CP, str(i)))
            print(f"committed {i}", flush=True)
            i += 1
    if mode == "long":
        store.commit_batch(batch(0, 10), Checkpoint(*CP, "0"))
        print("base", flush=True)
        big = batch(1, n)
        print("long-start", flush=True)
        store.commit_batch(big, Checkpoint(*CP, "long"))
        print("long-done", flush=True)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
