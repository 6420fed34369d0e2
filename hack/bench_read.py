"""Runs the read-path benchmark cases for hack/bench-read.sh (see there)."""
import json, os, re, resource, signal, socket, subprocess, sys, tempfile, time

BIN = os.environ["BENCH_BIN"]
FILE = os.environ["BENCH_FILE"]
DIR = os.path.dirname(FILE)
SECS = float(os.environ.get("BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
# Threads serving HTTP on both sides: `serve --runtime-threads N` and nginx `worker_processes N`.
HTTP_THREADS = int(os.environ.get("BENCH_HTTP_THREADS", "2"))
SIZE = os.path.getsize(FILE)
OUT = os.environ.get("BENCH_OUT")
COMMIT = os.environ.get("BENCH_COMMIT", "unknown")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cpu(cmd):
    """Run cmd to completion; return (stdout, CPU seconds of it and its children)."""
    c0 = children_cpu()
    p = subprocess.run(cmd, capture_output=True, text=True)
    cpu = children_cpu() - c0
    if p.returncode != 0:
        sys.exit(f"bench-read: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    return p.stdout, cpu


def ours(*args):
    out, cpu = run_cpu([BIN, "bench", "--file", FILE, "--seconds", str(SECS), *args])
    kv = dict(x.split("=", 1) for x in out.split())
    ios = int(kv["ios"])
    return {"iops": float(kv["iops"]), "cpu_us_per_io": cpu * 1e6 / max(ios, 1)}


def fio(*args):
    cmd = ["fio", "--name=anchor", f"--filename={FILE}", "--time_based", f"--runtime={SECS}",
           "--ramp_time=0", "--group_reporting",
           # Threads, like ours: fio's forked jobs call setsid(), and with kernel.sched_autogroup
           # each gets its own scheduler group, i.e. N times our CPU share on a busy machine.
           "--thread",
           # fio at its best: no random map to keep, no seed reset, no per-I/O clock reads for
           # latency statistics (ours keeps none either).
           "--norandommap", "--randrepeat=0", "--gtod_reduce=1",
           "--output-format=json", "--invalidate=0", *args]
    out, cpu = run_cpu(cmd)
    j = json.loads(out[out.index("{"):])
    rd = j["jobs"][0]["read"]
    return {"iops": rd["iops"], "cpu_us_per_io": cpu * 1e6 / max(rd["total_ios"], 1)}


def warm_cache():
    with open(FILE, "rb") as f:
        while f.read(8 << 20):
            pass


def fio_uring(qd_per_job, jobs, bs="4k", rw="randread"):
    return fio("--ioengine=io_uring", "--direct=1", f"--rw={rw}", f"--bs={bs}",
               f"--iodepth={qd_per_job}", f"--numjobs={jobs}")


CASES = {
    # name: (ours args, anchor callable, needs warm cache)
    "odirect-4k-rand-qd32": (["--direct", "--qd", "32", "--workers", "2"],
                             lambda: fio_uring(16, 2), False),
    "odirect-4k-rand-qd128": (["--direct", "--qd", "128", "--workers", "2"],
                              lambda: fio_uring(64, 2), False),
    "pagecache-4k-rand-x4": (["--qd", "4", "--workers", "4"],
                             lambda: fio("--ioengine=psync", "--direct=0", "--rw=randread",
                                         "--bs=4k", "--numjobs=4"), True),
    "pread-fallback-odirect-4k-x4": (["--direct", "--io-uring", "disabled", "--qd", "4", "--workers", "4"],
                                     lambda: fio("--ioengine=psync", "--direct=1", "--rw=randread",
                                                 "--bs=4k", "--numjobs=4"), False),
    "pread-fallback-cached-4k-x4": (["--io-uring", "disabled", "--qd", "4", "--workers", "4"],
                                    lambda: fio("--ioengine=psync", "--direct=0", "--rw=randread",
                                                "--bs=4k", "--numjobs=4"), True),
    "odirect-1m-seq-qd16": (["--direct", "--pattern", "seq", "--block", "1m", "--qd", "16", "--workers", "1"],
                            lambda: fio_uring(16, 1, bs="1m", rw="read"), False),
}

NGINX_OFC = "open_file_cache max=1000 inactive=60s;"
NGINX_DIRECT = "directio 4k; aio threads;"

# HTTP cases: (range bytes, wrk connections, extra `serve` flags, extra nginx location config,
# warm page cache). Both servers get HTTP_THREADS threads (runtime threads / worker processes);
# wrk runs -t2 against both.
HTTP_CASES = {
    "http-4k-range-c32": (4096, 32, [], "", True),
    "http-4k-range-c32-nginx-ofc": (4096, 32, [], NGINX_OFC, True),
    "http-4k-range-direct-c32": (4096, 32, ["--direct"], NGINX_DIRECT, False),
    "http-1m-range-c32": (1 << 20, 32, [], "", True),
    "http-4k-range-c1024": (4096, 1024, [], "", True),
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tree_cpu(pid):
    """utime+stime (s) of pid and its direct children (nginx workers), all threads."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                pids += [int(x) for x in f.read().split()]
    except FileNotFoundError:
        pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / tick


def wait_port(port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"bench-read: server exited early ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("bench-read: server did not listen")


def to_ms(value, unit):
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(port, pid, range_bytes, conns):
    lua = os.path.join(DIR, "..", f"range-{range_bytes}.lua")
    with open(lua, "w") as f:
        f.write(f"""
local blocks = {SIZE // range_bytes}
local n = 0
request = function()
  n = n + 1
  local a = ((n * 2654435761) % blocks) * {range_bytes}
  return wrk.format("GET", "/v1/files/d/data.bin", {{["Range"] = "bytes=" .. a .. "-" .. (a + {range_bytes - 1})}})
end
""")
    c0 = tree_cpu(pid)
    p = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{int(max(SECS, 1))}s", "--latency",
                        "-s", lua, f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
    cpu = tree_cpu(pid) - c0
    m = re.search(r"(\d+) requests in", p.stdout)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", p.stdout)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", p.stdout, re.M)
    if p.returncode != 0 or not m or not rps or not p99:
        sys.exit(f"bench-read: wrk failed:\n{p.stdout}\n{p.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
    if bad:
        sys.exit(f"bench-read: {bad.group(1)} non-2xx responses:\n{p.stdout}")
    errs = re.search(r"Socket errors: (.*)", p.stdout)
    if errs:
        sys.exit(f"bench-read: socket errors ({errs.group(1)}):\n{p.stdout}")
    reqs = max(int(m.group(1)), 1)
    r = {"iops": float(rps.group(1)), "cpu_us_per_io": cpu * 1e6 / reqs,
         "p99_ms": to_ms(*p99.groups())}
    if range_bytes >= 1 << 20:
        mib = reqs * range_bytes / (1 << 20)
        r = {"mib_s": float(rps.group(1)) * range_bytes / (1 << 20),
             "cpu_us_per_mib": cpu * 1e6 / mib, "p99_ms": r["p99_ms"]}
    return r


def http_ours(range_bytes, conns, flags):
    port = free_port()
    proc = subprocess.Popen([BIN, "serve", "--allow-unauthenticated", "--data-dir", f"d={DIR}", "--listen", "127.0.0.1",
                             "--port", str(port), "--workers", "2",
                             "--runtime-threads", str(HTTP_THREADS),
                             "--max-connections", "4096", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        return wrk(port, proc.pid, range_bytes, conns)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def http_nginx(range_bytes, conns, location_extra):
    port = free_port()
    pre = tempfile.mkdtemp(prefix="ringmaster-nginx-")
    conf = os.path.join(pre, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes {HTTP_THREADS};
worker_rlimit_nofile 16384;
pid {pre}/nginx.pid;
error_log {pre}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {pre}/body; proxy_temp_path {pre}/proxy; fastcgi_temp_path {pre}/fcgi;
  uwsgi_temp_path {pre}/uwsgi; scgi_temp_path {pre}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /v1/files/d/ {{ alias {DIR}/; {location_extra} }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", pre, "-c", conf, "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        return wrk(port, proc.pid, range_bytes, conns)
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=30)


def drop_cache():
    """Evict the file from the page cache (POSIX_FADV_DONTNEED), for the from-disk rows."""
    fd = os.open(FILE, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def load():
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def emit(lines, line):
    print(line, flush=True)
    lines.append(line)


# Lower is better for these; the ratio is still ours/anchor.
LOWER_BETTER = {"cpu_us_per_io", "cpu_us_per_mib", "p99_ms"}


def main():
    # 1024-connection rows need more than the usual 1024 fds (wrk and both servers inherit this).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 16384)), hard))
    wanted = os.environ.get("BENCH_CASES", "").split() or list(CASES) + list(HTTP_CASES)
    lines = []
    uname = os.uname()
    emit(lines, f"# commit={COMMIT} date={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                f"cpus={os.cpu_count()} kernel={uname.release} file={SIZE >> 20}MiB "
                f"seconds={SECS:g} rounds={ROUNDS} http_threads={HTTP_THREADS}")
    for case in wanted:
        if case not in CASES and case not in HTTP_CASES:
            sys.exit(f"bench-read: unknown case {case!r}: use one of {' '.join(list(CASES) + list(HTTP_CASES))}")
        emit(lines, f"# {case}: load before {load()}")
        rounds = []
        for r in range(ROUNDS):
            if case in HTTP_CASES:
                rb, conns, flags, nginx_extra, warm = HTTP_CASES[case]
                pair = [("ours", lambda: http_ours(rb, conns, flags)),
                        ("anchor", lambda: http_nginx(rb, conns, nginx_extra))]
            else:
                args, anchor, warm = CASES[case]
                pair = [("ours", lambda a=args: ours(*a)), ("anchor", anchor)]
            if r % 2:
                pair.reverse()
            got = {}
            for who, fn in pair:
                if warm:
                    warm_cache()
                elif case in HTTP_CASES:
                    drop_cache()
                got[who] = fn()
            rounds.append(got)
            parts = [f"{k} ours={got['ours'][k]:.2f} anchor={got['anchor'][k]:.2f} "
                     f"ratio={got['ours'][k] / got['anchor'][k]:.2f}" for k in got["ours"]]
            emit(lines, f"#   round {r + 1} ({pair[0][0]} first, load {load()}): " + "; ".join(parts))
        for k in rounds[0]["ours"]:
            o = sum(x["ours"][k] for x in rounds) / len(rounds)
            a = sum(x["anchor"][k] for x in rounds) / len(rounds)
            ratios = [x["ours"][k] / x["anchor"][k] for x in rounds]
            better = "lower is better" if k in LOWER_BETTER else "higher is better"
            emit(lines, f"{case}/{k}: ours={o:.2f} anchor={a:.2f} ratio={o / a:.2f} "
                        f"rounds=[{', '.join(f'{x:.2f}' for x in ratios)}] "
                        f"spread={min(ratios):.2f}-{max(ratios):.2f} ({better})")
        emit(lines, f"# {case}: load after {load()}")
    if OUT:
        with open(OUT, "w") as f:
            f.write("\n".join(lines) + "\n")


main()
