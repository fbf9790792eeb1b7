#!/usr/bin/env python3
"""What the status page costs in memory: wharf's RSS after serving each view
1,000 times, minus its RSS before the first view.

    WHARF_BENCH_KEEP=1 cargo bench --bench status_page   # prints the cache dir
    cargo build --release
    python3 benches/status_rss.py CACHE_DIR [--start built|cold|serving]

Linux only (reads /proc/PID/status). Starts the release binary on CACHE_DIR
(which it writes to: give it a copy), with offline upstreams and the admin
listener on loopback, reads VmRSS from
/proc, requests each view 1,000 times over one keep-alive connection, reads
VmRSS again. What happens before the first reading (`--start`):

  built    (the default; fails above 2 MiB) `wharf ls` through
           the server first, so the catalog is built and sled has read every
           record once. The page's memory is then the RSS the views add plus
           the catalog's heap bytes as it counts them (`wharf_catalog_bytes`).
  cold     nothing: the first view builds the catalog, and it is the first
           time since start that anything reads every link and tag record.
           The figure then includes what sled's page cache does on that first
           read (README, "The status page"). Fails above 2 MiB.
  serving  every image pulled once through the registry port (its manifest,
           and HEAD of each blob), then a wait until the upkeep has written
           the recorded reads and RSS holds still: a mirror that has been
           serving when an operator opens the page. Reported, not checked:
           sled's own swings there are larger than the page.

Every mode then waits for RSS to hold still for 3 s, and each reading
follows a trim by the render thread (see `trim`).

Loopback only; every loop is bounded.
"""
import argparse
import concurrent.futures
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
ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json")


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


def metric(admin, name):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
    try:
        c.request("GET", "/metrics")
        for line in c.getresponse().read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    finally:
        c.close()
    raise RuntimeError(f"no {name} in /metrics")


def trim(c):
    """One view that reads no catalog, more than a second after the last:
    the render thread trims after it."""
    time.sleep(1.2)
    c.request("GET", "/api/upstreams")
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"/api/upstreams: {r.status}")
    time.sleep(0.2)


def pull_all(port, images):
    """Every image once, as a client pulls it: the manifest by tag (or
    digest), an index's manifests, and HEAD of every blob they name."""
    def pull(chunk):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        n = 0

        def get(path, method="GET", accept=None):
            nonlocal n
            c.request(method, path, headers={"Accept": accept} if accept else {})
            r = c.getresponse()
            body = r.read()
            n += 1
            return r.status, body

        for up, repo, ref in chunk:
            status, body = get(f"/v2/{up}/{repo}/manifests/{ref}", accept=ACCEPT)
            if status != 200:
                sys.exit(f"pulling {up}/{repo}:{ref}: {status}")
            m = json.loads(body)
            found = [m]
            for child in m.get("manifests", []):
                status, body = get(f"/v2/{up}/{repo}/manifests/{child['digest']}", accept=ACCEPT)
                if status == 200:
                    found.append(json.loads(body))
            for x in found:
                for blob in [x.get("config")] + x.get("layers", []):
                    if blob:
                        get(f"/v2/{up}/{repo}/blobs/{blob['digest']}", method="HEAD")
        return n

    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        n = sum(ex.map(pull, [images[i::4] for i in range(4)]))
    print(f"pulled {len(images)} images once: {n} requests in {time.monotonic() - t:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("--binary", default="target/release/wharf")
    ap.add_argument("--count", type=int, default=1000,
                    help="requests per view (the admin listener closes a connection after 300 s)")
    ap.add_argument("--start", choices=["built", "cold", "serving"], default="built")
    a = ap.parse_args()
    port, admin = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="wharf-status-rss-")
    conf = os.path.join(work, "wharf.toml")
    with open(conf, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nplain_http = true\n'
                f'admin_listen = "127.0.0.1:{admin}"\n[cache]\ndir = "{a.cache}"\n')
        for name in ("hub", "gar"):
            f.write(f'[[upstream]]\nname = "{name}"\nurl = "http://127.0.0.1:9"\n'
                    f'offline = true\nprefix = "{name}"\n')
    images = []
    if a.start == "serving":
        # Read before the server starts (then `ls` opens the cache itself).
        ls = json.loads(subprocess.run([a.binary, "ls", "--config", conf, "--json"], check=True,
                                       capture_output=True).stdout)
        images = [(r["upstream"], r["repository"], i["tag"] or i["digest"])
                  for r in ls for i in r["images"]]
    log = open(os.path.join(work, "wharf.log"), "w")
    p = subprocess.Popen([a.binary, "serve", "--config", conf], stderr=log,
                         env=dict(os.environ, WHARF_LOG="warn"))
    started = time.monotonic()
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
                c.request("GET", "/readyz")
                c.getresponse().read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("wharf did not start")
        if a.start == "built":
            subprocess.run([a.binary, "ls", "--config", conf, "--json"], check=True,
                           stdout=subprocess.DEVNULL)
        if a.start == "serving":
            pull_all(port, images)
            # The upkeep writes recorded reads every minute from start.
            time.sleep(max(0.0, 70 - (time.monotonic() - started)))
        # Start-up goes on after /readyz (its reconciliation hands its
        # scratch back when done): wait, at most a minute, for RSS to hold
        # still for 3 s.
        last, still, settled = rss_kib(p.pid), 0, False
        for _ in range(60):
            time.sleep(1)
            now = rss_kib(p.pid)
            still = still + 1 if abs(now - last) < 128 else 0
            last = now
            if still >= 3:
                settled = True
                break
        if not settled:
            print("RSS did not hold still within a minute; reading it anyway")
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
        # The render thread hands free memory back after a view (at most once
        # a second): that would also return what start-up, `ls` or the pulls
        # left, and count it against the views. So both readings come after
        # such a trim, made by a view that reads no catalog.
        trim(c)
        before = rss_kib(p.pid)
        rows = []
        for v in VIEWS:
            t = time.monotonic()
            for _ in range(a.count):
                c.request("GET", v)
                r = c.getresponse()
                body = r.read()
                if r.status != 200:
                    sys.exit(f"{v}: {r.status} {body[:200]!r}")
            rows.append((v, (time.monotonic() - t) / a.count * 1000, rss_kib(p.pid)))
        trim(c)
        after = rss_kib(p.pid)
        catalog_kib = metric(admin, "wharf_catalog_bytes") / 1024
        for v, ms, rss in rows:
            print(f"{v:28} {ms:7.2} ms/request over HTTP   RSS {rss / 1024:6.1f} MiB")
        grew = after - before
        out = {"start": a.start, "rss_before_kib": before, "rss_after_kib": after,
               "grew_kib": grew, "catalog_kib": round(catalog_kib), "requests_per_view": a.count}
        if a.start == "built":
            # The catalog was built before the first reading: count it.
            out["page_kib"] = round(grew + catalog_kib)
        print(json.dumps(out))
        if a.start == "built" and out["page_kib"] > LIMIT_KIB:
            sys.exit(f"the page's memory is {out['page_kib']} KiB (limit {LIMIT_KIB}): "
                     f"the views added {grew} KiB of RSS, the catalog holds {catalog_kib:.0f} KiB")
        if a.start == "cold" and grew > LIMIT_KIB:
            sys.exit(f"the views added {grew} KiB of RSS to a cold server (limit {LIMIT_KIB})")
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
