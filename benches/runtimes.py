"""The `runtime` group of benches/compare.py (issue 17): an image pull as a
node does it, by the real runtimes, through wharf and straight from the
upstream.

  ctr     containerd 1.6 on the host with a private root, `ctr images pull
          --hosts-dir` (hosts.toml: the mirror, and a dead loopback port as
          `server` so nothing falls back to a real registry); over TLS
          (wharf's auto CA as `ca =`) and over plain HTTP on loopback, as a
          GKE node reaches a mirror on the node. Before every pull
          containerd is stopped and its root and state deleted: content
          store and snapshots start empty.
  docker  dockerd 20.10 in a network namespace with only `lo` (no route
          out: its fallback to Docker Hub goes nowhere), `registry-mirrors`
          https://198.18.0.1:5000 (non-loopback, so dockerd verifies TLS),
          relayed by socat to the server being measured on the host's
          loopback, the CAs in certs.d/198.18.0.1:5000/; overlay2. Before
          every pull the image is removed (`docker rmi`), which deletes its
          layers: dockerd 20.10 keeps no other copy.

Images: library/bench:1 (busybox, 1 MiB and 512 MiB random layers) and
library/many:1 (40 layers of 1-8 MiB, tests/fixtures/build-images.sh).
Modes: cold through wharf (a fresh wharf, empty cache), warm through wharf
(a wharf that already holds everything), direct from the upstream over the
same transport (distribution over TLS for the TLS rows, plain for the
plain rows). The wharf of a TLS row fetches from the TLS upstream, that of
a plain row from the plain one; both serve the same storage.

What is timed: the whole pull; apart from it, the fetch (ctr: until it
prints "unpacking", it unpacks after fetching everything; dockerd: until
its last "Download complete", it extracts each layer as soon as that and
the layers below it are there, so the rest is only the extraction left
after the last byte). The upstream's bytes per cold (and direct) pull come
from its access log, per blob; CPU seconds (from /proc) of the server
pulled from and, cold, of the upstream behind wharf: everything shares the
machine's cores, so a cold pull through any mirror on the same machine
pays for a second hop that a direct pull does not.
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

SITE_IP = "198.18.0.1"  # dockerd's mirror address inside its namespace
SITE_PORT = 5000
DEAD = "http://127.0.0.1:1"  # hosts.toml `server`: nothing listens there
IMAGES = [("big", "library/bench", "1"), ("many", "library/many", "1")]
CASES = [("ctr", "tls"), ("ctr", "plain"), ("docker", "tls")]
MODES = ["cold", "warm", "direct"]
ACCEPT = ("application/vnd.oci.image.manifest.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def check(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def quiet(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def wait_for(what, ok, secs=60):
    deadline = time.monotonic() + secs
    while not ok():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def stop_group(proc, grace=20):
    """SIGTERM to a process we started in its own session (and its
    children), SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def timed_lines(cmd, env=None):
    """Runs cmd; returns (seconds, [(seconds since start, line)]) with each
    line of its output stamped as it arrived. Failure is fatal."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    lines = [(time.monotonic() - t0, raw.decode(errors="replace")) for raw in p.stdout]
    p.wait()
    total = time.monotonic() - t0
    if p.returncode != 0:
        text = "".join(l for _, l in lines)[-3000:]
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{text}")
    return total, lines


def unmount_under(path):
    """Unmounts whatever is still mounted below `path` (deepest first)."""
    with open("/proc/self/mountinfo") as f:
        points = [l.split()[4] for l in f]
    for p in sorted((p for p in points if p.startswith(str(path) + "/")), key=len, reverse=True):
        quiet(["umount", "-l", p])


def blob_bytes(logfile, offset, repo):
    """Bytes distribution's access log says it sent per blob of `repo`
    since `offset` (combined format: the size is what was written)."""
    with open(logfile, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    sent = {}
    pat = rf'"GET /v2/{re.escape(repo)}/blobs/(sha256:[0-9a-f]{{64}})[^ ]* HTTP/[\d.]+" \d+ (\d+)'
    for m in re.finditer(pat, text):
        sent[m.group(1)] = sent.get(m.group(1), 0) + int(m.group(2))
    return sent


# ---------------------------------------------------------------- runtimes


class Containerd:
    """containerd with private root, state and socket under `dir`, the CRI
    plugin off; `fresh()` restarts it on an empty root."""

    def __init__(self, dir):
        self.dir, self.sock, self.proc = dir, dir / "containerd.sock", None
        dir.mkdir(parents=True, exist_ok=True)
        (dir / "config.toml").write_text(
            f'version = 2\nroot = "{dir}/root"\nstate = "{dir}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n')

    def fresh(self):
        self.stop()
        for sub in ("root", "state"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        out = open(self.dir / "containerd.log", "ab")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.dir / "config.toml")],
                                     stdout=out, stderr=out, start_new_session=True)
        wait_for("containerd's socket", lambda: self.proc.poll() is None and
                 quiet(["ctr", "-a", str(self.sock), "version"]).returncode == 0, 30)

    def stop(self):
        stop_group(self.proc)
        self.proc = None
        unmount_under(self.dir)

    def ctr(self, *args):
        return ["ctr", "-a", str(self.sock), "-n", "bench"] + list(args)

    def pull(self, hosts, ref):
        """(total, fetch) seconds of `ctr images pull`: ctr 1.6 fetches
        everything, prints "unpacking ...", then unpacks."""
        total, lines = timed_lines(self.ctr("images", "pull", "--hosts-dir", str(hosts), ref))
        fetch = next((t for t, l in lines if l.startswith("unpacking ")), None)
        if fetch is None:
            raise SystemExit(f"ctr pull {ref}: no 'unpacking' line")
        return total, fetch


def hosts_dir(dir, url, ca):
    """dir/docker.io/hosts.toml: `url` for pull and resolve, trusting `ca`."""
    d = dir / "docker.io"
    d.mkdir(parents=True, exist_ok=True)
    ca_line = f'  ca = "{ca}"\n' if ca else ""
    (d / "hosts.toml").write_text(f'server = "{DEAD}"\n[host."{url}"]\n'
                                  f'  capabilities = ["pull", "resolve"]\n{ca_line}')
    return dir


class Dockerd:
    """dockerd in a namespace of its own with only `lo` (127.0.0.1 and
    198.18.0.1), as tests/it/harness/dockerd.rs runs it; `point()` aims
    the mirror address at a port on the host's loopback."""

    def __init__(self, dir):
        self.dir, self.ns = dir, f"wharf-bench-{os.urandom(3).hex()}"
        self.proc = self.relay_in = self.relay_out = None
        self.sock = dir / "relay.sock"
        self.certs = dir / f"etc-docker/certs.d/{SITE_IP}:{SITE_PORT}"
        self.has_ns = False

    def start(self):
        dir = self.dir
        self.certs.mkdir(parents=True)
        check(["ip", "netns", "add", self.ns])
        self.has_ns = True
        check(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        check(["ip", "-n", self.ns, "addr", "add", f"{SITE_IP}/32", "dev", "lo"])
        self.relay_in = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "socat",
             f"TCP-LISTEN:{SITE_PORT},bind={SITE_IP},fork,reuseaddr",
             f"UNIX-CONNECT:{self.sock}"], stderr=subprocess.DEVNULL, start_new_session=True)
        d = dir
        (dir / "daemon.json").write_text(json.dumps({
            "data-root": f"{d}/data", "exec-root": f"{d}/exec", "pidfile": f"{d}/docker.pid",
            "hosts": [f"unix://{d}/docker.sock"], "iptables": False, "ip-masq": False,
            "ip6tables": False, "bridge": "none", "storage-driver": "overlay2",
            "registry-mirrors": [f"https://{SITE_IP}:{SITE_PORT}"]}))
        out = open(dir / "dockerd.log", "ab")
        # GODEBUG: Go's HTTP/2 client logs its connections; nothing if none.
        env = dict(os.environ, GODEBUG="http2debug=1")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", "unshare", "-m", "--propagation",
             "private", "sh", "-c",
             f"mount --bind {d}/etc-docker /etc/docker && exec dockerd --config-file {d}/daemon.json"],
            stdout=out, stderr=out, env=env, start_new_session=True)
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{d}/docker.sock",
                        DOCKER_CONFIG=str(d / "client"))
        wait_for("dockerd", lambda: self.proc.poll() is None and
                 quiet(["docker", "version"], env=self.env).returncode == 0, 60)

    def point(self, port, cas):
        """The mirror address now reaches 127.0.0.1:port; dockerd trusts
        `cas` for it (it reads certs.d on every pull)."""
        stop_group(self.relay_out, 5)
        for f in self.certs.glob("*.crt"):
            f.unlink()
        for i, ca in enumerate(cas):
            shutil.copy(ca, self.certs / f"ca{i}.crt")
        if self.sock.exists():
            self.sock.unlink()
        self.relay_out = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self.sock},fork,unlink-early", f"TCP:127.0.0.1:{port}"],
            stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for("the relay's socket", self.sock.exists, 10)

    def docker(self, *args):
        return subprocess.run(["docker"] + list(args), env=self.env, capture_output=True, text=True)

    def empty(self):
        """No image and no layer left."""
        ids = self.docker("images", "-aq").stdout.split()
        if ids:
            r = self.docker("rmi", "-f", *set(ids))
            if r.returncode != 0:
                raise SystemExit(f"docker rmi: {r.stderr}")
        layers = self.dir / "data/overlay2"
        left = [p for p in layers.iterdir() if p.name != "l"] if layers.exists() else []
        if left:
            raise SystemExit(f"dockerd kept {len(left)} layers after rmi")

    def pull(self, ref):
        """(total, fetch) seconds of `docker pull`; fetch: the last
        "Download complete" (the output is line by line without a tty)."""
        total, lines = timed_lines(["docker", "pull", ref], env=self.env)
        done = [t for t, l in lines if "Download complete" in l]
        return total, (max(done) if done else None)

    def http2_lines(self):
        text = (self.dir / "dockerd.log").read_text(errors="replace")
        return [l for l in text.splitlines() if "http2:" in l]

    def close(self):
        stop_group(self.proc, 30)  # SIGTERM: dockerd stops its containerd
        for p in (self.relay_out, self.relay_in):
            stop_group(p, 5)
        if self.has_ns:
            # What dockerd left behind (a shim): by PID, then the namespace.
            r = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            quiet(["ip", "netns", "del", self.ns])
            self.has_ns = False
        unmount_under(self.dir)


# ---------------------------------------------------------------- the group


class Runtimes:
    """Everything the runtime group runs beside compare.py's servers: a TLS
    upstream on the plain upstream's storage, warm wharfs (plain and TLS),
    containerd, dockerd in its namespace. `close()` undoes it all."""

    def __init__(self, work, start, servers, Server, wharf_bin, env, free_port):
        self.work, self.start, self.servers = work / "rt", start, servers
        self.Server, self.wharf_bin, self.env, self.free_port = Server, wharf_bin, env, free_port
        self.ctd = self.dockerd = None
        self.protocols = {}
        self.n = 0

    def setup(self, images, upstream, up_storage):
        """Pushes library/many:1, starts the rest, warms the warm wharfs
        (a ctr pull of each image), and asks what ctr speaks over TLS."""
        self.work.mkdir()
        w = self.work
        # A CA of our own for the TLS upstream (rustls wants a CA, not a
        # self-signed leaf), the leaf valid for both addresses.
        self.ca = w / "bench-ca.crt"
        check(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", str(w / "bench-ca.key"), "-out", str(self.ca), "-days", "2",
               "-subj", "/CN=wharf bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign"], capture_output=True)
        check(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
               "-keyout", str(w / "up.key"), "-out", str(w / "up.csr"), "-subj", "/CN=upstream"],
              capture_output=True)
        (w / "up.ext").write_text(f"subjectAltName=IP:127.0.0.1,IP:{SITE_IP}\n"
                                  "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        check(["openssl", "x509", "-req", "-in", str(w / "up.csr"), "-CA", str(self.ca),
               "-CAkey", str(w / "bench-ca.key"), "-CAcreateserial", "-out", str(w / "up.crt"),
               "-days", "2", "-extfile", str(w / "up.ext")], capture_output=True)
        check(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{images}/oci:many",
               f"docker://127.0.0.1:{upstream.port}/library/many:1"])
        port = self.free_port()
        (w / "up-tls.yml").write_text(
            "version: 0.1\nlog: {level: error, accesslog: {disabled: false}}\n"
            f"storage: {{filesystem: {{rootdirectory: {up_storage}}}, "
            "cache: {blobdescriptor: inmemory}}\n"
            f"http: {{addr: 127.0.0.1:{port}, tls: {{certificate: {w / 'up.crt'}, "
            f"key: {w / 'up.key'}}}}}\n")
        up_tls = self.start(self.Server(
            "upstream-tls", ["docker-registry", "serve", str(w / "up-tls.yml")], port,
            w / "upstream-tls.log", scheme="https"))
        self.up = {"plain": upstream, "tls": up_tls}
        self.images = {}
        for name, repo, tag in IMAGES:
            req = urllib.request.Request(upstream.url(f"/v2/{repo}/manifests/{tag}"),
                                         headers={"Accept": ACCEPT})
            m = json.load(urllib.request.urlopen(req))
            blobs = {d["digest"]: d["size"] for d in [m["config"]] + m["layers"]}
            self.images[name] = (repo, tag, blobs)
            log(f"runtime: {name} = {repo}:{tag}, {len(m['layers'])} layers, "
                f"{sum(blobs.values()) / 2**20:.0f} MiB")
        self.ctd = Containerd(w / "containerd")
        self.dockerd = Dockerd(w / "dockerd")
        self.dockerd.start()
        self.warm = {}
        for tr in ("plain", "tls"):
            self.warm[tr] = self.start(self.new_wharf(f"warm-{tr}", tr))
            for name in self.images:
                self.ctr_pull(self.warm[tr], tr, name)
        time.sleep(2)  # let the fills finish their fsync
        self.protocols = self.probe_protocols()

    def new_wharf(self, tag, tr):
        """A wharf over `tr` with an empty cache, fetching from the upstream
        of the same transport."""
        cache = self.work / f"wharf-{tag}"
        shutil.rmtree(cache, ignore_errors=True)
        port, up = self.free_port(), self.up[tr]
        server = ('plain_http = true\n' if tr == "plain" else
                  f'[server.tls]\nnames = ["127.0.0.1", "{SITE_IP}", "localhost"]\n')
        ca = f'ca_file = "{self.ca}"\n' if tr == "tls" else ""
        conf = self.work / f"wharf-{tag}.toml"
        conf.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n{server}'
                        f'[cache]\ndir = "{cache}"\n'
                        f'[[upstream]]\nname = "hub"\nurl = "{up.url("")}"\n'
                        f'aliases = ["docker.io"]\ndefault = true\n{ca}')
        s = self.Server("wharf-tls" if tr == "tls" else "wharf",
                        [self.wharf_bin, "serve", "--config", str(conf)], port,
                        self.work / f"wharf-{tag}.log", scheme="https" if tr == "tls" else "http",
                        env=self.env)
        s.cache = cache
        return s

    def ca_of(self, srv):
        return srv.cache / "tls/ca.crt" if hasattr(srv, "cache") else self.ca

    def ctr_hosts(self, srv, tr):
        self.n += 1
        return hosts_dir(self.work / f"hosts{self.n}", srv.url(""),
                         self.ca_of(srv) if tr == "tls" else None)

    def ctr_pull(self, srv, tr, name):
        repo, tag, _ = self.images[name]
        self.ctd.fresh()
        hosts = self.ctr_hosts(srv, tr)
        out = self.ctd.pull(hosts, f"docker.io/{repo}:{tag}")
        shutil.rmtree(hosts)
        return out

    def probe_protocols(self):
        """What ctr and dockerd speak over TLS: `ctr content fetch
        --http-dump --metadata-only` (manifests and config) through the warm
        TLS wharf and from the TLS upstream, the responses' status lines
        ("HTTP/2.0 200 OK" or "HTTP/1.1 200 OK")."""
        found = {}
        for who, srv in (("wharf", self.warm["tls"]), ("upstream", self.up["tls"])):
            self.ctd.fresh()
            hosts = self.ctr_hosts(srv, "tls")
            r = check(self.ctd.ctr("content", "fetch", "--metadata-only", "--http-dump",
                                   "--hosts-dir", str(hosts), "docker.io/library/bench:1"),
                      capture_output=True, text=True, errors="replace")
            protos = sorted(set(re.findall(r'msg="(HTTP/[\d.]+) \d{3}', r.stdout + r.stderr)))
            found[f"ctr → {who} over TLS"] = protos
            log(f"runtime: ctr → {who} over TLS answered with {protos}")
        self.ctd.stop()
        return found

    def round(self, rnd, rec):
        cases = [(rt, tr, img) for rt, tr in CASES for img in self.images]
        for rt, tr, img in rotate(cases, rnd):
            for mode in rotate(MODES, rnd):
                self.one(rt, tr, img, mode, rec)

    def one(self, rt, tr, img, mode, rec):
        repo, tag, blobs = self.images[img]
        if mode == "cold":
            srv = self.start(self.new_wharf(f"cold-{tr}", tr))
            time.sleep(0.2)
        else:
            srv = self.warm[tr] if mode == "warm" else self.up[tr]
        up = self.up[tr]
        cpu0 = (srv.cpu(), up.cpu())
        if rt == "ctr":
            self.ctd.fresh()
            hosts = self.ctr_hosts(srv, tr)
            off = up.logfile.stat().st_size
            total, fetch = self.ctd.pull(hosts, f"docker.io/{repo}:{tag}")
            shutil.rmtree(hosts)
            cpu1 = (srv.cpu(), up.cpu())
            self.ctd.stop()
        else:
            self.dockerd.point(srv.port, [self.ca_of(srv)])
            self.dockerd.empty()
            off = up.logfile.stat().st_size
            total, fetch = self.dockerd.pull(f"{repo.removeprefix('library/')}:{tag}")
            cpu1 = (srv.cpu(), up.cpu())
            self.dockerd.empty()
        key = f"{rt}/{tr}/{img}/{mode}"
        rec("rt_pull_s", key, total)
        # CPU of the server the runtime pulls from (wharf, or the upstream
        # direct) and, cold, of the upstream behind wharf.
        rec("rt_server_cpu_s", key, cpu1[0] - cpu0[0])
        if mode == "cold":
            rec("rt_upstream_cpu_s", key, cpu1[1] - cpu0[1])
        if fetch is not None:
            rec("rt_fetch_s", key, fetch)
            rec("rt_unpack_s", key, total - fetch)
        if mode != "warm":
            time.sleep(0.3)  # the access log line lands after the response
            sent = blob_bytes(up.logfile, off, repo)
            rec("rt_upstream_x", key, sum(sent.values()) / sum(blobs.values()))
            rec("rt_blob_worst_x", key, max(sent.get(d, 0) / s for d, s in blobs.items()))
            missing = [d for d in blobs if sent.get(d, 0) == 0]
            if missing:  # a store that was not empty, or a log we misread
                log(f"runtime: {key}: the upstream sent nothing for {len(missing)} blobs")
        log(f"runtime: {key}: {total:.2f} s" + (f" (fetch {fetch:.2f} s)" if fetch else ""))
        if mode == "cold":
            srv.stop()
            self.servers.remove(srv)
            shutil.rmtree(srv.cache, ignore_errors=True)

    def notes(self):
        """What each client spoke over TLS, for the report: ctr's own dump,
        dockerd's Go HTTP/2 log, and the TLS upstream's access log (by
        client: ctr and dockerd direct, wharf in front)."""
        h2 = self.dockerd.http2_lines() if self.dockerd else []
        notes = dict(self.protocols)
        notes["dockerd → wharf or upstream (GODEBUG=http2debug=1)"] = [
            f"{len(h2)} http2 log lines" + (f", e.g. {h2[0][:120]}" if h2 else
                                            ": no HTTP/2 connection was made")]
        if "tls" in self.up:
            seen = {}
            text = self.up["tls"].logfile.read_text(errors="replace")
            for proto, agent in re.findall(r'"[A-Z]+ \S+ (HTTP/[\d.]+)" \d+ \d+ "[^"]*" "([^"]*)"',
                                           text):
                who = ("ctr" if agent.startswith("containerd/") else
                       "dockerd" if "docker/" in agent else "wharf" if "wharf" in agent else agent)
                seen.setdefault(f"{who} → TLS upstream (its access log)", set()).add(proto)
            notes.update({k: sorted(v) for k, v in seen.items()})
        return notes

    def close(self, keep_logs=None):
        """Stops what setup started; with `keep_logs`, copies the logs
        there first (wharf's, the upstreams' access logs, the daemons')."""
        if self.dockerd is not None:
            self.dockerd.close()
        if self.ctd is not None:
            self.ctd.stop()
        if keep_logs is not None and self.work.exists():
            shutil.rmtree(keep_logs, ignore_errors=True)
            keep_logs.mkdir(parents=True)
            logs = list(self.work.glob("*.log")) + list(self.work.glob("*/*.log"))
            if "plain" in self.up:
                logs.append(self.up["plain"].logfile)
            for f in logs:
                shutil.copy(f, keep_logs / f.name)


def rotate(items, i):
    """`items` rotated by round `i`: each goes first in turn (compare.py too)."""
    i %= len(items)
    return items[i:] + items[:i]


# ---------------------------------------------------------------- report

MEASURES = [("rt_pull_s", "pull", "s"), ("rt_fetch_s", "  fetch", "s"),
            ("rt_unpack_s", "  unpack (after fetch)", "s"),
            ("rt_server_cpu_s", "CPU of the server pulled from", "s"),
            ("rt_upstream_cpu_s", "  CPU of the upstream behind wharf", "s"),
            ("rt_upstream_x", "upstream bytes / image", "x"),
            ("rt_blob_worst_x", "  worst blob", "x")]
LABELS = {("ctr", "tls"): "ctr, TLS", ("ctr", "plain"): "ctr, plain HTTP",
          ("docker", "tls"): "docker, TLS (mirror)"}


def report(R, fmt, notes):
    """The runtime group's table and its targets."""
    def vals(m, key):
        return R.get(m, {}).get(key)

    def spread(m, key):
        v = vals(m, key)
        if not v:
            return "—"
        return f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))})"

    def med(m, key):
        v = vals(m, key)
        return statistics.median(v) if v else None

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "—"

    n = max((len(v) for v in R.get("rt_pull_s", {}).values()), default=0)
    lines = ["", f"Runtime pulls (issue 17): median (min–max) of {n} rounds, the "
             "runtime's store empty before each pull; big = library/bench:1 (busybox, 1 MiB, "
             "512 MiB), many = library/many:1 (40 layers of 1–8 MiB, 199 MiB); upstream bytes "
             "per cold or direct pull", "",
             "| runtime, transport | image | measure | unit | cold via wharf | warm via wharf "
             "| direct from upstream | cold/direct | warm/direct |", "|---|---|---|---|---|---|---|---|---|"]
    images = sorted({k.split("/")[2] for k in R.get("rt_pull_s", {})})
    for rt, tr in CASES:
        for img in images:
            for m, label, unit in MEASURES:
                keys = [f"{rt}/{tr}/{img}/{mode}" for mode in MODES]
                if not any(vals(m, k) for k in keys):
                    continue
                c, w, d = (med(m, k) for k in keys)
                lines.append(f"| {LABELS[(rt, tr)]} | {img} | {label} | {unit} | "
                             + " | ".join(spread(m, k) for k in keys)
                             + f" | {ratio(c, d)} | {ratio(w, d) if m != 'rt_upstream_x' else '—'} |")
    t = []
    for rt, tr in CASES:
        for img in images:
            k = f"{rt}/{tr}/{img}/"
            c, w, d = (med("rt_pull_s", k + mode) for mode in MODES)
            worst = max(vals("rt_blob_worst_x", k + "cold") or [0])
            total = max(vals("rt_upstream_x", k + "cold") or [0])
            if c and w and d:
                ok = c <= 1.1 * d and w <= d and worst <= 1.0005
                t.append(f"- [{'x' if ok else ' '}] {LABELS[(rt, tr)]}, {img}: cold {c / d:.2f} × "
                         f"direct (≤ 1.1), warm {w / d:.2f} × direct (≤ 1.0); upstream sent "
                         f"{total:.3f} × the image per cold pull at worst, no blob more than "
                         f"{worst:.3f} × (≤ 1)")
    lines += ["", "Targets (issue 17, runtimes):"] + t + ["", "Protocols over TLS:"]
    lines += [f"- {k}: {', '.join(v) or 'nothing seen'}" for k, v in notes.items()]
    return lines
