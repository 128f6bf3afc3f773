"""Shared helpers of the benchmark suite: environment record, load average, min/median/max, JSON, study runs.

Every benchmark result carries the machine, the versions, the git commit, the exact command, the date, the mode
(quick or full) and the load average before and after it ran (the machine is shared, so absolute timings drift;
figures are ratios of measurements taken side by side in the same run wherever possible).

Results are kept per CPU: ``<name>.json`` is the latest run, and a run on another CPU first moves the file it
replaces to ``<name>@<cpu tag>.json`` (:func:`keep_other_cpu`; the tag names the model and its bf16 flags), so
figures that depend on the CPU (bf16, AMX) are never lost to a run elsewhere.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
PYTHON = sys.executable


@dataclass
class Context:
    """What a benchmark's ``run(ctx)`` gets: the mode, a scratch folder, the result files, the results of the
    benchmarks run before it in this invocation, and for long ones a way to save a partial result and the partial
    result of an interrupted run to continue from."""

    quick: bool = False
    workdir: Path = field(default_factory=lambda: Path("."))
    results_dir: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)  #: name -> result of this invocation's earlier benchmarks
    command: str = "python bench/run.py"
    save: Callable[[Any], None] | None = None
    previous: dict[str, Any] | None = None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


class CpuShare:
    """The share of ``threads`` cores this process used while the ``with`` block ran (CPU time of all its threads /
    (wall time x threads)): near 1 when the machine left the benchmark alone, lower when other work took the cores.
    A steadier sign of a disturbed measurement than the load average, which counts every runnable thread on the
    machine (Ray's polling threads among them) whatever its priority.

    >>> with CpuShare(threads=1) as used:
    ...     _ = sum(i * i for i in range(200_000))
    >>> 0.0 <= used.share <= 2.0
    True
    """

    def __init__(self, threads: int):
        self.threads, self.share = max(threads, 1), float("nan")

    def __enter__(self) -> "CpuShare":
        self._wall, self._cpu = time.perf_counter(), sum(os.times()[:2])
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._wall
        self.share = (sum(os.times()[:2]) - self._cpu) / (wall * self.threads) if wall > 0 else float("nan")


def stats(values: Iterable[float]) -> dict[str, float]:
    """min / median / max and the number of repetitions of ``values`` (NaN-free; empty -> n = 0)."""
    values = [float(v) for v in values if v is not None and v == v]
    if not values:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def git(*args: str) -> tuple[int, str]:
    """``git args`` in the repository: (exit status, stripped stdout); (-1, "") where git cannot run."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return -1, ""
    return out.returncode, out.stdout.strip()


def git_commit() -> dict[str, Any]:
    dirty = git("status", "--porcelain")[1]
    return {"commit": git("rev-parse", "HEAD")[1] or None, "dirty_files": len(dirty.splitlines())}


def machine() -> dict[str, Any]:
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    cpu = platform.processor() or platform.machine()
    ids: dict[str, str] = {}  # family / model / stepping: the model name alone ("AMD EPYC") hides the generation
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            cpu = value.strip()
        elif key in ("cpu family", "model", "stepping"):
            ids.setdefault(key, value.strip())
        elif not key and ids:
            break  # the first processor's block is enough
    words = set(cpuinfo.split())  # the CPU's native bf16 features (what moco/precision.py decides "auto" from)
    flags = [flag for flag in ("amx_bf16", "avx512_bf16") if flag in words]
    mem = round(psutil.virtual_memory().total / 2**30, 1)
    return {"platform": platform.platform(), "cpu": cpu,
            "cpu_id": "/".join(ids.get(k, "?") for k in ("cpu family", "model", "stepping")),
            "cpu_bf16_flags": flags, "cores": os.cpu_count(),
            "memory_gib": mem,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def malloc_note(machine: dict[str, Any]) -> str:
    """How a result's process ran malloc (its ``malloc_retains_freed_memory``), as a clause for a page line."""
    return {True: ", freed memory kept (moco/allocator.py)",
            False: ", malloc's defaults"}.get(machine.get("malloc_retains_freed_memory"), "")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "ray", "optuna", "numpy", "pandas", "matplotlib"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def environment() -> dict[str, Any]:
    """The environment record of every result file: machine, versions, git commit."""
    return {"machine": machine(), "versions": versions(), "git": git_commit()}


def run_record(name: str, quick: bool, command: str) -> dict[str, Any]:
    """The head of a result file (its ``result`` and ``load_after`` are added when the benchmark ends)."""
    return {"benchmark": name, "mode": "quick" if quick else "full", "command": command, "date": now(),
            **environment(), "load_before": loadavg()}


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def cpu_tag(m: dict[str, Any]) -> str:
    """A file-name tag for a machine record's CPU: its model and bf16 flags, e.g. ``amd-epyc+avx512_bf16``."""
    model = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b", " ", str(m.get("cpu") or "unknown cpu").lower())
    return "-".join(re.findall(r"[a-z0-9]+", model)) + "".join(f"+{f}" for f in sorted(m.get("cpu_bf16_flags") or []))


def keep_other_cpu(path: Path, log: Callable[[str], None] = print) -> Path | None:
    """Before a benchmark writes ``path``: if the result there was measured on another CPU than this machine's, move
    it to ``<stem>@<its cpu tag>.json`` (replacing an older result of that CPU) and return the new path."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or "cpu" not in (doc.get("machine") or {}) or same_cpu(doc):
        return None
    old = doc["machine"]
    target = path.with_name(f"{path.stem}@{cpu_tag(old)}{path.suffix}")
    os.replace(path, target)
    log(f"[bench] {path.name} was measured on {old['cpu']}: kept as {target.name}")
    return target


def other_cpu_files(results_dir: Path, name: str) -> list[Path]:
    """The results of benchmark ``name`` kept from other CPUs (:func:`keep_other_cpu`), by name."""
    return sorted(Path(results_dir).glob(f"{name}@*.json"))


def same_cpu(doc: dict[str, Any]) -> bool:
    """Whether a result file was measured on this machine's CPU model with the same bf16 flags."""
    return isinstance(doc.get("machine"), dict) and cpu_tag(doc["machine"]) == cpu_tag(machine())


def saved_result(results_dir: Path | None, name: str, quick: bool | None = None,
                 this_cpu: bool = False) -> dict[str, Any] | None:
    """Benchmark ``name``'s saved result (complete or partial) in ``results_dir/<name>.json``, with the file's mode as
    ``quick`` and its ``date``; None if there is none, if (when ``quick`` is given) it ran in the other mode, or if
    (``this_cpu``) it was measured on another CPU."""
    doc = read_json(Path(results_dir) / f"{name}.json") if results_dir is not None else None
    if not doc or not isinstance(doc.get("result"), dict) or (this_cpu and not same_cpu(doc)):
        return None
    saved_quick = doc.get("mode") == "quick"
    if quick is not None and saved_quick != quick:
        return None
    return {**doc["result"], "quick": saved_quick, "date": doc.get("date")}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# --- memory sampling of a process tree ---------------------------------------------------------------------------
def _peak_rss_kib(pid: int) -> int | None:
    """The peak resident set size of ``pid`` (VmHWM, which psutil does not report), from /proc; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def process_tree(root: int) -> list[psutil.Process]:
    """``root`` and all its descendants (none if ``root`` is gone)."""
    try:
        top = psutil.Process(root)
        return [top, *top.children(recursive=True)]
    except psutil.Error:
        return []


def process_role(cmdline: list[str]) -> str:
    """What a process of a study's tree is, from its (Ray-set) process title."""
    text, first = " ".join(cmdline), (cmdline[0] if cmdline else "")
    if "study/run.py" in text:
        return "study driver"
    if first.startswith("ray::"):
        for marker, role in (("RayTrainWorker", "train worker"), ("ImplicitFunc", "trial driver (Tune)"),
                             ("TrainController", "train controller"), ("IDLE", "ray idle worker")):
            if marker in first:
                return role
        return "ray helper actor"
    if first.endswith("gcs_server"):
        return "ray gcs"
    if first.endswith("raylet"):
        return "raylet"
    script = " ".join(cmdline[:3])
    for marker, role in (("bin/ray start", "ray head (ray start)"),
                         ("default_worker.py", "ray worker (starting)"), ("dashboard", "ray dashboard / agents"),
                         ("runtime_env", "ray dashboard / agents"), ("log_monitor", "ray log monitor"),
                         ("monitor.py", "ray log monitor")):
        if marker in script:
            return role
    return "other"


class TreeMemory:
    """Samples a process tree every ``interval`` seconds: per-process peak RSS (VmHWM) and role, and the peak
    over time of the tree's total proportional set size (PSS: shared pages split between processes)."""

    def __init__(self, root_pid: int, interval: float = 1.0):
        self.root_pid, self.interval = root_pid, interval
        self.processes: dict[int, dict[str, Any]] = {}
        self.peak_total_pss_kib = 0
        self.peak_total_rss_kib = 0
        self.peak_total_anon_kib = 0
        self.pss_by_role_at_peak: dict[str, float] = {}  # KiB of each role in the sample with the largest total PSS
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            total_pss = total_rss = total_anon = 0
            by_role: dict[str, float] = {}
            for proc in process_tree(self.root_pid):
                hwm = _peak_rss_kib(proc.pid)
                try:
                    mem = proc.memory_full_info()  # rss, shared (file-backed + shmem), pss
                    cmd = proc.cmdline()
                except psutil.Error:
                    continue
                if hwm is None:
                    continue
                rss, pss = mem.rss // 1024, getattr(mem, "pss", 0) // 1024
                entry = self.processes.setdefault(proc.pid, {"role": "other", "cmd": "", "peak_rss_kib": 0})
                if entry["role"] in ("other", "ray worker (starting)", "ray idle worker", "raylet", "ray helper actor"):
                    # workers set their title (ray::...) after start, and a Train worker's title names the setup
                    # function it runs (ray::execute._init_process_group) before RayTrainWorker: re-read until known
                    entry.update(role=process_role(cmd), cmd=" ".join(cmd)[:120])
                entry["peak_rss_kib"] = max(entry["peak_rss_kib"], hwm)
                total_rss += rss
                total_pss += pss or rss
                by_role[entry["role"]] = by_role.get(entry["role"], 0) + (pss or rss)
                total_anon += (mem.rss - mem.shared) // 1024  # RssAnon = RSS - (RssFile + RssShmem)
            if total_pss > self.peak_total_pss_kib:
                self.pss_by_role_at_peak = by_role
            self.peak_total_pss_kib = max(self.peak_total_pss_kib, total_pss)
            self.peak_total_rss_kib = max(self.peak_total_rss_kib, total_rss)
            self.peak_total_anon_kib = max(self.peak_total_anon_kib, total_anon)
            self.samples += 1
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        by_role: dict[str, list[float]] = {}
        for entry in self.processes.values():
            by_role.setdefault(entry["role"], []).append(entry["peak_rss_kib"] / 1024)
        return {"interval_s": self.interval, "samples": self.samples, "processes": len(self.processes),
                "peak_total_pss_mib": self.peak_total_pss_kib / 1024,
                "peak_total_rss_mib": self.peak_total_rss_kib / 1024,
                "peak_total_anon_mib": self.peak_total_anon_kib / 1024,
                "pss_mib_by_role_at_peak": {role: kib / 1024 for role, kib in sorted(self.pss_by_role_at_peak.items())},
                "peak_rss_mib_by_role": {role: {**stats(v), "count": len(v)} for role, v in sorted(by_role.items())}}


# --- studies as subprocesses ---------------------------------------------------------------------------------------
def write_space(path: Path, study: dict[str, Any], base_space: Path = ROOT / "configs" / "hardneg.yaml") -> Path:
    """A space file: ``base_space``'s ``base`` and ``search`` sections with its ``study`` section updated, and no
    ``confirm`` section (a benchmark measures the search; a confirmation stage would add its runs to every study)."""
    doc = yaml.safe_load(Path(base_space).read_text())
    doc.pop("confirm", None)
    doc["study"] = {**doc.get("study", {}), **study}
    if isinstance(doc.get("base", {}).get("config"), str) and not doc["base"]["config"].endswith(".yaml"):
        doc["base"]["config"] = str(ROOT / "configs" / (doc["base"]["config"] + ".yaml"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_study(space: Path, storage: Path, name: str, *, overrides: dict[str, Any] | None = None,
              extra: list[str] | None = None, sample_memory: bool = False, timeout: float | None = None,
              log: Path | None = None) -> dict[str, Any]:
    """Run ``study/run.py`` as a subprocess; return its command, exit status, wall time, start time and memory."""
    cmd = [PYTHON, str(ROOT / "study" / "run.py"), "--space", str(space), "--storage", str(storage), "--name", name,
           "--no-report", *(extra or [])]
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={value}"]
    log = log or Path(storage) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    t0 = time.perf_counter()
    with open(log, "w") as handle:
        # study/run.py starts its own private Ray head (study/local_cluster.py); no environment tricks needed here
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        memory = TreeMemory(proc.pid) if sample_memory else None
        if memory:
            memory.__enter__()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            rc = proc.wait()
        finally:
            if memory:
                memory.__exit__(None, None, None)
    out = {"command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""), "returncode": rc,
           "wall_s": time.perf_counter() - t0, "started_unix": started, "run_dir": str(Path(storage) / name),
           "log": str(log)}
    if memory:
        out["memory"] = memory.summary()
    if rc != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"study {name} failed with exit status {rc}; log {log}:\n" + "\n".join(tail))
    return out


def tune_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every epoch report of a study with its absolute time, from Tune's per-trial ``result.json`` files."""
    events = []
    for path in Path(run_dir).glob("*/result.json"):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            events.append(row)
    events.sort(key=lambda r: (r.get("timestamp", 0), r.get("time_total_s", 0)))
    return events
