#!/usr/bin/env python3
"""GKE's containerd configuration file for node pools, read as gcloud reads it
and turned into the hosts.toml files GKE writes on each node.

    gke_hosts.py FILE.yaml OUT_DIR

Reading (gcloud's LoadContainerdConfigFromYAML in
googlecloudsdk/api_lib/container/util.py, and the limits of the API
reference, https://docs.cloud.google.com/kubernetes-engine/docs/reference/rest/v1/ContainerdConfig):
unknown keys and wrong types are refused; `registryHosts` is a list of at
most 25 entries {server: str, hosts: list of at most 10}; each host
{host: str, capabilities: list of HOST_CAPABILITY_*, overridePath: bool,
header: list, dialTimeout: str, ca: list, client: list}; `server` is a host
with an optional port and no scheme or path; `host` may have an http or https
scheme; `dialTimeout` is a protobuf Duration ("1s", "0.5s"), at most 180s.

Writing (GKE's rendering as Google's GoogleCloudPlatform/k8s-node-tools
containerd/container-insecure-registry/README.md shows it, PR #68: "results in
a file at /etc/containerd/hosts.d/REGISTRY_ADDRESS/hosts.toml"):
OUT_DIR/<server>/hosts.toml with `server = '<server>'` as given and one
`[host.'<host>']` table per host, in order, with the capabilities in
containerd's words and `dial_timeout`.

Exit status 0 with the files written, 1 with the reason on stderr.
"""

import os
import re
import sys

import yaml

CAPABILITIES = {
    "HOST_CAPABILITY_PULL": "pull",
    "HOST_CAPABILITY_RESOLVE": "resolve",
    "HOST_CAPABILITY_PUSH": "push",
}
ROOT_KEYS = {"privateRegistryAccessConfig": dict, "writableCgroups": dict, "registryHosts": list}
REGISTRY_HOST_KEYS = {"server": str, "hosts": list}
HOST_KEYS = {
    "host": str,
    "capabilities": list,
    "overridePath": bool,
    "header": list,
    "dialTimeout": str,
    "ca": list,
    "client": list,
}
SERVER = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
HOST = re.compile(r"^(https?://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[^\s'\"]*)?$")
DURATION = re.compile(r"^([0-9]+)(\.[0-9]{1,9})?s$")


class Invalid(Exception):
    pass


def check_keys(obj, allowed, where):
    if not isinstance(obj, dict):
        raise Invalid(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise Invalid(f"unknown fields: {unknown} in \"{where}\"")
    for key, kind in allowed.items():
        if key in obj and not isinstance(obj[key], kind):
            raise Invalid(f"{where}.{key}: expected {kind.__name__}, got {type(obj[key]).__name__}")


def read(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    check_keys(doc, ROOT_KEYS, "root")
    entries = doc.get("registryHosts", [])
    if len(entries) > 25:
        raise Invalid(f"{len(entries)} registryHosts: at most 25 are allowed")
    servers = set()
    out = []
    for i, entry in enumerate(entries):
        where = f"registryHosts[{i}]"
        check_keys(entry, REGISTRY_HOST_KEYS, where)
        server = entry.get("server")
        if not server or not SERVER.match(server):
            raise Invalid(f"{where}.server {server!r}: a host or host:port, no scheme or path")
        if server in servers:
            raise Invalid(f"{where}.server {server!r} appears twice")
        servers.add(server)
        hosts = entry.get("hosts", [])
        if len(hosts) > 10:
            raise Invalid(f"{where}: {len(hosts)} hosts, at most 10 are allowed")
        rendered = []
        for j, h in enumerate(hosts):
            hw = f"{where}.hosts[{j}]"
            check_keys(h, HOST_KEYS, hw)
            host = h.get("host")
            if not host or not HOST.match(host):
                raise Invalid(f"{hw}.host {host!r}: a host, with http:// or https:// and a port if any")
            caps = []
            for c in h.get("capabilities", []):
                if c not in CAPABILITIES:
                    raise Invalid(
                        f'capability "{c}" is not supported, the supported options are '
                        "HOST_CAPABILITY_PULL, HOST_CAPABILITY_RESOLVE, HOST_CAPABILITY_PUSH"
                    )
                caps.append(CAPABILITIES[c])
            timeout = h.get("dialTimeout")
            if timeout is not None:
                m = DURATION.match(timeout)
                if not m:
                    raise Invalid(f"{hw}.dialTimeout {timeout!r}: seconds with an 's' suffix")
                seconds = float(m.group(1) + (m.group(2) or ""))
                if seconds <= 0 or seconds > 180:
                    raise Invalid(f"{hw}.dialTimeout {timeout!r}: more than 0, at most 180s")
            if h.get("header") or h.get("ca") or h.get("client") or h.get("overridePath"):
                raise Invalid(f"{hw}: header, ca, client and overridePath are not rendered here")
            rendered.append((host, caps, timeout))
        out.append((server, rendered))
    return out


def toml_str(s):
    # Literal strings, as GKE writes them; the patterns above exclude quotes.
    return "'" + s + "'"


def write(entries, out_dir):
    for server, hosts in entries:
        d = os.path.join(out_dir, server)
        os.makedirs(d, exist_ok=True)
        lines = [f"server = {toml_str(server)}", "", "[host]"]
        for host, caps, timeout in hosts:
            lines.append(f"  [host.{toml_str(host)}]")
            if caps:
                lines.append("    capabilities = [" + ", ".join(toml_str(c) for c in caps) + "]")
            if timeout is not None:
                lines.append(f"    dial_timeout = {toml_str(timeout)}")
        with open(os.path.join(d, "hosts.toml"), "w") as f:
            f.write("\n".join(lines) + "\n")


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        entries = read(argv[1])
    except (Invalid, yaml.YAMLError) as e:
        print(f"invalid GKE containerd configuration: {e}", file=sys.stderr)
        return 1
    write(entries, argv[2])
    for server, hosts in entries:
        print(f"{server}: {', '.join(h for h, _, _ in hosts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
