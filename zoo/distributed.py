"""Distributed training helpers (torch.distributed under ``torchrun``) and per-member claim files.

One member across processes: ``torchrun --nproc-per-node N -m medzoo train CONFIG``
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`session` then initialises the process
group (NCCL on CUDA, gloo on the CPU) with a timeout so a dead peer ends the job instead of
hanging it.

A zoo across jobs: every job that wants to train a member first takes its claim file
(``MemberDir.claim``, :func:`try_claim`). The file is created atomically and
exclusively (written under a temporary name, then hard-linked into place, which fails when it
exists: safe on NFS too) and names the host, pid, start time and a heartbeat refreshed by a
background thread and at each epoch. A claim whose heartbeat is older than the timeout, or whose
process is gone from this host, is stale and may be taken over.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from medzoo.core.fileio import write_json


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size == 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank, world size and local rank from the ``torchrun`` environment variables."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})") from None


def info() -> DistInfo:
    """The current process group's rank and size, or the single-process default."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_info().local_rank)
    return DistInfo()


@contextlib.contextmanager
def session(device: torch.device, timeout_s: float = 1800.0) -> Iterator[DistInfo]:
    """Initialise the process group when launched with ``WORLD_SIZE > 1`` and tear it down after.

    Reuses a group that is already initialised (and leaves it to its owner).
    """
    env = env_info()
    if not env.enabled or dist.is_initialized():
        yield info()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout_s),
                            **({"device_id": device} if device.type == "cuda" else {}))
    try:
        yield info()
    finally:
        dist.destroy_process_group()


class PeerFailure(RuntimeError):
    """A collective failed or timed out: another rank died or stopped responding."""


@contextlib.contextmanager
def peer_errors(timeout_s: float) -> Iterator[None]:
    """Turn a failed collective into :class:`PeerFailure` with a message a user can act on."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        if not info().enabled or isinstance(e, PeerFailure):
            raise
        raise PeerFailure(f"rank {info().rank}/{info().world_size}: a collective operation failed, most "
                          f"likely because another rank died or hung (timeout {timeout_s:.0f} s). Check "
                          f"the other ranks' logs; rerun the same command to resume from last.pt. "
                          f"({type(e).__name__}: {e})") from e


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info().enabled:
        dist.barrier()


def broadcast(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (pickled; small objects only)."""
    if not info().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``module``'s buffers (BatchNorm statistics) from rank ``src`` to every rank."""
    if info().enabled:
        for b in module.buffers():
            dist.broadcast(b, src)


def gather_by_index(values: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """Put every rank's rows in place: ``values [n_r, C]`` at ``index [n_r]`` -> ``[total, C]``.

    Ranks may hold different counts and the same row more than once (padded shards); each
    row is kept once. Raises when some row in ``0..total-1`` came from no rank.
    """
    values, index = values.double(), index.long().to(values.device)
    if info().enabled:
        world = info().world_size
        n = torch.tensor([values.shape[0]], device=values.device)
        counts = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(counts, n)
        width = int(max(c.item() for c in counts))
        pad_v = values.new_zeros((width, *values.shape[1:]))
        pad_i = index.new_full((width,), -1)
        pad_v[: values.shape[0]], pad_i[: index.shape[0]] = values, index
        all_v = [torch.empty_like(pad_v) for _ in range(world)]
        all_i = [torch.empty_like(pad_i) for _ in range(world)]
        dist.all_gather(all_v, pad_v)
        dist.all_gather(all_i, pad_i)
        values = torch.cat([v[: int(c.item())] for v, c in zip(all_v, counts)])
        index = torch.cat([i[: int(c.item())] for i, c in zip(all_i, counts)])
    out = values.new_full((total, *values.shape[1:]), float("nan"))
    seen = torch.zeros(total, dtype=torch.bool, device=values.device)
    out[index], seen[index] = values, True
    if not bool(seen.all()):
        missing = torch.nonzero(~seen).flatten()[:5].tolist()
        raise RuntimeError(f"{int((~seen).sum())} of {total} rows were predicted by no rank, e.g. {missing}")
    return out


class ClaimLost(RuntimeError):
    """Another job took over this member's claim (our heartbeat had gone stale)."""


def _now() -> float:
    return time.time()


def read_claim(path: str | Path) -> dict | None:
    """The claim at ``path`` (``None`` when there is none). Unreadable content counts as fresh."""
    path = Path(path)
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        claim = json.loads(text)
    except json.JSONDecodeError:
        return {"heartbeat": mtime, "unreadable": True}
    return claim if isinstance(claim, dict) else {"heartbeat": mtime, "unreadable": True}


def stale_reason(claim: dict, timeout_s: float, now: float | None = None) -> str | None:
    """Why ``claim`` is stale, or ``None`` while its owner looks alive."""
    now = _now() if now is None else now
    if claim.get("host") == socket.gethostname() and "pid" in claim and not _pid_alive(int(claim["pid"])):
        return f"process {claim['pid']} on {claim['host']} is gone"
    age = now - float(claim.get("heartbeat", 0))
    if age > timeout_s:
        return f"no heartbeat for {age:.0f} s (timeout {timeout_s:.0f} s)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_exclusive(path: Path, content: dict) -> bool:
    """Create ``path`` holding ``content`` unless it exists; never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class Claim:
    """A held claim: :meth:`beat` refreshes it, :meth:`release` removes it.

    A daemon thread beats every ``interval_s`` seconds so long epochs do not look stale;
    :meth:`beat` raises :class:`ClaimLost` when another job has taken the claim over.
    """

    def __init__(self, path: Path, content: dict, took_over: str | None = None, interval_s: float = 30.0):
        self.path, self.content, self.took_over = Path(path), content, took_over
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.beat()
            except ClaimLost:
                return

    def beat(self, **fields) -> None:
        """Refresh the heartbeat (and record ``fields``, e.g. ``epoch=3``)."""
        with self._lock:
            current = read_claim(self.path)
            if current is None or current.get("token") != self.content["token"]:
                self.lost = True
                raise ClaimLost(f"{self.path}: the claim was taken over by "
                                f"{(current or {}).get('host')}:{(current or {}).get('pid')}")
            self.content = {**self.content, **fields, "heartbeat": _now()}
            write_json(self.path, self.content)

    def release(self) -> None:
        """Stop beating and remove the claim file if it is still ours."""
        self._stop.set()
        with self._lock:
            current = read_claim(self.path)
            if current is not None and current.get("token") == self.content["token"]:
                self.path.unlink(missing_ok=True)


def try_claim(path: str | Path, timeout_s: float = 600.0, interval_s: float | None = None) -> Claim | None:
    """Take the claim at ``path`` (or take over a stale one); ``None`` when another job holds it."""
    path = Path(path)
    now = _now()
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "started": now, "started_iso": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
            "heartbeat": now}
    interval_s = min(30.0, timeout_s / 4) if interval_s is None else interval_s
    if _create_exclusive(path, mine):
        return Claim(path, mine, interval_s=interval_s)
    current = read_claim(path)
    if current is None:
        return try_claim(path, timeout_s, interval_s)
    reason = stale_reason(current, timeout_s, now)
    if reason is None:
        return None
    guard = path.with_name(path.name + ".takeover")
    if not _create_exclusive(guard, mine):
        held = read_claim(guard)
        if held is not None and now - float(held.get("heartbeat", 0)) > 60:
            guard.unlink(missing_ok=True)
        return None
    try:
        again = read_claim(path)
        if again is not None and again.get("token") != current.get("token"):
            return None
        write_json(path, mine)
        return Claim(path, mine, took_over=reason, interval_s=interval_s)
    finally:
        guard.unlink(missing_ok=True)
