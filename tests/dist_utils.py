"""Run a function in N processes that form a torch.distributed (gloo) group on loopback.

``run_group(fn, world_size, *args)`` starts ``world_size`` ranks, each calls
``fn(rank, world_size, *args)`` inside an initialised process group, and the parent gets
the ranks' return values (a list, by rank). Why it is built this way:

* **forkserver with torch preloaded.** Importing torch and its distributed packages costs
  ~3 s of CPU per process; on a 2-core machine a 4-rank group would spend ~6 s starting.
  Every rank is instead forked from one clean server process that imported them once (and
  has no pytest threads, OpenMP pool or process group to inherit), so a group starts in a
  fraction of a second. The server lives as long as the test session.
* **Loopback only, no free-port race.** The rendezvous store is a ``TCPStore`` served by the
  parent on 127.0.0.1 with a port the OS picks; gloo is pinned to the loopback interface
  (``GLOO_SOCKET_IFNAME=lo``), so nothing listens on or connects to another address.
* **Bounded time, nothing left behind.** Collectives time out (``collective_timeout``), a
  rank that outlives ``timeout`` dumps its Python stacks and exits (``faulthandler``), and
  the parent SIGKILLs whatever is still alive at the deadline or once a rank has failed (the
  others would wait in a collective for it). ``run_group`` returns only after every rank
  has been reaped.
* **Failures read like local ones.** A rank that raises writes its traceback; the parent's
  ``AssertionError`` carries every failed rank's traceback or stack dump.
* **One thread per rank.** The ranks share two cores; more threads only add contention.

Results travel as ``torch.save`` files in a temporary directory, so they may hold tensors
(plain ones: convert DTensors with ``full_tensor()`` first), numbers, strings and containers.
"""

from __future__ import annotations

import datetime
import faulthandler
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["available", "run_group"]

#: Modules the fork server imports once, so that ranks start with them loaded.
PRELOAD = [
    "torch",
    "torch.distributed",
    "torch.distributed.checkpoint",
    "torch.distributed.checkpoint.state_dict",
    "torch.distributed.fsdp",
    "torch.distributed.optim",
    "torch.distributed.tensor",
    "torch.nn.parallel",
    "optimkit",
]
#: How long a rank waits after another failed before it is killed (it may still be writing
#: its own traceback; it cannot finish the job without the failed rank).
GRACE = 2.0


def available() -> bool:
    """torch.distributed with gloo, and a start method that can fork (not on Windows/macOS spawn-only)."""
    return (
        dist.is_available()
        and dist.is_gloo_available()
        and "forkserver" in multiprocessing.get_all_start_methods()
    )


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    # Only effective before the server starts (the first group of the session); harmless after.
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _entry(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    out: str,
    timeout: float,
    collective_timeout: float,
    args: tuple,
) -> None:
    """A rank: join the group, run ``fn``, save its result or its traceback."""
    out_dir = Path(out)
    os.environ.update(
        GLOO_SOCKET_IFNAME="lo",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    log = open(out_dir / f"rank{rank}.log", "w")  # open until the process ends
    # A hang (a collective no one else joins, a deadlock) leaves every thread's stack here.
    faulthandler.dump_traceback_later(timeout, exit=True, file=log)
    code = 0
    try:
        store = dist.TCPStore(
            "127.0.0.1", port, world_size, is_master=False, timeout=datetime.timedelta(seconds=30)
        )
        dist.init_process_group(
            "gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=collective_timeout),
        )
        result = fn(rank, world_size, *args)
        torch.save(result, out_dir / f"rank{rank}.tmp")
        os.replace(out_dir / f"rank{rank}.tmp", out_dir / f"rank{rank}.pt")
        dist.barrier()  # nobody closes its connections while another rank still reads from them
    except BaseException:
        log.write(traceback.format_exc())
        code = 1
    finally:
        log.flush()
    faulthandler.cancel_dump_traceback_later()
    log.close()
    # No destroy_process_group and no interpreter teardown: the result is on disk, and
    # tearing gloo down can deadlock in torch 2.13 (a process group destroyed while the GIL
    # is held joins gloo's worker threads, which may be waiting for the GIL).
    os._exit(code)


def run_group(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 60.0,
    collective_timeout: float = 30.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` ranks; return their results.

    ``fn`` must be importable by name (a module-level function) and ``args`` picklable.
    Raises ``AssertionError`` with the ranks' tracebacks if any rank fails, and kills all of
    them if the group has not finished after ``timeout`` seconds.
    """
    ctx = _context()
    with tempfile.TemporaryDirectory(prefix="optimkit-dist-") as tmp:
        store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
        procs = [
            ctx.Process(
                target=_entry,
                args=(fn, rank, world_size, store.port, tmp, timeout, collective_timeout, args),
                name=f"{getattr(fn, '__name__', 'worker')}-rank{rank}",
                daemon=True,
            )
            for rank in range(world_size)
        ]
        timed_out = False
        try:
            for p in procs:
                p.start()  # returns once the server has forked the rank (the first call starts the server)
            deadline = time.monotonic() + timeout + GRACE  # the ranks' own timers started just now
            failed_at = None
            while any(p.is_alive() for p in procs):
                now = time.monotonic()
                if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                    failed_at = now
                if now > deadline or (failed_at is not None and now > failed_at + GRACE):
                    timed_out = now > deadline
                    break
                multiprocessing.connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=0.1)
        finally:
            for p in procs:
                if p.pid is not None and p.is_alive():
                    p.kill()
            for p in procs:
                if p.pid is not None:
                    p.join()
            del store
        problems = []
        for rank, p in enumerate(procs):
            if p.exitcode != 0:
                log = Path(tmp, f"rank{rank}.log")
                text = log.read_text() if log.exists() else ""
                state = "killed" if p.exitcode is not None and p.exitcode < 0 else f"exit code {p.exitcode}"
                timed_out = timed_out or text.startswith("Timeout (")  # faulthandler's stack dump
                problems.append(f"--- rank {rank} ({state}) ---\n{text.strip() or '(no output)'}")
        if problems:
            head = f"timed out after {timeout:.0f} s" if timed_out else "a rank failed"
            raise AssertionError(f"{fn.__name__} on {world_size} ranks: {head}\n" + "\n".join(problems))
        return [torch.load(Path(tmp, f"rank{rank}.pt"), weights_only=False) for rank in range(world_size)]
