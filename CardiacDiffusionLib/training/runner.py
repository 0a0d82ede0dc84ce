"""The training loop, the one in the tree: a :class:`~.task.Task` says what to train, :func:`train` does it.

It owns the optimiser and LR schedule, EMA weights, mixed precision on GPU, DDP under torchrun,
seeding, checkpoints (resume after an interruption continues bit for bit on CPU: model, EMA,
optimiser, scheduler, grad scaler, step, RNG states and data order), the loss log and curve,
progress, and cancel (SIGINT/SIGTERM: checkpoint, then return ``status="cancelled"``).

Out folder: ``config.json``, ``checkpoints/step_*.safetensors``, ``train_log.jsonl``,
``loss.png`` and, when done, ``model.safetensors`` (EMA weights when EMA is on).
"""

from __future__ import annotations

import gc
import math
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import InputError
from ..utils.device import prepare_device
from ..utils.jsonfile import non_finite, write_json
from . import dist as D
from .checkpoint import (checkpoint_path, is_checkpoint, latest_checkpoint, load_checkpoint, prune_checkpoints,
                         save_checkpoint)
from .config import load_config, read_config_file
from .losslog import LossLog
from .outdir import RESUMABLE, check_new_run_folder, check_same_settings, writing  # noqa: F401
from .progress import Progress
from .task import Task, get_task


@dataclass
class TrainResult:
    status: str  # "done" or "cancelled"
    step: int
    out_dir: Path
    checkpoint: Path | None
    model_path: Path | None
    loss: float | None
    already: bool = False  # a finished run asked again: nothing trained, no file written


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch from the seed, split over ranks) that can start mid-epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, seeded: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0  # index into this epoch's order (batches done x batch size)
        self.seeded = seeded  # yield (index, item seed) for SeededItems

    def __iter__(self):
        order = list(super().__iter__())[self.start :]
        if not self.seeded:
            return iter(order)
        return iter([(i, item_seed(self.seed, self.rank, self.epoch, self.start + k)) for k, i in enumerate(order)])

    def __len__(self) -> int:
        return super().__len__() - self.start


def item_seed(seed: int, rank: int, epoch: int, position: int) -> int:
    """The RNG seed of the item at ``position`` of ``epoch`` on ``rank`` (DataLoader workers: SeededItems)."""
    return int(np.random.SeedSequence([seed, rank, epoch, position]).generate_state(1)[0])


class SeededItems(Dataset):
    """``dataset`` indexed by ``(index, seed)``: python/numpy/torch's global generators are seeded before each item.

    With ``train.num_workers > 0`` the augmentation a dataset draws from the global generators is then a function
    of (train.seed, rank, epoch, position): the same for any worker count, fork or spawn, and after any resume,
    and the (persistent) workers need no re-seeding per epoch. Module-level: it pickles for spawned workers.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return self.dataset[index]


def _close_workers(loader: DataLoader | None) -> None:
    """Stop a loader's persistent worker processes now (each holds a copy of the dataset)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        loader._iterator = None
        iterator._shutdown_workers()  # what its __del__ would do, later


class _LossModule(nn.Module):
    """The model with the task's loss as forward, so DDP sees (and syncs) whatever the loss calls."""

    def __init__(self, task: Task, model: nn.Module):
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch: Any):
        return self.task.loss(self.model, batch)


class _StopOnSignal:
    """SIGINT/SIGTERM set ``requested`` (a second Ctrl-C stops at once); handlers restored on exit."""

    def __init__(self):
        self.requested, self._old = False, {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals only work there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_factor(schedule: dict, total: int):
    """LR multiplier after ``n`` scheduler steps: linear warm-up, then constant/cosine/linear decay."""
    warm, lo, kind = int(schedule["warmup_steps"]), float(schedule["min_factor"]), schedule["name"]

    def factor(n: int) -> float:
        if n < warm:
            return (n + 1) / warm
        p = min(1.0, (n - warm) / max(1, total - warm))
        if kind == "cosine":
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p))
        if kind == "linear":
            return lo + (1 - lo) * (1 - p)
        return 1.0

    return factor


def build_optimizer(params, optim: dict) -> torch.optim.Optimizer:
    lr, wd = float(optim["lr"]), float(optim["weight_decay"])
    if optim["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=wd, betas=tuple(optim["betas"]))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype on CUDA (None: full fp32, always off the GPU)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [to_device(v, device) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def _split_loss(out: torch.Tensor | dict) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError("task.loss returned a dict without 'loss'")
        return out["loss"], {k: float(v) for k, v in out.items() if k != "loss"}
    return out, {}


def train(
    task: Task | str | None,
    config: dict | str | Path,
    out_dir: str | Path,
    progress: str = "bar",
    resume: bool = True,
    command: str | None = None,
) -> TrainResult:
    """Train ``task`` (or ``config["task"]``) as ``config`` says, into ``out_dir``; resume from its last checkpoint.

    ``config``: a dict or a file, completed by :func:`~.config.load_config`. ``progress``: bar | json | none.
    """
    report = Progress(progress, enabled=os.environ.get("RANK", "0") == "0")  # torchrun: rank 0 reports
    info = D.DistInfo()
    try:
        raw = read_config_file(config) if isinstance(config, (str, Path)) else dict(config or {})
        if task is not None and not raw.get("task"):
            raw["task"] = task if isinstance(task, str) else f"{type(task).__module__}:{type(task).__name__}"
        cfg = load_config(raw)
        if non_finite(cfg):  # config.json, the checkpoints and the model hold strict JSON
            raise InputError(f"config {non_finite(cfg)}: not a finite number; give a finite value")
        task = get_task(task if task is not None else cfg["task"])
        device = prepare_device(cfg["device"])
        info = D.init_distributed(device)
        device = D.local_device(device, info)
        with _StopOnSignal() as stop:
            result = _run(task, cfg, Path(out_dir), device, info, report, stop, resume, command)
        try:
            D.barrier(info)  # every rank done (rank 0 exports) before any tears the group down: see dist.barrier
        except Exception as error:  # a rank gone after its work (a second signal killed it): this one's is done
            if _peer_lost(error, info) is None:
                raise
        return result
    except Exception as caught:
        error = _out_of_memory(caught, Path(out_dir)) or _peer_lost(caught, info) or caught
        report.event("error", message=str(error).splitlines()[0] if str(error) else type(error).__name__)
        error.reported = True  # the CLI does not say it again
        if error is caught:
            raise
        raise error from None
    finally:
        report.close()
        D.cleanup(info)
        # matplotlib's tight_layout (loss.png) and the optimiser's construction leave reference cycles through
        # _run's frame: its model, optimiser, EMA and data would stay (GPU memory too) until the collector ran,
        # e.g. into the next stage of a recipe
        gc.collect()


def _run(task, cfg, out, device, info, report, stop, resume, command) -> TrainResult:
    t = cfg["train"]
    ckpt_dir = out / "checkpoints"
    state, last = _resume_state(cfg, out, resume)
    if state is not None and state["step"] >= t["steps"] and _exported(task, out, state["step"]):
        return _already_done(task, out, state["step"], last, report)  # before any building: files left as they are
    seed_everything(int(t["seed"]))
    model = _built(task, "model", cfg).to(device)
    trainable = list(task.parameters(model))
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    optimizer = build_optimizer(trainable, cfg["optim"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg["schedule"], t["steps"]))
    dtype = autocast_dtype(t["precision"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    decay = float(t["ema_decay"])
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None

    dataset = _built(task, "data", cfg)
    if D.any_flag(stop.requested, info, device):  # asked during the builds (the task's loops): no step is started
        at = state["step"] if state is not None else 0
        kept = f"the checkpoint of step {at} is kept, run the same command to resume" if last else \
            "nothing trained, run the same command to start"  # fmt: skip
        report.event("cancelled", step=at, total=t["steps"], checkpoint=str(last) if last else None,
                     message=f"cancelled before training (while building the model and data); {kept}")  # fmt: skip
        return TrainResult("cancelled", at, out, last, None, None)
    workers = int(t["num_workers"])
    sampler = ResumableSampler(dataset, info.world_size, info.rank, int(t["seed"]), seeded=workers > 0)
    per_epoch = len(sampler) // t["batch_size"]
    if per_epoch < 1:
        raise InputError(
            f"data: {len(dataset)} items are fewer than train.batch_size ({t['batch_size']}) x "
            f"{info.world_size} process(es); lower train.batch_size or add data"
        )

    step = epoch = in_epoch = 0
    log = LossLog(out / "train_log.jsonl")
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:  # empty when saved without fp16 (CPU, fp32, bf16): a new scaler starts
                scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise InputError(
                f"--out {out}: its checkpoint {last.name} does not fit this config ({str(error).splitlines()[0]}); "
                "resume with the run's config.json or choose another --out"
            ) from None
        step, epoch, in_epoch = state["step"], state["epoch"], state["in_epoch"]
        set_rng_state(state["rng"])
        if info.rank > 0:  # the checkpoint holds rank 0's streams; others derive theirs
            torch.manual_seed(int(t["seed"]) + 1_000_003 * info.rank + step)
    else:
        if t["init_from"]:  # weights of a stored model (checked like any model), same architecture
            weights = _init_weights(task, cfg)
            try:  # the EMA copies the weights at its first update
                model.load_state_dict(weights)
            except RuntimeError as error:
                said = str(error).splitlines()[-1].strip()[:200]  # torch lists every key; its last line says what
                raise InputError(f"train.init_from {t['init_from']}: does not fit the task's model ({said}); "
                                 "give a model trained with the same model settings") from None  # fmt: skip
        if info.rank > 0:  # same initial weights on every rank (seeded above), different noise after
            seed_everything(int(t["seed"]) + 1_000_003 * info.rank)
    if info.is_main:
        with writing(out, "config.json and train_log.jsonl"):
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", cfg)
            log.truncate(step)  # steps after the checkpoint are redone; their old lines go

    net = _LossModule(task, model)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=ids, find_unused_parameters=bool(t["find_unused_parameters"]))

    def save() -> Path | None:
        if not info.is_main:
            return None
        state = {"step": step, "epoch": epoch, "in_epoch": in_epoch, "model": model.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                 "config": cfg}  # fmt: skip
        with writing(out, f"the checkpoint of step {step}"):
            log.sync()  # the records up to the checkpoint reach the disk first: a resume keeps them
            path = save_checkpoint(checkpoint_path(ckpt_dir, step), state)
        with writing(out, "loss.png"):
            prune_checkpoints(ckpt_dir, int(t["keep_checkpoints"]))
            log.plot(out / "loss.png")
        report.event("checkpoint", step=step, path=str(path), message=f"checkpoint at step {step}: {path}")
        return path

    report.start(t["steps"], step, device=str(device), world_size=info.world_size,
                 precision=str(dtype).replace("torch.", "") if dtype else "fp32", out=str(out))  # fmt: skip
    t0, loss_value, saved, cancelled = time.perf_counter(), None, None, False
    model.train()
    loader = None
    try:
        while step < t["steps"] and not cancelled:
            sampler.set_epoch(epoch)
            sampler.start = in_epoch * t["batch_size"]
            if loader is None or not workers:  # workers: one loader, its workers kept over epochs (spawn: seconds each)
                loader = DataLoader(
                    SeededItems(dataset) if workers else dataset, batch_size=t["batch_size"], sampler=sampler,
                    drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                    pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(int(t["seed"]) + epoch),
                )  # the generator seeds workers without drawing from the global RNG (which resume restores)
            for batch in loader:
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss, terms = _split_loss(net(to_device(batch, device)))
                loss_value = D.all_mean(float(loss.detach()), info, device)
                if not math.isfinite(loss_value):  # before the update: the weights and checkpoints stay good
                    raise InputError(_diverged(loss_value, step + 1, ckpt_dir, dtype))
                scaler.scale(loss).backward()
                if float(cfg["optim"]["grad_clip"]) > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, float(cfg["optim"]["grad_clip"]))
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                lr = scheduler.get_last_lr()[0]  # the rate this step used
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                step, in_epoch = step + 1, in_epoch + 1
                with torch.no_grad():
                    extra = task.after_step(model, step, ema.module if ema is not None else None)
                if extra and info.is_main:
                    extra = {k: float(v) if isinstance(v, (torch.Tensor, np.generic)) else v for k, v in extra.items()}
                    log.append({"step": step, "stage": "after_step", **extra})
                    report.event("after_step", step=step, **extra)
                if info.is_main:
                    with writing(out, "train_log.jsonl"):
                        log.append({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr,
                                    "time_s": round(time.perf_counter() - t0, 4), **terms})  # fmt: skip
                    report.step(step, loss_value, **terms)
                if t["validate_every"] and step % t["validate_every"] == 0 and info.is_main:
                    _validate(task, ema.module if ema is not None else model, step, log, report)
                    model.train()
                cancelled = D.any_flag(stop.requested, info, device)  # every rank stops at the same step
                if step % t["checkpoint_every"] == 0 or step == t["steps"] or cancelled:
                    _check_weights(model, ema, step, loss_value, ckpt_dir, dtype)  # every rank: DDP keeps them equal
                    saved = save() or saved
                if cancelled:
                    break
                if step >= t["steps"]:
                    break
            else:
                epoch, in_epoch = epoch + 1, 0
            if in_epoch >= per_epoch:  # the loop above stopped at an epoch end
                epoch, in_epoch = epoch + 1, 0
    finally:  # persistent workers end with the run, not when the garbage collector finds the loader
        _close_workers(loader)

    if cancelled and step < t["steps"]:
        report.event("cancelled", step=step, total=t["steps"], checkpoint=str(saved),
                     message=f"cancelled at step {step}; checkpoint saved, run the same command to resume")  # fmt: skip
        return TrainResult("cancelled", step, out, saved, None, loss_value)
    model_path = None
    if loss_value is None:  # a run stopped at or past its steps, not exported yet: its last logged loss
        loss_value = next((r["loss"] for r in reversed(log.records()) if r.get("step") == step and "loss" in r), None)
    if info.is_main:
        if saved is None:  # resumed a run that had its steps
            saved = save()
        with writing(out, "model.safetensors"):
            model_path = _export(task, cfg, ema.module if ema is not None else model, out, step, loss_value, command)
    report.event("done", step=step, total=t["steps"], loss=loss_value, model=str(model_path) if model_path else None,
                 message=f"done: {step} steps, model {model_path}")  # fmt: skip
    return TrainResult("done", step, out, saved, model_path, loss_value)


def _resume_state(cfg: dict, out: Path, resume: bool) -> tuple[dict | None, Path | None]:
    """The newest checkpoint's state and path (None, None: a new run), its settings checked against ``cfg``."""
    last = latest_checkpoint(out / "checkpoints")
    if last is None:
        check_new_run_folder(cfg, out)  # a file, another run's config or a model without checkpoints: refused
        return None, None
    if not resume:
        raise InputError(f"--out {out}: holds a training run ({last.name}); resume it or choose another --out")
    state = load_checkpoint(last)
    check_same_settings(state.get("config"), cfg, out, last)
    return state, last


def _exported(task: Task, out: Path, step: int) -> bool:
    """The run's model file was exported at ``step`` (always true for a task that exports nothing)."""
    if task.architecture is None:
        return True
    from ..models.store import read_model_header

    path = out / "model.safetensors"
    try:
        return path.is_file() and read_model_header(path)[2].get("steps") == step
    except InputError:  # damaged: exported again
        return False


def _already_done(task, out: Path, step: int, last: Path, report: Progress) -> TrainResult:
    """A finished run asked again: nothing is trained, nothing rewritten (a registered model keeps its hash)."""
    model_path = out / "model.safetensors" if task.architecture is not None else None
    report.event("done", step=step, total=step, loss=None, model=str(model_path) if model_path else None,
                 already=True, message=f"already done at step {step}, nothing trained; model {model_path}")  # fmt: skip
    return TrainResult("done", step, out, last, model_path, None, already=True)


def _built(task: Task, section: str, cfg: dict):
    """``task.build_model(cfg["model"])`` / ``task.build_dataset(cfg["data"])``, a misspelt key said as a config
    error (the task's classes take these sections as keyword arguments)."""
    build = task.build_model if section == "model" else task.build_dataset
    try:
        return build(cfg[section])
    except InputError:  # the task's own words about the user's setting
        raise
    except ValueError as error:  # a value of the right type out of its range (e.g. torch's dropout above 1)
        said = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise InputError(f"config {section}: task {cfg['task']} cannot build its {section} from these settings "
                         f"({said}); check the {section}.* values") from None  # fmt: skip
    except TypeError as error:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if not match:
            raise
        key = match.group(1)
        if key not in (cfg[section] or {}):  # raised inside the task, not about the user's setting
            raise
        if section == "data" and key == "root":
            raise InputError(f"--data (config data.root): task {cfg['task']} makes its own training data and reads "
                             "no data folder; leave --data out") from None  # fmt: skip
        raise InputError(f"config {section}.{key}: not a setting of task {cfg['task']}'s {section}; check the "
                         "spelling or leave it out") from None  # fmt: skip


def _init_weights(task: Task, cfg: dict) -> dict:
    """The weights ``train.init_from`` names: a stored model (checked like any model, same architecture) or a
    training checkpoint of this project (its model's weights, not its EMA: e.g. the last good one of a run that
    diverged)."""
    source = cfg["train"]["init_from"]
    if is_checkpoint(source):
        return load_checkpoint(source)["model"]
    from ..models.store import load_model

    loaded = load_model(source)
    if task.architecture is not None and loaded.architecture != task.architecture:
        raise InputError(f"train.init_from {source}: a {loaded.architecture} model; task {cfg['task']} "
                         f"trains {task.architecture} models: give one of those")  # fmt: skip
    return loaded.module.state_dict()


def _diverged(value: float, step: int, ckpt_dir: Path, dtype: torch.dtype | None, what: str = "") -> str:
    """What to say when the loss of ``step`` is NaN or infinite (``what``: another thing that was)."""
    last = latest_checkpoint(ckpt_dir)
    fp = ", train.precision=fp32" if dtype is not None else ""
    start = f", from the last good checkpoint (kept): train.init_from={last}" if last else \
        " (no checkpoint was saved before it)"  # fmt: skip
    what = what or f"loss is {value} at step {step}; stopped before the update"
    return (f"training: {what}. The same settings diverge again: "
            f"try a lower optim.lr, optim.grad_clip=1.0 or schedule.warmup_steps{fp} in a new --out{start}")


def _out_of_memory(error: Exception, out: Path) -> InputError | None:
    """An allocation that failed (the model, a batch, the optimiser's state), said with what to lower."""
    text = str(error)
    if not (isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (isinstance(error, RuntimeError) and (
            "out of memory" in text or "allocate memory" in text))):  # fmt: skip
        return None
    last = latest_checkpoint(out / "checkpoints")
    kept = f"; the newest checkpoint, {last}, is kept (train.init_from={last} in a new --out)" if last else ""
    said = text.splitlines()[0][:160] if text else type(error).__name__
    return InputError(f"training: out of memory ({said}): lower train.batch_size or the model's size (model.*), "
                      f"or train where there is more memory{kept}")  # fmt: skip


def _peer_lost(error: Exception, info: D.DistInfo) -> InputError | None:
    """Under torchrun, a collective that failed because another process stopped (it ran out of memory, was
    cancelled, crashed): one line pointing at that process's own message, not torch's traceback."""
    text = str(error)
    gloo = isinstance(error, RuntimeError) and any(s in text for s in ("by peer", "remote worker"))  # closed, reset
    if not info.enabled or not (gloo or isinstance(error, getattr(torch.distributed, "DistError", ()))):
        return None
    said = text.splitlines()[0].split("] ", 1)[-1].split(". ")[0][:120] if text else type(error).__name__
    return InputError(f"training: process {info.rank} of {info.world_size} stopped because another process of the "
                      f"run did ({said}); that process's own error says why: fix it and run the same command to "
                      "resume from the newest checkpoint")  # fmt: skip


def _check_weights(model: nn.Module, ema: nn.Module | None, step: int, loss: float, ckpt_dir: Path,
                   dtype: torch.dtype | None) -> None:  # fmt: skip
    """Before a checkpoint or the model is written: a finite loss can still give a NaN/infinite gradient (a sqrt or
    norm at 0), whose update poisons the weights; they are refused, not saved as the 'last good' checkpoint."""
    for prefix, module in (("", model), ("EMA ", ema.module if ema is not None else None)):
        for name, p in module.named_parameters() if module is not None else ():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise InputError(_diverged(loss, step, ckpt_dir, dtype, f"{prefix}weight {name} is not finite after "
                                           f"the update of step {step} (its loss, {loss:.4g}, was finite: a NaN or "
                                           "infinite gradient); stopped before saving it"))  # fmt: skip


def _validate(task: Task, module: nn.Module, step: int, log: LossLog, report: Progress) -> None:
    module.eval()
    saved = rng_state()  # validation draws from its own streams: how often it runs does not change the training
    try:
        with torch.no_grad():
            metrics = {k: float(v) for k, v in task.validate(module, step).items()}
    finally:
        set_rng_state(saved)
    if metrics:
        log.append({"step": step, "stage": "val", **metrics})
        report.event("validate", step=step, **metrics)


def _export(task, cfg, module, out, step, loss, command) -> Path | None:
    if task.architecture is None:
        return None
    from ..models.store import save_model

    meta = {"task": str(cfg["task"]), "steps": step, "final_loss": loss, "ema": bool(cfg["train"]["ema_decay"]),
            "training_command": command or " ".join(sys.argv)}  # fmt: skip
    path = out / "model.safetensors"
    save_model(module, path, task.model_config(cfg["model"]), architecture=task.architecture, meta=meta)
    return path
