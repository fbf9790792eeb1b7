#!/usr/bin/env python3
"""What the status page costs in memory: wharf's RSS after serving each view
1,000 times, minus its RSS before the first view.

    WHARF_BENCH_KEEP=1 cargo bench --bench status_page   # prints the cache dir
    cargo build --release
    python3 benches/status_rss.py CACHE_DIR [--binary target/release/wharf]

Linux only (reads /proc/PID/status).

Starts the release binary on that cache (offline upstreams, admin listener on
loopback), reads VmRSS from /proc, requests each view 1,000 times over one
keep-alive connection, reads VmRSS again. Fails above 2 MiB. Loopback only;
the loops are bounded.
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

VIEWS = ["/", "/upstreams/", "/images/", "/images/?page=8", "/images/?q=service-12",
         "/sync/", "/problems/", "/api/overview", "/api/images", "/api/upstreams"]
LIMIT_KIB = 2048


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("--binary", default="target/release/wharf")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--after-ls", action="store_true",
                    help="run `wharf ls` through the server first, so the catalog the views read "
                         "is built before the first reading: what remains is the views' own cost")
    a = ap.parse_args()
    port, admin = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="wharf-status-rss-")
    conf = os.path.join(work, "wharf.toml")
    with open(conf, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nplain_http = true\n'
                f'admin_listen = "127.0.0.1:{admin}"\n[cache]\ndir = "{a.cache}"\n'
                '[[upstream]]\nname = "hub"\nurl = "http://127.0.0.1:9"\noffline = true\n'
                '[[upstream]]\nname = "gar"\nurl = "http://127.0.0.1:9"\noffline = true\n')
    log = open(os.path.join(work, "wharf.log"), "w")
    p = subprocess.Popen([a.binary, "serve", "--config", conf], stderr=log,
                         env=dict(os.environ, RUST_LOG="warn"))
    try:
        c = None
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
                c.request("GET", "/readyz")
                c.getresponse().read()
                break
            except OSError:
                c = None
                time.sleep(0.1)
        if c is None:
            sys.exit("wharf did not start")
        if a.after_ls:
            subprocess.run([a.binary, "ls", "--config", conf, "--json"], check=True,
                           stdout=subprocess.DEVNULL)
        time.sleep(1)
        before = rss_kib(p.pid)
        rows = []
        for v in VIEWS:
            t = time.monotonic()
            for _ in range(a.count):
                c.request("GET", v)
                r = c.getresponse()
                body = r.read()
                assert r.status == 200, (v, r.status, body[:200])
            rows.append((v, (time.monotonic() - t) / a.count * 1000, rss_kib(p.pid)))
        after = rss_kib(p.pid)
        for v, ms, rss in rows:
            print(f"{v:28} {ms:7.2} ms/request over HTTP   RSS {rss / 1024:6.1f} MiB")
        grew = after - before
        print(json.dumps({"rss_before_kib": before, "rss_after_kib": after, "grew_kib": grew,
                          "requests_per_view": a.count, "after_ls": a.after_ls}))
        if grew > LIMIT_KIB:
            sys.exit(f"the page added {grew} KiB of RSS (limit {LIMIT_KIB})")
    finally:
        p.terminate()
        p.wait(timeout=30)


if __name__ == "__main__":
    main()
