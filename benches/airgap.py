#!/usr/bin/env python3
"""Air-gap figures of issue 13, in one run, on loopback, against the release
binary:

  create    `wharf bundle create` of a 2 GiB set of blobs (16 random layers
            of 128 MiB and their manifests) beside `tar cf` of the same blob
            files (and `tar cf` followed by `sync`, since create makes its
            volumes durable);
  import    `wharf bundle import` of that bundle into an empty cache beside
            `tar xf` of its volumes plus `sha256sum` of the extracted blobs
            (and the same followed by `sync`: import makes each blob durable);
  resync    the second `wharf sync` of an unchanged rule of 200 tags against
            the local upstream (HEADs only);
  rss       peak RSS of the create and import processes.

Rounds rotate the order of the measured commands; medians with min-max are
printed and written to target/bench/airgap.{txt,json}.

    python3 benches/airgap.py [--rounds 3] [--gib 2]
"""

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def timed(cmd, cwd=None):
    """Wall seconds and peak RSS (KiB) of a command (GNU time's -f)."""
    out = tempfile.NamedTemporaryFile(delete=False)
    out.close()
    t0 = time.perf_counter()
    r = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", out.name, *cmd],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd} failed: {r.stderr.decode()[-2000:]}")
    rss = int(Path(out.name).read_text().split()[-1])
    os.unlink(out.name)
    return secs, rss


def shell_timed(script):
    t0 = time.perf_counter()
    run(["bash", "-c", script], stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def layout(dir_, gib):
    """An OCI layout of `gib` GiB of random layers, 128 MiB each, one
    image per layer, tags img0..imgN."""
    blobs = dir_ / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data):
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return "sha256:" + h, len(data)

    manifests = []
    for i in range(gib * 8):
        layer = put(os.urandom(128 * MIB))
        config = put(json.dumps({
            "architecture": "amd64", "os": "linux",
            "created": f"2026-01-01T00:00:{i % 60:02d}Z",
            "rootfs": {"type": "layers", "diff_ids": [layer[0]]},
        }).encode())
        m = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer[0], "size": layer[1]}],
        }).encode()
        d, n = put(m)
        manifests.append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": n,
            "annotations": {"org.opencontainers.image.ref.name": f"img{i}"},
        })
    (dir_ / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dir_ / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return len(manifests)


class Upstream:
    def __init__(self, work):
        self.port = free_port()
        cfg = work / "registry.yml"
        cfg.write_text(
            "version: 0.1\nlog:\n  accesslog:\n    disabled: true\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {work / 'registry'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def push(self, layout_dir, tag, dest):
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
             f"oci:{layout_dir}:{tag}", f"docker://127.0.0.1:{self.port}/{dest}"])

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def wharf_cfg(path, cache, up_port, rules):
    path.write_text(
        f"[server]\nlisten = \"127.0.0.1:0\"\nplain_http = true\n[cache]\ndir = {str(cache)!r}\n"
        f"[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:{up_port}\"\ndefault = true\n"
        + rules
    )


def retag(port, repo, tag, n):
    import urllib.request
    accept = "application/vnd.oci.image.manifest.v1+json"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": accept})
    body = urllib.request.urlopen(req).read()
    for i in range(n):
        put = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/{repo}/manifests/t{i:03d}", data=body, method="PUT",
            headers={"Content-Type": accept})
        urllib.request.urlopen(put).read()


def summarize(name, xs):
    return {"name": name, "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gib", type=int, default=2)
    args = ap.parse_args()
    log("building the release binary")
    run(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    wharf = str(ROOT / "target/release/wharf")
    work = Path(tempfile.mkdtemp(prefix="wharf-airgap-", dir=ROOT / "target"))
    up = None
    try:
        log(f"writing {args.gib} GiB of random layers")
        images = layout(work / "oci", args.gib)
        up = Upstream(work)
        log("pushing to the upstream")
        for i in range(images):
            up.push(work / "oci", f"img{i}", f"bench/set:img{i}")
        up.push(work / "oci", "img0", "bench/many:base")
        retag(up.port, "bench/many", "base", 200)
        conn = work / "conn.toml"
        wharf_cfg(conn, work / "conn-cache", up.port,
                  "[[sync]]\nname = \"set\"\nupstream = \"hub\"\n  [[sync.repo]]\n  name = \"bench/set\"\n"
                  "[[sync]]\nname = \"many\"\nupstream = \"hub\"\n  [[sync.repo]]\n  name = \"bench/many\"\n")
        log("first sync (fills the connected cache)")
        run([wharf, "sync", "--config", str(conn), "--json"], stdout=subprocess.DEVNULL)

        blob_files = [p for p in (work / "conn-cache" / "blobs").rglob("*") if p.is_file()]
        total = sum(p.stat().st_size for p in blob_files)
        (work / "files.txt").write_text("\n".join(str(p) for p in blob_files))
        log(f"{len(blob_files)} blob files, {total / MIB:.0f} MiB")

        res = {k: [] for k in ("create", "tar_cf", "tar_cf_sync", "import", "tar_xf_sha",
                               "tar_xf_sha_sync", "resync")}
        rss = {"create": [], "import": []}
        for rnd in range(args.rounds):
            b = work / f"b{rnd}"
            shutil.rmtree(b, ignore_errors=True)
            steps = [
                ("create", lambda: timed([wharf, "bundle", "create", "--config", str(conn),
                                          "--out", str(b), "--sync", "set", "--volume-size", "4GiB"])),
                ("tar_cf", lambda: (shell_timed(f"tar cf {work}/t.tar -T {work}/files.txt 2>/dev/null"), 0)),
                ("tar_cf_sync", lambda: (shell_timed(f"tar cf {work}/t.tar -T {work}/files.txt 2>/dev/null; sync"), 0)),
            ]
            steps = steps[rnd % 3:] + steps[:rnd % 3]
            for name, f in steps:
                run(["sync"])
                secs, peak = f()
                res[name].append(secs)
                if name in rss:
                    rss[name].append(peak)
                log(f"round {rnd} {name}: {secs:.2f} s")
            site = work / f"site{rnd}.toml"
            x = work / f"x{rnd}"
            isteps = [
                ("import", lambda: timed([wharf, "bundle", "import", "--config", str(site), str(b)])),
                ("tar_xf_sha", lambda: (shell_timed(
                    f"rm -rf {x} && mkdir {x} && for v in {b}/volume-*.tar; do tar xf $v -C {x}; done && "
                    f"sha256sum {x}/blobs/sha256/* >/dev/null"), 0)),
                ("tar_xf_sha_sync", lambda: (shell_timed(
                    f"rm -rf {x} && mkdir {x} && for v in {b}/volume-*.tar; do tar xf $v -C {x}; done && "
                    f"sha256sum {x}/blobs/sha256/* >/dev/null; sync"), 0)),
            ]
            isteps = isteps[rnd % 3:] + isteps[:rnd % 3]
            for name, f in isteps:
                shutil.rmtree(work / f"site-cache{rnd}", ignore_errors=True)
                wharf_cfg(site, work / f"site-cache{rnd}", 9, "")
                run(["sync"])
                secs, peak = f()
                res[name].append(secs)
                if name in rss:
                    rss[name].append(peak)
                log(f"round {rnd} {name}: {secs:.2f} s")
            shutil.rmtree(x, ignore_errors=True)
            shutil.rmtree(work / f"site-cache{rnd}", ignore_errors=True)
            shutil.rmtree(b, ignore_errors=True)
            secs, _ = timed([wharf, "sync", "many", "--config", str(conn), "--json"])
            res["resync"].append(secs)
            log(f"round {rnd} resync of 200 tags: {secs:.2f} s")

        out = {k: summarize(k, v) for k, v in res.items()}
        med = {k: v["median"] for k, v in out.items()}
        lines = [
            f"set: {len(blob_files)} blobs, {total / MIB:.0f} MiB; {args.rounds} rounds; medians (min-max)",
        ]
        for k, v in out.items():
            lines.append(f"  {k:16} {v['median']:7.2f} s  ({v['min']:.2f}-{v['max']:.2f})")
        lines += [
            f"create / tar cf          {med['create'] / med['tar_cf']:.2f}x (target <= 1.3)",
            f"create / (tar cf; sync)  {med['create'] / med['tar_cf_sync']:.2f}x",
            f"import / (tar xf + sha256sum)          {med['import'] / med['tar_xf_sha']:.2f}x (target <= 1.3)",
            f"import / (tar xf + sha256sum; sync)    {med['import'] / med['tar_xf_sha_sync']:.2f}x",
            f"second sync of 200 unchanged tags {med['resync']:.2f} s (target < 2 s)",
            f"peak RSS create {max(rss['create']) / 1024:.1f} MiB, import {max(rss['import']) / 1024:.1f} MiB (target < 64)",
        ]
        text = "\n".join(lines)
        print(text)
        (ROOT / "target/bench").mkdir(parents=True, exist_ok=True)
        (ROOT / "target/bench/airgap.txt").write_text(text + "\n")
        (ROOT / "target/bench/airgap.json").write_text(json.dumps({"results": out, "rss_kib": rss}, indent=1))
    finally:
        if up:
            up.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
