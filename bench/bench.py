#!/usr/bin/env python3
"""Wedge vs the Go shim, side by side under one private containerd.

Runs each scenario for both shims, interleaved (A/B), and prints a markdown
table of medians and Wedge/Go ratios. Raw samples go to a JSON file so a run
can be re-read and compared later.

Usage: bench/bench.py [--quick] [--cri-only] [--out FILE]
  (bench/run builds Wedge, installs what is needed and calls this.)
"""
import argparse
import json
import shlex
import os
import shutil
import socket
import struct
import threading
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "docker.io/library/wedge-busybox:latest"
SHIMS = {
    "wedge": "io.containerd.wedge.v2",
    "go": "io.containerd.runc.v2",
}


NETLINK_GENERIC = 16


class TaskExits:
    """Every task's exit with the CPU time it ran, from the kernel's
    taskstats (generic netlink: TASKSTATS_CMD_ATTR_REGISTER_CPUMASK). This
    counts short-lived processes whose parent is not ours, to the
    nanosecond: a shim's `start`, its daemon, and containerd's `shim delete`."""
    def __init__(self):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.s.bind((0, 0))
        fam = self._request(0x10, 3, [(2, b"TASKSTATS\0")])
        self.family = next(struct.unpack_from("<H", v)[0] for t, v in self._attrs(fam[20:]) if t == 1)
        cpus = f"0-{os.cpu_count() - 1}\0".encode()
        self._send(self.family, 1, [(3, cpus)])
        self.records = []
        self.lock = threading.Lock()
        threading.Thread(target=self._loop, daemon=True).start()

    def _send(self, typ, cmd, attrs):
        body = struct.pack("<BBH", cmd, 1, 0)
        for t, v in attrs:
            a = struct.pack("<HH", 4 + len(v), t) + v
            body += a + b"\0" * (-len(a) % 4)
        self.s.send(struct.pack("<IHHII", 16 + len(body), typ, 1, 1, 0) + body)

    def _request(self, typ, cmd, attrs):
        self._send(typ, cmd, attrs)
        return self.s.recv(65536)

    @staticmethod
    def _attrs(b):
        i = 0
        while i + 4 <= len(b):
            ln, t = struct.unpack_from("<HH", b, i)
            if ln < 4:
                break
            yield t & 0x3fff, b[i + 4:i + ln]
            i += (ln + 3) & ~3

    def _loop(self):
        while True:
            data = self.s.recv(1 << 16)
            i = 0
            while i + 16 <= len(data):
                ln, typ = struct.unpack_from("<IH", data, i)
                if typ == self.family:
                    for t, v in self._attrs(data[i + 20:i + ln]):
                        if t != 4:  # TASKSTATS_TYPE_AGGR_PID
                            continue
                        for t2, st in self._attrs(v):
                            if t2 == 3:  # TASKSTATS_TYPE_STATS
                                # cpu_run_virtual_total: the scheduler's sum_exec_runtime
                                # (cpu_run_real_total is utime + stime, tick-sampled).
                                cpu_ns = struct.unpack_from("<Q", st, 72)[0]
                                comm = st[80:112].split(b"\0")[0].decode(errors="replace")
                                pid, ppid = struct.unpack_from("<II", st, 128)
                                with self.lock:
                                    self.records.append((time.monotonic(), comm, pid, ppid, cpu_ns))
                i += (ln + 3) & ~3

    def mark(self):
        with self.lock:
            return len(self.records)

    def since(self, mark):
        with self.lock:
            return self.records[mark:]


class Containerd:
    def __init__(self, wedge_bin):
        self.dir = Path(tempfile.mkdtemp(prefix="wedge-bench-", dir="/tmp"))
        self.ns = f"wedge-bench-{os.getpid()}"
        self.sock = str(self.dir / "c.sock")
        bin_dir = self.dir / "bin"
        bin_dir.mkdir()
        shutil.copy(wedge_bin, bin_dir / "containerd-shim-wedge-v2")
        (self.dir / "config.toml").write_text(
            f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir}/opt"
"""
        )
        self.log = open(self.dir / "containerd.log", "w")
        self.spawn()
        for _ in range(200):
            if self.ctr("version", check=False).returncode == 0:
                break
            time.sleep(0.05)
        tar = self.dir / "busybox.tar"
        subprocess.run([str(ROOT / "tests/image/build-busybox-oci.sh"), str(tar), IMAGE],
                       check=True, stdout=subprocess.DEVNULL)
        self.ctr("images", "import", str(tar))

    def spawn(self):
        """Starts containerd (again, after a kill) on this config."""
        env = dict(os.environ, PATH=f"{self.dir / 'bin'}:{os.environ.get('PATH', '')}")
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(self.dir / "config.toml")],
            env=env, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
        )

    def ctr(self, *args, check=True, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(["ctr", "-a", self.sock, "-n", self.ns, *args],
                              check=check, stdin=subprocess.DEVNULL, **kw)

    def run_d(self, shim, cid, *args, extra=()):
        self.ctr("run", "-d", "--runtime", SHIMS[shim], *extra, IMAGE, cid, *args)

    def remove(self, cid):
        self.ctr("task", "kill", "-s", "KILL", cid, check=False)
        for _ in range(200):
            out = self.ctr("task", "ls", check=False).stdout.decode()
            if not any(l.split()[:1] == [cid] and "RUNNING" in l for l in out.splitlines()):
                break
            time.sleep(0.02)
        self.ctr("task", "rm", cid, check=False)
        self.ctr("container", "rm", cid, check=False)

    def shim_pids(self):
        pids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = b" ".join(cmd).decode(errors="replace")
            if "containerd-shim" in text and self.sock in text and not text.endswith(" start"):
                pids.append(int(p.name))
        return pids

    def close(self):
        for cid in self.ctr("task", "ls", "-q", check=False).stdout.decode().split():
            self.remove(cid)
        for cid in self.ctr("container", "ls", "-q", check=False).stdout.decode().split():
            self.ctr("container", "rm", cid, check=False)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            point = line.split()[4]
            if point.startswith(str(self.dir)):
                subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(f"/run/containerd/runc/{self.ns}", ignore_errors=True)
        for h in Path("/sys/fs/cgroup").iterdir():
            d = h / self.ns
            if d.is_dir():
                for c in d.iterdir():
                    if c.is_dir():
                        try:
                            c.rmdir()
                        except OSError:
                            pass
                try:
                    d.rmdir()
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


def mem(pid):
    """RSS, PSS, anonymous (KiB) and threads of a process."""
    vals = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith(":"):
            vals[parts[0][:-1]] = int(parts[1])
    threads = next(int(l.split()[1]) for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if l.startswith("Threads:"))
    return {"rss": vals["Rss"], "pss": vals["Pss"], "anon": vals["Anonymous"], "threads": threads}


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_memory(cd, shim, n, group=False):
    ids = [f"m-{shim}-{n}-{'g' if group else 's'}-{i}" for i in range(n)]
    extra = ("--annotation", f"io.containerd.runc.v2.group=g-{shim}-{n}") if group else ()
    for cid in ids:
        cd.run_d(shim, cid, "sleep", "3600", extra=extra)
    time.sleep(1.5)
    pids = cd.shim_pids()
    samples = [mem(p) for p in pids]
    for cid in ids:
        cd.remove(cid)
    time.sleep(0.5)
    total = {k: sum(s[k] for s in samples) for k in ("rss", "pss", "anon")}
    per = {k: statistics.median(s[k] for s in samples) for k in ("rss", "pss", "anon", "threads")}
    return {"shims": len(samples), "total": total, "per_shim": per}


def bench_run_latency(cd, shim, i):
    cid = f"lat-{shim}-{i}"
    return timed(lambda: cd.ctr("run", "--rm", "--runtime", SHIMS[shim], IMAGE, cid, "/bin/true"))


def bench_exec_latency(cd, shim, cid, i):
    return timed(lambda: cd.ctr("task", "exec", "--exec-id", f"x{i}", cid, "/bin/true"))


def counted_run(cmd):
    """Runs `cmd | wc -c`; returns (seconds, bytes the client received)."""
    line = "set -o pipefail; " + " ".join(shlex.quote(c) for c in cmd) + " 2>/dev/null | wc -c"
    t = time.perf_counter()
    out = subprocess.run(["bash", "-c", line], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t, int(out.stdout.split()[0])


def bench_fifo(cd, shim, mib, i):
    """1 run of `mib` MiB through the stdout FIFO; every byte is counted."""
    cid = f"fifo-{shim}-{i}"
    cmd = ["ctr", "-a", cd.sock, "-n", cd.ns, "run", "--rm", "--runtime", SHIMS[shim], IMAGE, cid,
           "dd", "if=/dev/zero", "bs=1M", f"count={mib}"]
    secs, n = counted_run(cmd)
    if n != mib << 20:
        print(f"warning: {shim} FIFO run {i} delivered {n} of {mib << 20} bytes", file=sys.stderr)
    return {"s": secs, "bytes": n, "complete": n == mib << 20}


def bench_burst(cd, shim, i):
    """A 1 MiB burst right before the exit: did the client get all of it?"""
    cid = f"burst-{shim}-{i}"
    cmd = ["ctr", "-a", cd.sock, "-n", cd.ns, "run", "--rm", "--runtime", SHIMS[shim], IMAGE, cid,
           "sh", "-c", "sleep 0.2; head -c 1048576 /dev/zero | tr '\\0' x"]
    _, n = counted_run(cmd)
    return {"bytes": n, "complete": n == 1 << 20}


def bench_file(cd, shim, mib, i):
    """1 run of `mib` MiB into a file:// log on tmpfs; the file's size is checked."""
    cid = f"file-{shim}-{i}"
    path = f"/dev/shm/wedge-bench-{shim}-{i}.log"
    try:
        secs = timed(lambda: cd.ctr("run", "--rm", "--runtime", SHIMS[shim], "--log-uri", f"file://{path}",
                                    IMAGE, cid, "sh", "-c", f"dd if=/dev/zero bs=1M count={mib} 2>/dev/null"))
        size = os.path.getsize(path) if os.path.exists(path) else 0
    finally:
        if os.path.exists(path):
            os.unlink(path)
    if size != mib << 20:
        print(f"warning: {shim} file log run {i} has {size} of {mib << 20} bytes", file=sys.stderr)
    return {"s": secs, "bytes": size, "complete": size == mib << 20}


def bench_limit(mib):
    return timed(lambda: subprocess.run(
        f"dd if=/dev/zero bs=1M count={mib} 2>/dev/null | cat > /dev/shm/wedge-bench-limit",
        shell=True, check=True))


def bench_churn(cd, shim, n, par, rnd):
    def one(i):
        return subprocess.Popen(["ctr", "-a", cd.sock, "-n", cd.ns, "run", "--rm", "--runtime", SHIMS[shim],
                                 IMAGE, f"churn-{shim}-{rnd}-{i}", "/bin/true"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    t = time.perf_counter()
    running, nxt = [], 0
    while nxt < n or running:
        while nxt < n and len(running) < par:
            running.append(one(nxt))
            nxt += 1
        for p in running[:]:
            if p.poll() is not None:
                running.remove(p)
        time.sleep(0.005)
    return n / (time.perf_counter() - t)


def cpu_ns(pid):
    """CPU time a process has run, all its threads, from the scheduler (ns)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def stats_files(ns, cid):
    """The cgroup v1 files a Stats answer of container `cid` is made of."""
    base = Path("/sys/fs/cgroup")
    d = lambda c: base / c / ns / cid
    names = [("pids", "pids.current"), ("pids", "pids.max"), ("cpuacct", "cpuacct.stat"),
             ("cpuacct", "cpuacct.usage"), ("cpuacct", "cpuacct.usage_percpu"), ("cpu", "cpu.stat"),
             ("memory", "memory.stat"), ("memory", "memory.oom_control")]
    for prefix in ("memory", "memory.memsw", "memory.kmem", "memory.kmem.tcp"):
        for f in ("usage_in_bytes", "max_usage_in_bytes", "failcnt", "limit_in_bytes"):
            names.append(("memory", f"{prefix}.{f}"))
    files = [d(c) / n for c, n in names]
    for name in ("io_service_bytes_recursive", "io_serviced_recursive"):
        for p in ("blkio.", "blkio.bfq.", "blkio.throttle."):
            f = d("blkio") / f"{p}{name}"
            if f.exists() and f.read_text().strip():
                files.append(f)
                break
    for name in ("io_queued_recursive", "io_service_time_recursive", "io_wait_time_recursive",
                 "io_merged_recursive", "time_recursive", "sectors_recursive"):
        files.append(d("blkio") / f"blkio.{name}")
    for f in sorted(d("hugetlb").glob("hugetlb.*.usage_in_bytes")):
        size = f.name[len("hugetlb."):-len(".usage_in_bytes")]
        files += [d("hugetlb") / f"hugetlb.{size}.{k}" for k in ("usage_in_bytes", "max_usage_in_bytes", "failcnt")]
    return [str(f) for f in files if f.exists()]


def shim_of(cd, cid):
    """The pid of the shim serving container `cid` (its group's first id)."""
    return [p for p in cd.shim_pids() if f"-id {cid} " in
            " ".join(Path(f"/proc/{p}/cmdline").read_text().split("\0"))][0]


def shim_running(cd, cid):
    """Whether a shim serving `cid` (as its first id) still runs."""
    for p in cd.shim_pids():
        try:
            if f"-id {cid} " in " ".join(Path(f"/proc/{p}/cmdline").read_text().split("\0")):
                return True
        except OSError:
            pass
    return False


def shim_address(cd, cid):
    return (cd.dir / "state/io.containerd.runtime.v2.task" / cd.ns / cid / "address").read_text().strip()


def stats_load(*args):
    """bench/shim_load.rs: Stats straight to the shims, as CRI's collector sends them."""
    r = subprocess.run(["cargo", "bench", "-q", "--bench", "shim_load", "--", *map(str, args)],
                       cwd=ROOT, check=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    if out["failed"]:
        raise RuntimeError(f"{out['failed']} of {out['calls']} Stats failed")
    return out


def bench_stats(cd, calls):
    """Shim CPU per Stats (sent straight to the shim on one connection, as
    containerd does), each shim with one idle container, and the floor: a
    plain program reading the same files."""
    out = {}
    for shim in ("wedge", "go"):
        cid = f"stats-{shim}"
        cd.run_d(shim, cid, "sleep", "3600")
        pid = shim_of(cd, cid)
        addr = shim_address(cd, cid)
        stats_load("calls", 1, addr, cid)
        before = cpu_ns(pid)
        stats_load("calls", calls, addr, cid)
        out[f"stats-cpu-{shim}"] = (cpu_ns(pid) - before) / calls
        if shim == "wedge":
            files = stats_files(cd.ns, cid)
            r = subprocess.run(["cargo", "bench", "-q", "--bench", "stats_floor", "--", "2000", *files],
                               cwd=ROOT, check=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            out["stats-floor"] = json.loads(r.stdout.decode().strip().splitlines()[-1])
        cd.remove(cid)
    return out


def bench_start(cd, runs):
    """`start` to serving: a shim's `start` as containerd runs it, then
    Connect until the daemon answers (bench/shim_load.rs), the two shims
    taking turns."""
    d = cd.dir / "start-bundles"
    d.mkdir(exist_ok=True)
    subprocess.run(["runc", "spec"], cwd=d, check=True)
    r = subprocess.run(["cargo", "bench", "-q", "--bench", "shim_load", "--", "start", str(runs), str(d), cd.ns,
                        cd.sock, cd.sock + ".ttrpc", f"wedge={cd.dir / 'bin/containerd-shim-wedge-v2'}",
                        f"go={shutil.which('containerd-shim-runc-v2')}"],
                       cwd=ROOT, check=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    return {"start": json.loads(r.stdout.decode().strip().splitlines()[-1])}


def bench_exec_storm(cd, shim, n, rounds):
    """n `ctr task exec` into one container at once (a probe storm), rounds
    times; each exec's wall time, launch to exit."""
    cid = f"storm-{shim}"
    cd.run_d(shim, cid, "sleep", "3600")
    lat = []
    for r in range(rounds):
        t0 = time.perf_counter()
        procs = [(subprocess.Popen(["ctr", "-a", cd.sock, "-n", cd.ns, "task", "exec", "--exec-id",
                                    f"s{r}-{i}", cid, "/bin/true"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), time.perf_counter())
                 for i in range(n)]
        for p, t in procs:
            if p.wait() != 0:
                raise RuntimeError(f"{shim}: an exec of the storm failed")
            lat.append(time.perf_counter() - t)
    cd.remove(cid)
    return lat


def start_many(cd, shim, ids, groups):
    """Starts detached sleepers, 4 `ctr run` at a time; `groups`: id → group."""
    pending = list(ids)
    while pending:
        batch, pending = pending[:4], pending[4:]
        procs = []
        for cid in batch:
            extra = ["--annotation", f"io.containerd.runc.v2.group={groups[cid]}"] if cid in groups else []
            procs.append(subprocess.Popen(["ctr", "-a", cd.sock, "-n", cd.ns, "run", "-d", "--runtime", SHIMS[shim],
                                           *extra, IMAGE, cid, "sleep", "3600"], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(p.stderr.read().decode())


def remove_many(cd, ids):
    """Kills and removes many containers, a few ctr calls at a time."""
    def each(args_of):
        pending = list(ids)
        while pending:
            batch, pending = pending[:8], pending[8:]
            for p in [subprocess.Popen(["ctr", "-a", cd.sock, "-n", cd.ns, *args_of(c)], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in batch]:
                p.wait()
    each(lambda c: ["task", "kill", "-s", "KILL", c])
    for _ in range(600):
        out = cd.ctr("task", "ls", check=False).stdout.decode()
        if not any("RUNNING" in l for l in out.splitlines() if l.split()[:1] and l.split()[0] in ids):
            break
        time.sleep(0.1)
    each(lambda c: ["task", "rm", c])
    each(lambda c: ["container", "rm", c])


def bench_restart(cd, shim, groups, singles):
    """containerd SIGKILLed and restarted with `groups` groups of 10 and
    `singles` single containers running on `shim`: seconds from the restart
    until `ctr task ls` lists every task as running again."""
    ids, group_of = [], {}
    for g in range(groups):
        for k in range(10):
            cid = f"rs-{shim}-g{g}-{k}"
            ids.append(cid)
            group_of[cid] = f"rs-{shim}-{g}"
    ids += [f"rs-{shim}-s{i}" for i in range(singles)]
    start_many(cd, shim, ids, group_of)
    shims_before = sorted(cd.shim_pids())
    cd.proc.kill()
    cd.proc.wait()
    t0 = time.perf_counter()
    cd.spawn()
    want = set(ids)
    while True:
        out = cd.ctr("task", "ls", check=False)
        if out.returncode == 0:
            running = {l.split()[0] for l in out.stdout.decode().splitlines()[1:] if "RUNNING" in l}
            if want <= running:
                break
        if time.perf_counter() - t0 > 300:
            raise RuntimeError(f"{shim}: tasks not listed 300 s after the restart")
        time.sleep(0.02)
    took = time.perf_counter() - t0
    if sorted(cd.shim_pids()) != shims_before:
        raise RuntimeError(f"{shim}: shims changed across the restart")
    remove_many(cd, ids)
    return took


def bench_lifecycle(cd, runs):
    """Shim CPU per container lifecycle: `ctr run --rm /bin/true`, every
    shim process from `start` to the daemon's exit (and containerd's `shim
    delete`), counted by their exits' taskstats. runc is not counted."""
    exits = TaskExits()
    out = {"wedge": [], "go": []}
    for i in range(runs):
        for shim in (("wedge", "go") if i % 2 == 0 else ("go", "wedge")):
            cid = f"lc-{shim}-{i}"
            mark = exits.mark()
            cd.ctr("run", "--rm", "--runtime", SHIMS[shim], IMAGE, cid, "/bin/true")
            for _ in range(500):
                if not shim_running(cd, cid):
                    break
                time.sleep(0.01)
            time.sleep(0.3)
            out[shim].append(sum(ns for _, comm, _, _, ns in exits.since(mark) if comm == "containerd-shim"))
    return {"lifecycle": out}


def bench_node(cd, n, secs):
    """The node view: n idle containers per shim, Stats for each once a
    second for secs seconds (both shims' containers in one run, as one
    collector); total shim CPU over that time, and the shims' CPU at rest
    over as long."""
    ids = {shim: [f"node-{shim}-{i}" for i in range(n)] for shim in ("wedge", "go")}
    for i in range(n):
        for shim in ("wedge", "go"):
            cd.run_d(shim, ids[shim][i], "sleep", "3600")
    pids = {shim: [shim_of(cd, c) for c in ids[shim]] for shim in ids}
    targets = [f"{shim_address(cd, c)}={c}" for i in range(n) for c in (ids["wedge"][i], ids["go"][i])]
    total = lambda shim: sum(cpu_ns(p) for p in pids[shim])
    time.sleep(5)
    before = {shim: total(shim) for shim in ids}
    time.sleep(secs)
    idle = {shim: total(shim) - before[shim] for shim in ids}
    before = {shim: total(shim) for shim in ids}
    load = stats_load("node", secs, *targets)
    out = {"node": {"n": n, "secs": secs, "late_ms": load["late_ms"]}}
    for shim in ids:
        out["node"][shim] = {"busy_ns": total(shim) - before[shim], "idle_ns": idle[shim]}
    for shim in ids:
        for c in ids[shim]:
            cd.remove(c)
    return out


def med(xs):
    return statistics.median(xs)


def p95(xs):
    """The 95th percentile (nearest rank)."""
    xs = sorted(xs)
    return xs[max(0, -(-95 * len(xs) // 100) - 1)]


CRI_ROWS = (
    ("pod-start", "RunPodSandbox → container started"),
    ("execsync-true", "ExecSync `true`"),
    ("execsync-echo", "ExecSync `echo` (a probe that prints)"),
    ("stream-echo", "streaming exec `echo` (Exec → websocket → exit)"),
    ("container-stats", "ContainerStats (the shim's Stats)"),
    ("stop-container", "StopContainer (exits on SIGTERM)"),
    ("remove-pod", "StopPodSandbox + RemovePodSandbox"),
)


def bench_cri(wedge_bin, rounds, containerd_dir=None):
    """The CRI rows (bench/cri.rs): Wedge beside the Go shim of the
    containerd under test, interleaved; returns its samples."""
    env = dict(os.environ, WEDGE_SHIM_UNDER_TEST=wedge_bin)
    if containerd_dir:
        env["WEDGE_CONTAINERD_DIR"] = containerd_dir
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["cargo", "bench", "--quiet", "--bench", "cri", "--", "--rounds", str(rounds),
                        "--json", out.name], cwd=ROOT, env=env, check=True, stdin=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cri-only", action="store_true", help="only the CRI rows")
    ap.add_argument("--quick", action="store_true", help="fewer runs and smaller transfers")
    ap.add_argument("--costs-only", action="store_true",
                    help="only the cost rows: Stats, node view, start, exec storm, containerd restart")
    ap.add_argument("--out", help="raw samples (default bench/results/latest.json, or cri.json with --cri-only)")
    ap.add_argument("--wedge", required=True, help="the Wedge binary to measure")
    a = ap.parse_args()
    a.out = a.out or str(ROOT / "bench/results" / ("cri.json" if a.cri_only else "latest.json"))
    runs = 5 if a.quick else 15
    mib = 128 if a.quick else 1024
    churn_n = 20 if a.quick else 100
    raw = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": a.quick,
           "machine": f"{os.cpu_count()} cores, {round(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30)} GiB, {os.uname().release}"}
    if a.costs_only:
        cd = Containerd(a.wedge)
        try:
            raw.update(bench_costs(cd, a.quick))
        finally:
            cd.close()
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(raw, indent=1))
        print("\n".join([f"Run {raw['date']} on {raw['machine']}{' (quick)' if a.quick else ''}; medians.", "",
                         "| measure | Wedge | Go shim | Wedge/Go |", "|---|---|---|---|"] + cost_rows(raw)))
        return
    if not a.cri_only:
        cd = Containerd(a.wedge)
        try:
            order = ["wedge", "go"]
            for n, group in ((1, False), (20, False), (10, True)):
                for shim in order:
                    raw[f"mem-{n}{'-group' if group else ''}-{shim}"] = bench_memory(cd, shim, n, group)
            for key, fn in (("run", bench_run_latency),):
                for shim in order:
                    raw[f"{key}-{shim}"] = []
                for i in range(runs):
                    for shim in (order if i % 2 == 0 else order[::-1]):
                        raw[f"{key}-{shim}"].append(fn(cd, shim, i))
            for shim in order:
                cd.run_d(shim, f"exec-host-{shim}", "sleep", "3600")
                raw[f"exec-{shim}"] = []
            for i in range(runs):
                for shim in (order if i % 2 == 0 else order[::-1]):
                    raw[f"exec-{shim}"].append(bench_exec_latency(cd, shim, f"exec-host-{shim}", i))
            # Memory after many finished execs (does not grow).
            for shim in order:
                pid = [p for p in cd.shim_pids() if f"-id exec-host-{shim} " in
                       " ".join(Path(f"/proc/{p}/cmdline").read_text().split("\0"))][0]
                before = mem(pid)["rss"]
                for i in range(200 if a.quick else 1000):
                    cd.ctr("task", "exec", "--exec-id", f"many{i}", f"exec-host-{shim}", "/bin/true")
                raw[f"exec-growth-{shim}"] = {"before": before, "after": mem(pid)["rss"],
                                              "execs": 200 if a.quick else 1000}
                cd.remove(f"exec-host-{shim}")
            raw["limit"] = []
            for shim in order:
                raw[f"fifo-{shim}"] = []
                raw[f"file-{shim}"] = []
            for i in range(3 if a.quick else 5):
                raw["limit"].append(bench_limit(mib))
                for shim in (order if i % 2 == 0 else order[::-1]):
                    raw[f"fifo-{shim}"].append(bench_fifo(cd, shim, mib, i))
                    raw[f"file-{shim}"].append(bench_file(cd, shim, mib, i))
            if os.path.exists("/dev/shm/wedge-bench-limit"):
                os.unlink("/dev/shm/wedge-bench-limit")
            for shim in order:
                raw[f"burst-{shim}"] = []
            for i in range(10 if a.quick else 50):
                for shim in (order if i % 2 == 0 else order[::-1]):
                    raw[f"burst-{shim}"].append(bench_burst(cd, shim, i))
            raw.update(bench_costs(cd, a.quick))
            for shim in order:
                raw[f"churn-{shim}"] = []
            for r in range(3 if not a.quick else 1):
                for shim in (order if r % 2 == 0 else order[::-1]):
                    raw[f"churn-{shim}"].append(bench_churn(cd, shim, churn_n, 4, r))
        finally:
            cd.close()
    rounds = 6 if a.quick else 20
    raw["cri"] = [bench_cri(a.wedge, rounds)]
    newer = subprocess.run([str(ROOT / "scripts/fetch-debian"), "sid", "containerd"], check=True,
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL).stdout.decode().strip()
    raw["cri"].append(bench_cri(a.wedge, rounds, f"{newer}/usr/bin"))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(raw, indent=1))
    if a.cri_only:
        print("\n".join([f"Run {raw['date']} on {raw['machine']}."] + cri_table(raw["cri"])))
    else:
        print(table(raw, mib, churn_n))


def ratio_row(name, w, g, unit, fmt="{:.2f}"):
    """A table row: Wedge's and the Go shim's value, and their ratio."""
    ratio = w / g if g else float("nan")
    return f"| {name} | {fmt.format(w)} {unit} | {fmt.format(g)} {unit} | {ratio:.2f} |"


def table(raw, mib, churn_n):
    rows = []

    def row(*args, **kw):
        rows.append(ratio_row(*args, **kw))

    for key, label in (("mem-1", "1 container"), ("mem-20", "20 containers"), ("mem-10-group", "group of 10 in one shim")):
        w, g = raw[f"{key}-wedge"], raw[f"{key}-go"]
        for k in ("rss", "pss", "anon"):
            row(f"{label}: {k.upper()} per shim", w["per_shim"][k] / 1024, g["per_shim"][k] / 1024, "MB")
        row(f"{label}: threads per shim", w["per_shim"]["threads"], g["per_shim"]["threads"], "", "{:.0f}")
        if key == "mem-20":
            row("20 containers: total PSS", w["total"]["pss"] / 1024, g["total"]["pss"] / 1024, "MB")
    row("`ctr run --rm /bin/true`", med(raw["run-wedge"]) * 1000, med(raw["run-go"]) * 1000, "ms", "{:.0f}")
    row("exec `/bin/true`", med(raw["exec-wedge"]) * 1000, med(raw["exec-go"]) * 1000, "ms", "{:.0f}")
    for shim in ("wedge", "go"):
        eg = raw[f"exec-growth-{shim}"]
        raw[f"growth-{shim}"] = eg["after"] / eg["before"]
    row(f"RSS after {raw['exec-growth-wedge']['execs']} execs / before", raw["growth-wedge"], raw["growth-go"], "x")
    limit = med(raw["limit"])

    def complete_med(key):
        """Median seconds over the runs that delivered every byte."""
        ok = [r["s"] for r in raw[key] if r["complete"]]
        return med(ok) if ok else float("nan")

    def short(key):
        return sum(not r["complete"] for r in raw[key])

    for key, what in (("fifo", "stdout → FIFO → client"), ("file", "stdout → file:// on tmpfs")):
        w, g = complete_med(f"{key}-wedge"), complete_med(f"{key}-go")
        note = ""
        if short(f"{key}-wedge") or short(f"{key}-go"):
            note = f" (short runs excluded: Wedge {short(f'{key}-wedge')}, Go {short(f'{key}-go')} of {len(raw[f'{key}-go'])})"
        row(f"{mib} MiB {what}{note}", w, g, "s")
    rows.append(f"| limit: `dd \\| cat > /dev/shm` | {limit:.2f} s | | file/limit: Wedge {complete_med('file-wedge') / limit:.2f}, Go {complete_med('file-go') / limit:.2f} |")
    # The file row's time includes a container's start and removal; without them:
    run_w, run_g = med(raw["run-wedge"]), med(raw["run-go"])
    rows.append(f"| the file row less each shim's `ctr run --rm /bin/true` time, / limit | "
                f"{(complete_med('file-wedge') - run_w) / limit:.2f} | {(complete_med('file-go') - run_g) / limit:.2f} | |")
    bw, bg = raw["burst-wedge"], raw["burst-go"]
    rows.append(f"| 1 MiB burst just before exit, runs byte-exact | {len(bw) - short('burst-wedge')} of {len(bw)} | "
                f"{len(bg) - short('burst-go')} of {len(bg)} | |")
    row(f"churn: {churn_n} containers, 4 at a time", med(raw["churn-wedge"]), med(raw["churn-go"]), "/s")
    rows.extend(cost_rows(raw))
    head = [f"Run {raw['date']} on {raw['machine']}{' (quick)' if raw['quick'] else ''}; medians.", "",
            "| measure | Wedge | Go shim | Wedge/Go |", "|---|---|---|---|"]
    return "\n".join(head + rows + cri_table(raw.get("cri", [])))


def bench_costs(cd, quick):
    """The rows of what a node pays: Stats, the node view, `start` to
    serving, an exec storm, a containerd restart with many containers."""
    raw = bench_stats(cd, 200 if quick else 1000)
    raw.update(bench_node(cd, 20 if quick else 100, 20 if quick else 60))
    raw.update(bench_start(cd, 5 if quick else 20))
    raw.update(bench_lifecycle(cd, 5 if quick else 20))
    for shim in ("wedge", "go"):
        raw[f"storm-{shim}"] = bench_exec_storm(cd, shim, 50, 1 if quick else 3)
    groups, singles = (2, 10) if quick else (10, 100)
    raw["restart-size"] = [groups, singles]
    for shim in ("wedge", "go"):
        raw[f"restart-{shim}"] = [bench_restart(cd, shim, groups, singles)]
    return raw


def cost_rows(raw):
    """Shim CPU per Stats and the floor beside it, the node view, `start`
    to serving, the exec storm and the containerd restart."""
    if "stats-cpu-wedge" not in raw:
        return []
    rows = stats_rows(raw)
    st = raw["start"]
    start = lambda shim, f: med([f(r) for r in st[shim]])
    wall = lambda r: r["wall_us"] / 1e3
    cpu = lambda r: (r["start_cpu_us"] + r["daemon_cpu_us"]) / 1e3
    rows.append(ratio_row(f"`start` to serving: wall, spawn to the daemon's Connect answer ({len(st['wedge'])} runs)",
                          start("wedge", wall), start("go", wall), "ms", "{:.1f}"))
    rows.append(ratio_row("`start` to serving: CPU of `start` + the daemon until it answers",
                          start("wedge", cpu), start("go", cpu), "ms"))
    lc = raw["lifecycle"]
    rows.append(ratio_row("shim CPU per container lifecycle, `ctr run --rm /bin/true` (`start`, daemon, `delete`; "
                          f"{len(lc['wedge'])} runs)", med(lc["wedge"]) / 1e6, med(lc["go"]) / 1e6, "ms"))
    sw, sg = raw["storm-wedge"], raw["storm-go"]
    rows.append(ratio_row(f"50 concurrent `ctr task exec` into one container: p50 ({len(sw)} execs)",
                          med(sw) * 1e3, med(sg) * 1e3, "ms", "{:.0f}"))
    rows.append(ratio_row("50 concurrent `ctr task exec` into one container: p95",
                          p95(sw) * 1e3, p95(sg) * 1e3, "ms", "{:.0f}"))
    groups, singles = raw["restart-size"]
    rows.append(ratio_row(f"containerd SIGKILLed and restarted with {groups * 10 + singles} running containers "
                          f"({groups} groups of 10, {singles} single): until `ctr task ls` lists them all",
                          med(raw["restart-wedge"]), med(raw["restart-go"]), "s"))
    return rows


def stats_rows(raw):
    """Shim CPU per Stats, and the floor beside it."""
    w, g, f = raw["stats-cpu-wedge"] / 1e3, raw["stats-cpu-go"] / 1e3, raw["stats-floor"]
    rows = []
    if "node" in raw:
        nd = raw["node"]
        wn, gn = nd["wedge"], nd["go"]
        rows = [ratio_row(f"node view: {nd['n']} idle containers per shim, Stats for each once a second, "
                          f"{nd['secs']} s: total shim CPU", wn["busy_ns"] / 1e9, gn["busy_ns"] / 1e9, "s"),
                ratio_row(f"the same {nd['n']} containers at rest for {nd['secs']} s: total shim CPU",
                          wn["idle_ns"] / 1e9, gn["idle_ns"] / 1e9, "s", "{:.3f}")]
    return rows + [ratio_row("shim CPU per Stats (straight to the shim, as containerd sends it; cgroup v1)",
                             w, g, "µs", "{:.0f}"),
            f"| floor: read the same {f['files']} files once (open+read+close / kept open, pread) | "
            f"{f['open_ns'] / 1e3:.0f} µs / {f['pread_ns'] / 1e3:.0f} µs | | "
            f"Wedge/floor: {w * 1e3 / f['open_ns']:.2f} / {w * 1e3 / f['pread_ns']:.2f} |"]


def cri_table(runs):
    """The CRI rows: median and p95 of each path, per containerd."""
    out = []
    for run in runs:
        s = run["samples"]
        version = run["containerd"].split()[2] if len(run["containerd"].split()) > 2 else run["containerd"]
        n = len(s["execsync-true-wedge"])
        out += ["", f"Through the CRI API (containerd {version}, host-network pods, {run['rounds']} rounds; "
                f"{n} calls of each exec kind), Wedge beside the Go shim; milliseconds.", "",
                "| CRI path | Wedge median | Go median | ratio | Wedge p95 | Go p95 | ratio |",
                "|---|---|---|---|---|---|---|"]
        for key, label in CRI_ROWS:
            if f"{key}-wedge" not in s:
                continue  # a run from before the row existed
            w, g = s[f"{key}-wedge"], s[f"{key}-go"]
            out.append(f"| {label} | {med(w) * 1000:.1f} | {med(g) * 1000:.1f} | {med(w) / med(g):.2f} | "
                       f"{p95(w) * 1000:.1f} | {p95(g) * 1000:.1f} | {p95(w) / p95(g):.2f} |")
    return out


if __name__ == "__main__":
    main()
