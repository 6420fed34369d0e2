"""Runs the read-path benchmark cases for hack/bench-read.sh (see there)."""
import json, os, re, resource, signal, socket, subprocess, sys, tempfile, time

BIN = os.environ["BENCH_BIN"]
FILE = os.environ["BENCH_FILE"]
DIR = os.path.dirname(FILE)
SECS = float(os.environ.get("BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
SIZE = os.path.getsize(FILE)
OUT = os.environ.get("BENCH_OUT")


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
    return float(kv["iops"]), cpu * 1e6 / max(ios, 1)


def fio(*args):
    cmd = ["fio", "--name=anchor", f"--filename={FILE}", "--time_based", f"--runtime={SECS}",
           "--ramp_time=0", "--group_reporting", "--output-format=json", "--invalidate=0", *args]
    out, cpu = run_cpu(cmd)
    j = json.loads(out[out.index("{"):])
    rd = j["jobs"][0]["read"]
    return rd["iops"], cpu * 1e6 / max(rd["total_ios"], 1)


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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tree_cpu(pid):
    """utime+stime (s) of pid and its direct children (nginx workers)."""
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


def wrk(port, pid):
    lua = os.path.join(DIR, "..", "range.lua")
    with open(lua, "w") as f:
        f.write(f"""
local blocks = {SIZE // 4096}
local n = 0
request = function()
  n = n + 1
  local a = ((n * 2654435761) % blocks) * 4096
  return wrk.format("GET", "/v1/files/d/data.bin", {{["Range"] = "bytes=" .. a .. "-" .. (a + 4095)}})
end
""")
    c0 = tree_cpu(pid)
    p = subprocess.run(["wrk", "-t2", "-c32", f"-d{int(max(SECS, 1))}s", "-s", lua,
                        f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
    cpu = tree_cpu(pid) - c0
    m = re.search(r"(\d+) requests in", p.stdout)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", p.stdout)
    if p.returncode != 0 or not m or not rps:
        sys.exit(f"bench-read: wrk failed:\n{p.stdout}\n{p.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
    if bad:
        sys.exit(f"bench-read: {bad.group(1)} non-2xx responses:\n{p.stdout}")
    return float(rps.group(1)), cpu * 1e6 / max(int(m.group(1)), 1)


def http_ours():
    port = free_port()
    proc = subprocess.Popen([BIN, "serve", "--data-dir", f"d={DIR}", "--listen", "127.0.0.1",
                             "--port", str(port), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        return wrk(port, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def http_nginx():
    port = free_port()
    pre = tempfile.mkdtemp(prefix="ringmaster-nginx-")
    conf = os.path.join(pre, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 2;
pid {pre}/nginx.pid;
error_log {pre}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {pre}/body; proxy_temp_path {pre}/proxy; fastcgi_temp_path {pre}/fcgi;
  uwsgi_temp_path {pre}/uwsgi; scgi_temp_path {pre}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /v1/files/d/ {{ alias {DIR}/; }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", pre, "-c", conf, "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        return wrk(port, proc.pid)
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=30)


def main():
    wanted = os.environ.get("BENCH_CASES", "").split() or list(CASES) + ["http-4k-range-wrk-c32"]
    lines = []
    for case in wanted:
        acc = {"ours": [], "anchor": []}
        for r in range(ROUNDS):
            if case.startswith("http"):
                pair = [("ours", http_ours), ("anchor", http_nginx)]
                warm = True
            else:
                args, anchor, warm = CASES[case]
                pair = [("ours", lambda a=args: ours(*a)), ("anchor", anchor)]
            if r % 2:
                pair.reverse()
            for who, fn in pair:
                if warm:
                    warm_cache()
                acc[who].append(fn())
        mean = lambda xs, i: sum(x[i] for x in xs) / len(xs)
        oi, ai = mean(acc["ours"], 0), mean(acc["anchor"], 0)
        oc, ac = mean(acc["ours"], 1), mean(acc["anchor"], 1)
        for l in (f"{case}/iops: ours={oi:.0f} anchor={ai:.0f} ratio={oi / ai:.2f}",
                  f"{case}/cpu_us_per_io: ours={oc:.2f} anchor={ac:.2f} ratio={oc / ac:.2f}"):
            print(l, flush=True)
            lines.append(l)
    if OUT:
        with open(OUT, "w") as f:
            f.write("\n".join(lines) + "\n")


main()
