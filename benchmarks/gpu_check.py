"""The one-shot GPU check: the environment, medzoo's loop against the model alone, fp32 CPU/GPU parity, torchrun.

Run once on a machine with CUDA (a few minutes on one H200, within ``--budget``, default 420 s):

    python -m medzoo.benchmarks.gpu_check --out results/gpu_check

With torch already there and no network, install medzoo without its dependencies and run it from outside
the checkout (whose ``medzoo/`` folder would shadow a non-editable install, and torchrun's worker with it):

    python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . &&
        cd /tmp && PYTHONPATH=/tmp/site python3 -m medzoo.benchmarks.gpu_check --out /path/to/report

Four parts, in this order:
  1. environment: device names and memory, GPU count, CUDA, cuDNN and NCCL versions, bf16 support,
     torch/torchvision/python versions;
  2. speed, per model (resnet50 and densenet121 at 224 px, batch 128, AMP from ``zoo.loop.amp_setup``,
     channels_last, cuDNN benchmark mode as medzoo trains): 50 batches of ``zoo.loop.train_one_epoch`` over
     ``zoo.loader.BatchLoader`` (uint8 arrays in, augmentation on the device) against the model alone
     (forward, backward, optimizer step) on the same 50 batches already on the GPU, in 5 alternating
     rounds of 10 after a warm-up round of each (``speed_train.model_and_medzoo``), the ratio loop / model
     against the goal of 0.95; and the loader alone (``speed_train.loader_alone``) against the model's
     consumption, loader / model (BatchLoader does not prefetch: its batches are made in the training
     thread, so its cost is inside loop / model, and loader / model >= 1 only says it alone is faster);
  3. parity: the same seeded weights (BatchNorm statistics set by three train-mode passes on the CPU, so
     that eval logits vary across the batch) and a fixed batch, logits in fp32 on the CPU and on the GPU
     with TF32 off (contiguous and channels_last), max abs and relative differences against a tolerance,
     plus a TF32 row as a control that is not judged;
  4. torchrun: a one-rank process group on NCCL all-reduces a tensor in this process, then
     ``torchrun --nproc-per-node <GPUs> -m medzoo train`` trains one epoch of a generated 512-image dataset;
     its exit, validation AUC (from done.json) and wall time. With one GPU that run has WORLD_SIZE=1, where
     ``zoo.distributed.session`` starts no process group: the in-process all-reduce is then what tries NCCL.
     The part fails when the all-reduce or the run does.

``report.json`` (every figure, the settings and the environment) and ``report.md`` (tables) are
rewritten atomically in ``--out`` as each part (and each model) finishes, so a run stopped part-way keeps
what it measured. A part (or speed model) whose typical cost no longer fits the budget is skipped and
reported as such (the environment always runs), and torchrun's timeout is what is left of it.
``--dry-run`` runs the same code on the CPU with tiny settings (the test suite runs it), the parity
check CPU against CPU and torchrun with one process (so no process group; the all-reduce uses gloo).
The exit status is 1 when a part or a model failed, else 0 (missing a goal is a finding, not a failure).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torchvision

import medzoo
from medzoo.benchmarks.speed_train import AUGMENT, loader_alone, model_and_medzoo
from medzoo.core.fileio import write_json, write_text
from medzoo.core.rundir import RunDir
from medzoo.zoo.config import TrainConfig
from medzoo.zoo.loop import amp_setup
from medzoo.zoo.models import create_model

GOAL_LOOP_OVER_MODEL = 0.95
NO_CUDA = "no CUDA device here; run with --dry-run to exercise the script on the CPU"
# fp32 logits on two devices differ only by summation order and kernel choice (cuDNN vs oneDNN, Winograd vs
# direct): about 1e-6 relative per layer, 1e-5 to 1e-4 after 50-120 layers. TF32 (10-bit mantissa, 5e-4
# rounding per product) or a wrong layout or weight gives 1e-3 and more. So |gpu - cpu| <= 1e-3 * max(1,
# max |cpu logit|): 1e-3 absolute on logits of order one, 1e-3 relative to larger ones.
PARITY_TOLERANCE = 1e-3
RUN_NAME = "gpu_check"


@dataclass(frozen=True)
class Settings:
    """What each part runs: the speed models and shapes, the parity models, the torchrun member and data.

    ``*_need_s`` is a part's (or one speed model's) typical cost: it is skipped when less budget is left.
    ``threads``: torch's CPU threads here and ``OMP_NUM_THREADS`` for torchrun's worker (None: as they are).
    """

    models: tuple[str, ...]
    size: int
    batch_size: int
    batches: int
    chunk: int
    parity_models: tuple[str, ...]
    parity_size: int
    parity_batch: int
    run_model: str
    run_size: int
    run_images: int
    run_batch_size: int
    run_timeout_s: float
    speed_need_s: float
    parity_need_s: float
    torchrun_need_s: float
    threads: int | None


GPU = Settings(models=("resnet50", "densenet121"), size=224, batch_size=128, batches=50, chunk=10,
               parity_models=("resnet50", "densenet121"), parity_size=224, parity_batch=8,
               run_model="resnet18", run_size=64, run_images=512, run_batch_size=64, run_timeout_s=240,
               speed_need_s=45, parity_need_s=30, torchrun_need_s=60, threads=None)
DRY = Settings(models=("resnet18", "squeezenet1_1"), size=32, batch_size=8, batches=2, chunk=1,
               parity_models=("resnet18", "squeezenet1_1"), parity_size=32, parity_batch=4,
               run_model="squeezenet1_1", run_size=32, run_images=32, run_batch_size=8, run_timeout_s=120,
               speed_need_s=0, parity_need_s=0, torchrun_need_s=0,
               threads=1)  # tiny batches gain nothing from threads, and on a shared CPU their spin-waits cost 20x


class Budget:
    """The check's time budget in seconds, counted from creation."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()

    def used(self) -> float:
        """Seconds since the budget started."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds left (negative once overspent)."""
        return self.seconds - self.used()

    def skip_reason(self, need_s: float) -> str | None:
        """Why a step that typically takes ``need_s`` seconds is skipped, or None when it fits."""
        left = self.left()
        if left > 0 and left >= need_s:
            return None
        return f"time budget spent: {max(left, 0):.0f} s of {self.seconds:.0f} s left, this needs about {need_s:.0f} s"


class Report:
    """The findings, saved as ``report.json`` and ``report.md`` in ``out`` (atomically) on every update."""

    def __init__(self, out: Path, settings: Settings, budget: Budget, dry_run: bool):
        self.out, self.budget = Path(out), budget
        self.data = {"check": "medzoo gpu_check", "dry_run": dry_run, "started": _now(),
                     "budget_s": budget.seconds, "goal_loop_over_model": GOAL_LOOP_OVER_MODEL,
                     "settings": asdict(settings)}

    def update(self, part: str, result: dict) -> None:
        """Record ``result`` as ``part`` and save both files."""
        self.data[part] = result
        self.data.update(updated=_now(), elapsed_s=self.budget.used())
        write_json(self.out / "report.json", self.data)
        write_text(self.out / "report.md", render_markdown(self.data))


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: as they are); the count is restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def say(line: str) -> None:
    """One progress line, flushed at once (the output may be a pipe)."""
    print(f"gpu_check: {line}", flush=True)


def run_part(report: Report, name: str, part: Callable[[Callable[..., None]], None], need_s: float | None,
             budget: Budget) -> None:
    """Run ``part(publish)`` unless the budget no longer fits ``need_s`` (None: always run); its result goes to
    ``report[name]``.

    ``publish(**fields)`` adds fields to the part's result and saves the report, so what a part measured
    stays when a later step of it fails or the run is stopped. ``status`` is "ok", "failed" (with the
    error and traceback) or "skipped" (with the reason).
    """
    reason = None if need_s is None else budget.skip_reason(need_s)
    if reason is not None:
        report.update(name, {"status": "skipped", "reason": reason})
        say(f"{name}: skipped ({reason})")
        return
    result = {"status": "running"}
    start = time.perf_counter()

    def publish(**fields) -> None:
        result.update(fields, seconds=time.perf_counter() - start)
        report.update(name, result)

    try:
        part(publish)
        publish(status="ok")
    except Exception as e:  # every part reports its own failure; the next part still runs
        publish(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        say(f"{name}: FAILED - {type(e).__name__}: {e}")
    say(f"{name}: {result['status']} in {result['seconds']:.1f} s ({budget.left():.0f} s of the budget left)")


def _field(read: Callable[[], object]) -> object:
    """``read()``, or the error it raised as text: one field that cannot be read leaves the others."""
    try:
        return read()
    except Exception as e:  # an environment field is a finding either way
        return f"error: {type(e).__name__}: {e}"


def check_environment(device: torch.device, publish: Callable[..., None]) -> None:
    """Part 1: versions, the GPUs and what they support (a field that cannot be read holds its error)."""
    cuda = torch.cuda.is_available()

    def gpu(i: int) -> dict:
        p = torch.cuda.get_device_properties(i)
        return {"index": i, "name": p.name, "memory_gib": p.total_memory / 2**30,
                "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}

    gpus = [_field(lambda i=i: gpu(i)) for i in range(torch.cuda.device_count() if cuda else 0)]
    cudnn = _field(lambda: torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    bf16 = _field(torch.cuda.is_bf16_supported) if cuda else False
    publish(device=str(device), python=platform.python_version(), platform=platform.platform(),
            host=socket.gethostname(), cpu_count=os.cpu_count(), medzoo=medzoo.__version__, torch=torch.__version__,
            torchvision=torchvision.__version__, cuda_available=cuda, cuda_version=torch.version.cuda,
            cudnn_version=cudnn, nccl_version=_field(lambda: ".".join(map(str, torch.cuda.nccl.version()))) if cuda
            else None, bf16_supported=bf16, gpu_count=len(gpus), gpus=gpus)
    names = ", ".join(g["name"] if isinstance(g, dict) else g for g in gpus) or "none"
    say(f"environment: {device}; GPUs: {names}; CUDA {torch.version.cuda}, cuDNN {cudnn}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, bf16 {bf16}")


def check_speed(settings: Settings, device: torch.device, budget: Budget, publish: Callable[..., None]) -> None:
    """Part 2: per model, the loop and the model alone on the same batches; the loader alone once.

    The loader's rate does not depend on the model, so it is measured once, over one epoch of the same
    images, and compared with each model's consumption.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as medzoo's training sets it (zoo.member._build_model)
    n = settings.batches * settings.batch_size
    images = np.random.default_rng(0).integers(0, 256, (n, settings.size, settings.size, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 2
    amp_dtype, _ = amp_setup(device, TrainConfig())
    loader_ips = loader_alone(images, settings.batch_size, 1, AUGMENT, device=device, channels_last=True)
    models: list[dict] = []
    publish(size=settings.size, batch_size=settings.batch_size, batches=settings.batches,
            rounds=-(-settings.batches // settings.chunk), warmup_batches=settings.chunk, amp=str(amp_dtype).replace("torch.", "") if amp_dtype else None,
            channels_last=True, augment=AUGMENT, loader_images_per_s=loader_ips, models=models)
    say(f"speed: loader alone {loader_ips:.0f} img/s ({settings.size} px, batch {settings.batch_size}, augmentation "
        f"on {device})")
    for name in settings.models:
        reason = budget.skip_reason(settings.speed_need_s)
        if reason is not None:
            models.append({"model": name, "status": "skipped", "reason": reason})
            say(f"speed: {name} skipped ({reason})")
        else:
            models.append(_speed_row(name, images, labels, settings, device, loader_ips))
        publish(models=models)


def _speed_row(name: str, images: np.ndarray, labels: np.ndarray, settings: Settings, device: torch.device,
               loader_ips: float) -> dict:
    """One model's speed figures (or its failure), with the ratios loop / model and loader / model."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        model_ips, loop_ips = model_and_medzoo(name, images, labels, settings.batch_size, settings.batches,
                                               chunk=settings.chunk, device=device, channels_last=True)
    except Exception as e:  # one model's failure (out of memory, say) leaves the other to run
        say(f"speed: {name} FAILED - {type(e).__name__}: {e}")
        return {"model": name, "status": "failed", "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}
    row = {"model": name, "status": "ok", "model_images_per_s": model_ips, "loop_images_per_s": loop_ips,
           "loop_over_model": loop_ips / model_ips, "loader_over_model": loader_ips / model_ips,
           "seconds": time.perf_counter() - start,
           "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    row.update(meets_goal=row["loop_over_model"] >= GOAL_LOOP_OVER_MODEL,
               loader_faster_than_model=row["loader_over_model"] >= 1)
    say(f"speed: {name}: model alone {model_ips:.0f} img/s, medzoo loop {loop_ips:.0f} img/s, loop/model "
        f"{row['loop_over_model']:.3f} (goal >= {GOAL_LOOP_OVER_MODEL}: {'met' if row['meets_goal'] else 'MISSED'}); "
        f"loader alone / model {row['loader_over_model']:.2f}")
    return row


@contextlib.contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """Allow or forbid TF32 in CUDA matmuls and cuDNN convolutions inside the block; restore the flags after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def with_batch_statistics(model: torch.nn.Module, size: int, batch: int, passes: int = 3) -> torch.nn.Module:
    """``model`` in eval mode with BatchNorm running statistics of its own activations: ``passes`` train-mode
    forward passes on the CPU over seeded ``[batch, 3, size, size]`` noise, averaged (momentum None).

    Freshly initialised statistics (mean 0, variance 1) let activations grow layer by layer until every image
    gets nearly the same logits, and a parity check on those would see little of a difference.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    generator = torch.Generator().manual_seed(2)
    model.train()
    with torch.no_grad():
        for _ in range(passes if norms else 0):
            model(torch.randn(batch, 3, size, size, generator=generator))
    return model.eval()


def check_parity(settings: Settings, device: torch.device, publish: Callable[..., None]) -> None:
    """Part 3: fp32 logits of the same seeded weights on a fixed batch, CPU against ``device``.

    Eval mode (BatchNorm uses its running statistics, so the batch does not steer the result). Rows:
    fp32 contiguous and fp32 channels_last (judged), TF32 allowed (a control, not judged).
    """
    rows: list[dict] = []
    publish(reference="cpu", compared=str(device), tolerance=f"max |diff| <= {PARITY_TOLERANCE} * max(1, max |logit|)",
            rows=rows)
    variants = (("fp32", torch.contiguous_format, False), ("fp32 channels_last", torch.channels_last, False),
                ("tf32 (control, not judged)", torch.contiguous_format, True))
    for name in settings.parity_models:
        torch.manual_seed(0)
        model = with_batch_statistics(create_model(name, num_classes=2), settings.parity_size, settings.parity_batch)
        x = torch.randn(settings.parity_batch, 3, settings.parity_size, settings.parity_size,
                        generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            reference = model(x)
        other = copy.deepcopy(model).to(device)
        scale = reference.abs().max().item()
        limit = PARITY_TOLERANCE * max(1.0, scale)
        for variant, layout, allowed in variants:
            with torch.no_grad(), tf32(allowed):
                logits = other.to(memory_format=layout)(x.to(device).contiguous(memory_format=layout)).cpu()
                flags = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
            diff = (logits - reference).abs().max().item()
            row = {"model": name, "variant": variant, "max_abs_diff": diff, "max_rel_diff": diff / max(scale, 1e-12),
                   "max_abs_logit": scale, "logit_spread": (reference - reference.mean(0)).abs().max().item(),
                   "limit": limit, "allow_tf32": flags, "judged": not allowed,
                   "passed": None if allowed else diff <= limit}
            rows.append(row)
            publish(rows=rows, passed=all(r["passed"] for r in rows if r["judged"]))
            say(f"parity: {name} {variant}: max abs diff {diff:.2e}, relative {row['max_rel_diff']:.2e} "
                f"(max |logit| {scale:.3g})" + ("" if allowed else f" -> {'pass' if row['passed'] else 'FAIL'}"))


def check_collective(backend: str, device: torch.device, folder: Path) -> dict:
    """Initialise a one-rank process group on ``backend``, all-reduce a tensor on ``device``, destroy the group.

    A failure is returned (``all_reduce_ok`` False, with the error), not raised: the torchrun run still follows.
    """
    start = time.perf_counter()
    extra = {"device_id": device} if device.type == "cuda" else {}
    result = {"backend": backend, "world_size": 1}
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=f"file://{folder / 'store'}", rank=0, world_size=1,
                                timeout=dt.timedelta(seconds=60), **extra)
        try:
            t = torch.ones(4, device=device)
            dist.all_reduce(t)
            result["all_reduce_ok"] = bool((t == 1).all())
        finally:
            dist.destroy_process_group()
    except Exception as e:  # recorded in the report; the torchrun run does not depend on it
        result.update(all_reduce_ok=False, error=f"{type(e).__name__}: {e}")
    return {**result, "seconds": time.perf_counter() - start}


def write_tiny_run(folder: Path, settings: Settings, device: torch.device) -> Path:
    """A generated 2-class npz (grayscale noise, class 1 with a brighter centre square), its card and a
    one-epoch, one-member zoo config in ``folder``; returns the config's path."""
    rng = np.random.default_rng(0)
    s, arrays = settings.run_size, {}
    for split, n in (("train", settings.run_images), ("val", settings.run_images // 4),
                     ("test", settings.run_images // 4)):
        y = np.arange(n) % 2
        x = rng.integers(0, 150, (n, s, s)).astype(np.uint8)
        x[y == 1, s // 4:3 * s // 4, s // 4:3 * s // 4] += 60
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    np.savez(folder / "tiny.npz", **arrays)
    (folder / "tiny.toml").write_text(f'name = "tiny"\nformat = "npz"\nfile = "{folder / "tiny.npz"}"\n'
                                      f'classes = ["plain", "square"]\n')
    config = folder / "zoo.toml"
    config.write_text(f'run = "{RUN_NAME}"\ndataset = "{folder / "tiny.toml"}"\nseed = 0\n'
                      f'device = "{"auto" if device.type == "cuda" else "cpu"}"\n'
                      f'[train]\nepochs = 1\nbatch_size = {settings.run_batch_size}\nlr = 1e-3\npatience = 0\n'
                      f'warmup_epochs = 0\n[train.augment]\nhflip = true\n'
                      f'[[members]]\nmodel = "{settings.run_model}"\nsize = {s}\n')
    return config


def check_torchrun(settings: Settings, device: torch.device, budget: Budget, out: Path,
                   publish: Callable[..., None]) -> None:
    """Part 4: the in-process all-reduce, then one epoch under ``torchrun`` on every visible GPU (1 process on a CPU).

    The child's output goes to ``out/torchrun.log`` (its tail also into the report when it fails); on a
    timeout the whole process group of torchrun and its workers is killed.
    """
    nproc = torch.cuda.device_count() if device.type == "cuda" else 1
    backend = "nccl" if device.type == "cuda" else "gloo"  # as zoo.distributed.session picks it
    publish(nproc=nproc, backend=backend,
            process_group=f"{backend}, {nproc} ranks" if nproc > 1 else
            "none: with WORLD_SIZE=1 zoo.distributed.session starts no process group")
    with tempfile.TemporaryDirectory(prefix="medzoo-gpu-check-") as tmp:
        folder = Path(tmp)
        collective = check_collective(backend, device, folder)
        publish(collective=collective)
        say(f"torchrun: one-rank {backend} all-reduce in this process: "
            f"{'ok' if collective['all_reduce_ok'] else 'FAILED ' + collective.get('error', '(wrong sum)')}")
        config, results = write_tiny_run(folder, settings, device), folder / "results"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "medzoo", "train", str(config), "--results", str(results)]
        timeout = max(1.0, min(settings.run_timeout_s, budget.left()))
        env = {**os.environ, "MEDZOO_CACHE": str(folder / "cache"), "PYTHONUNBUFFERED": "1",
               **({"OMP_NUM_THREADS": str(settings.threads)} if settings.threads else {})}
        out.mkdir(parents=True, exist_ok=True)
        log = out / "torchrun.log"
        publish(command=" ".join(command), timeout_s=timeout, log=log.name)
        start = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                returncode, timed_out = proc.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:  # SIGTERM lets torchrun stop its workers (own sessions), then kill
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                returncode, timed_out = proc.wait(), True
        wall = time.perf_counter() - start
        done = RunDir.of(results, RUN_NAME).member(settings.run_model).done
        record = json.loads(done.read_text()) if done.exists() else {}
    finished = returncode == 0 and bool(record)
    publish(returncode=returncode, timed_out=timed_out, finished=finished, val_auc=record.get("val_auc"),
            wall_s=wall, **({} if finished else {"log_tail": log.read_text()[-3000:]}))
    say(f"torchrun: {nproc} process(es), {'finished' if finished else 'DID NOT finish'} (exit {returncode}"
        f"{', timed out' if timed_out else ''}) in {wall:.1f} s, val AUC {record.get('val_auc')}")
    if not collective["all_reduce_ok"] or not finished:
        raise RuntimeError("; ".join(
            ([f"the {backend} all-reduce failed: {collective.get('error', 'wrong sum')}"] if not collective["all_reduce_ok"]
             else []) + ([f"the torchrun run did not finish (exit {returncode}{', timed out' if timed_out else ''}; "
                          f"see {log.name})"] if not finished else [])))


def _num(v, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, float):
        return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.{digits}f}"
    return str(v)


def _not_ok(part: dict | None) -> list[str]:
    """The lines a part that did not run to the end shows, or [] for one that did."""
    if part is None:
        return ["not reached", ""]
    if part["status"] == "skipped":
        return [f"skipped: {part['reason']}", ""]
    if part["status"] == "failed":
        return [f"**failed**: `{part['error']}`", ""]
    if part["status"] == "running":
        return ["running, or stopped before it finished (what it had measured is below)", ""]
    return []


def render_markdown(data: dict) -> str:
    """``report.md``: the report's figures as tables."""
    lines = ["# medzoo GPU check", "",
             f"{'Dry run on the CPU (tiny settings); ' if data['dry_run'] else ''}started {data['started']}, "
             f"updated {data.get('updated', '-')}, {data.get('elapsed_s', 0):.0f} s of a {data['budget_s']:.0f} s "
             f"budget. Written by `benchmarks/gpu_check.py`; every figure is in `report.json`.", ""]
    lines += _environment_md(data.get("environment"))
    lines += _speed_md(data.get("speed"), data["goal_loop_over_model"])
    lines += _parity_md(data.get("parity"))
    lines += _torchrun_md(data.get("torchrun"))
    return "\n".join(lines) + "\n"


def _environment_md(env: dict | None) -> list[str]:
    lines = ["## Environment", ""] + _not_ok(env)
    if env is None or "torch" not in env:
        return lines
    gpus = "; ".join(f"{g['name']} ({g['memory_gib']:.0f} GiB, sm {g['capability']})" if isinstance(g, dict) else g
                     for g in env["gpus"]) or "none"
    rows = [("device used", env["device"]), ("GPUs", f"{env['gpu_count']}: {gpus}"),
            ("CUDA", _num(env["cuda_version"])), ("cuDNN", _num(env["cudnn_version"])),
            ("NCCL", _num(env["nccl_version"])), ("bf16", _num(env["bf16_supported"])),
            ("torch / torchvision", f"{env['torch']} / {env['torchvision']}"),
            ("python, medzoo", f"{env['python']}, {env['medzoo']}"),
            ("host, CPUs", f"{env['host']}, {env['cpu_count']}"), ("platform", env["platform"])]
    return lines + ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]


def _speed_md(speed: dict | None, goal: float) -> list[str]:
    lines = ["## Training speed: medzoo's loop against the model alone", ""] + _not_ok(speed)
    if speed is None or "models" not in speed:
        return lines
    lines += [f"{speed['size']} px, batch {speed['batch_size']}, {speed['batches']} timed batches of each in "
              f"{speed['rounds']} alternating rounds after {speed['warmup_batches']} warm-up batches, AMP "
              f"{speed['amp'] or 'off'}, channels_last, "
              f"augmentation on the device {speed['augment']}. Loader alone: "
              f"**{speed['loader_images_per_s']:.0f} img/s**.", "",
              f"| model | model alone img/s | medzoo loop img/s | loop / model (goal >= {goal}) | "
              f"loader alone / model (no prefetch: its cost is inside the loop) | peak GiB (both models, held batches) |",
              "|---|---|---|---|---|---|"]
    for r in speed["models"]:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['status']}: {r.get('reason') or r.get('error')} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['model_images_per_s']:.0f} | {r['loop_images_per_s']:.0f} | "
                     f"{r['loop_over_model']:.3f} {'met' if r['meets_goal'] else '**missed**'} | "
                     f"{r['loader_over_model']:.2f} | "
                     f"{_num(r['peak_memory_gib'], 1)} |")
    return lines + [""]


def _parity_md(parity: dict | None) -> list[str]:
    lines = ["## fp32 parity: logits on the CPU against the device", ""] + _not_ok(parity)
    if parity is None or "rows" not in parity:
        return lines
    lines += [f"Reference {parity['reference']}, compared {parity['compared']}; pass: {parity['tolerance']}. "
              f"Relative = max |diff| / max |cpu logit|. Overall: **{_num(parity.get('passed'))}**.", "",
              "| model | variant | max abs diff | relative | max abs logit | limit | pass |",
              "|---|---|---|---|---|---|---|"]
    for r in parity["rows"]:
        lines.append(f"| {r['model']} | {r['variant']} | {_num(r['max_abs_diff'])} | {_num(r['max_rel_diff'])} | "
                     f"{_num(r['max_abs_logit'])} | {_num(r['limit'])} | {_num(r['passed'])} |")
    return lines + [""]


def _torchrun_md(run: dict | None) -> list[str]:
    lines = ["## torchrun: one epoch on every visible GPU", ""] + _not_ok(run)
    if run is None or "nproc" not in run:
        return lines
    collective = run.get("collective", {})
    rows = [("processes", run["nproc"]), ("process group in training", run["process_group"]),
            (f"one-rank {run['backend']} all-reduce in-process", _num(collective.get("all_reduce_ok"))),
            ("finished", _num(run.get("finished"))), ("exit status", _num(run.get("returncode"))),
            ("timed out", _num(run.get("timed_out"))), ("val AUC", _num(run.get("val_auc"))),
            ("wall s", _num(run.get("wall_s"), 1)), ("command", f"`{run.get('command', '-')}`")]
    return lines + ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]


def failures(data: dict) -> list[str]:
    """Names of the parts and speed models whose status is "failed"."""
    bad = [k for k, v in data.items() if isinstance(v, dict) and v.get("status") == "failed"]
    speed = data.get("speed") or {}
    return bad + [f"speed {r['model']}" for r in speed.get("models", []) if r["status"] == "failed"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same code paths on the CPU with tiny settings (no GPU needed; seconds)")
    parser.add_argument("--out", type=Path, default=Path("results/gpu_check"),
                        help="folder for report.json, report.md and torchrun.log (default: results/gpu_check)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for the whole check; a part that no longer fits is skipped (default: 420)")
    args = parser.parse_args(argv)
    if args.budget < 0:
        parser.error(f"--budget must be >= 0 seconds, got {args.budget}")
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit(f"gpu_check: {NO_CUDA}")
    settings, device = (DRY, torch.device("cpu")) if args.dry_run else (GPU, torch.device("cuda:0"))
    budget = Budget(args.budget)
    report = Report(args.out, settings, budget, args.dry_run)
    say(f"{'dry run on the CPU' if args.dry_run else str(device)}, budget {args.budget:.0f} s, writing {args.out}/")
    with torch_threads(settings.threads):
        run_part(report, "environment", lambda publish: check_environment(device, publish), None, budget)
        run_part(report, "speed", lambda publish: check_speed(settings, device, budget, publish),
                 settings.speed_need_s, budget)
        run_part(report, "parity", lambda publish: check_parity(settings, device, publish),
                 settings.parity_need_s, budget)
        run_part(report, "torchrun", lambda publish: check_torchrun(settings, device, budget, args.out, publish),
                 settings.torchrun_need_s, budget)
    bad = failures(report.data)
    say(f"done in {budget.used():.0f} s: {args.out / 'report.md'}" + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
