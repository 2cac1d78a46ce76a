"""Helpers for the copy benchmark: timed processes, a restartable target registry, registry
access logs, image layouts and the copy command of each tool. Python 3.11 standard library only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
# One line of the combined access log that distribution writes for every request.
ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) \S+ "[^"]*" "(?P<agent>[^"]*)"'
)
# User-Agent of this script's own requests, which the request counts leave out.
BENCH_USER_AGENT = "pma2docker-bench"
COPY_TIMEOUT_SECONDS = 900


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- timed processes ---------------------------------------------------------------------


@dataclass
class Run:
    """One finished process: wall seconds, peak resident set size in KiB, and CPU seconds
    (user plus system) of the process and the descendants it waited for."""

    wall: float
    max_rss_kib: int
    cpu: float


def measure(argv: list[str], env: dict, log_path: Path, timeout: float = COPY_TIMEOUT_SECONDS) -> Run:
    """Run a command to completion and return its wall time and peak RSS.

    The peak RSS is GNU time's %M: the largest resident set of the command or of any
    descendant it waited for. It is not read from this script's own wait4, because Linux
    carries the RSS of the forking Python process over exec into ru_maxrss.
    """
    usage_path = log_path.with_suffix(".usage")
    timed = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(usage_path), *argv]
    with log_path.open("ab") as output:
        output.write(f"$ {' '.join(argv)}\n".encode())
        output.flush()
        start = time.monotonic()
        process = subprocess.Popen(timed, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True)
        # A blocking wait returns at once when the process ends; Popen.wait(timeout) polls.
        killer = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
        killer.start()
        status = process.wait()
        wall = time.monotonic() - start
        killer.cancel()
    if wall >= timeout:
        raise BenchError(f"{argv[0]} did not finish within {timeout} s and was killed; output in {log_path}")
    if status != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise BenchError(f"{' '.join(argv)} exited with {status}; end of {log_path}:\n" + "\n".join(tail))
    # GNU time writes a "Command exited with non-zero status" line first on failure only.
    max_rss_kib, user, system = usage_path.read_text().splitlines()[-1].split()
    return Run(wall, int(max_rss_kib), float(user) + float(system))


def process_memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a running process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- registries --------------------------------------------------------------------------


def http_request(host: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """Send one plain-HTTP request and return (status, headers, body)."""
    connection = http.client.HTTPConnection(host, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"User-Agent": BENCH_USER_AGENT, **(headers or {})})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def manifest_digest(host: str, repository: str, reference: str) -> str | None:
    """Return the digest that a manifest reference resolves to, or None when it is missing."""
    status, headers, _ = http_request(host, "HEAD", f"/v2/{repository}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT})
    if status == 404:
        return None
    if status != 200:
        raise BenchError(f"HEAD http://{host}/v2/{repository}/manifests/{reference} returned {status}")
    return headers.get("Docker-Content-Digest")


def wait_for_registry(host: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http_request(host, "GET", "/v2/")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"registry at {host} did not answer GET /v2/ within {timeout} s")
        time.sleep(0.05)


class BenchRegistry:
    """A plain-HTTP distribution registry owned by the benchmark, emptied by a restart.

    The port stays the same across restarts, so tool configuration that names the host stays
    valid. All restarts append to one log file, so access-log offsets stay comparable.
    """

    def __init__(self, binary: Path, directory: Path):
        self.binary = binary
        self.directory = directory
        self.storage = directory / "storage"
        self.log_path = directory / "registry.log"
        # A full benchmark run logs tens of MiB of requests, so each run starts a new log.
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        self.host = f"127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def write_config(self) -> Path:
        # The same settings as the plain registry of tests/env/up.sh, so both ends match.
        config = self.directory / "config.yml"
        config.write_text(
            f"""version: 0.1
log:
  level: info
  fields:
    service: registry-bench-target
storage:
  filesystem:
    rootdirectory: {self.storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {self.host}
  secret: {secrets.token_hex(16)}
  headers:
    X-Content-Type-Options: [nosniff]
"""
        )
        return config

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        config = self.write_config()
        # distribution v3 exports OpenTelemetry traces to localhost:4318 unless this is set.
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                [str(self.binary), "serve", str(config)], env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        wait_for_registry(self.host)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def reset(self) -> None:
        """Stop the registry, delete all of its storage and start it again, empty."""
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)
        self.start()


@dataclass
class Request:
    method: str
    path: str
    status: int


class AccessLog:
    """Reads the requests that a registry logged after a remembered offset."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def requests_since_mark(self) -> list[Request]:
        """Return the requests logged since mark(), except this script's own."""
        with self.path.open("rb") as stream:
            stream.seek(self.offset)
            text = stream.read().decode(errors="replace")
        found = []
        for line in text.splitlines():
            match = ACCESS_LINE.match(line)
            if match and match["agent"] != BENCH_USER_AGENT:
                found.append(Request(match["method"], match["path"], int(match["status"])))
        return found


def summarize_requests(requests: list[Request]) -> str:
    """Summarize requests as counts per method and kind, such as 'HEAD manifest 1'."""
    counts: dict[str, int] = {}
    for request in requests:
        if request.path.rstrip("/") == "/v2":
            kind = "/v2/"
        elif "/manifests/" in request.path:
            kind = "manifest"
        elif "/blobs/uploads" in request.path:
            kind = "upload"
        elif "/blobs/" in request.path:
            kind = "blob"
        else:
            kind = "other"
        key = f"{request.method} {kind}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{key} {count}" for key, count in sorted(counts.items())) or "none"


# --- image layouts -----------------------------------------------------------------------


@dataclass
class Image:
    """An image in an OCI layout: its root, its child manifests and its distinct blobs."""

    name: str
    layout: Path
    tag: str
    root_digest: str
    root_media_type: str
    root_size: int
    children: list[dict] = field(default_factory=list)
    blobs: list[dict] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(blob["size"] for blob in self.blobs)

    @property
    def largest_blob(self) -> int:
        return max(blob["size"] for blob in self.blobs)


def read_image(name: str, layout: Path) -> Image:
    index = json.loads((layout / "index.json").read_text())
    top = index["manifests"][0]
    tag = top.get("annotations", {}).get("org.opencontainers.image.ref.name", "v1")
    image = Image(name, layout, tag, top["digest"], top["mediaType"], top["size"])
    seen: set[str] = set()

    def blob_json(digest: str) -> dict:
        return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes())

    def walk(descriptor: dict, is_root: bool) -> None:
        document = blob_json(descriptor["digest"])
        if descriptor["mediaType"] in INDEX_TYPES:
            for child in document["manifests"]:
                walk(child, False)
        else:
            for blob in [document["config"], *document.get("layers", [])]:
                if blob["digest"] not in seen:
                    seen.add(blob["digest"])
                    image.blobs.append(blob)
        if not is_root and descriptor["digest"] not in seen:
            seen.add(descriptor["digest"])
            image.children.append(descriptor)

    walk(top, True)
    return image


def write_curl_plan(image: Image, path: Path) -> None:
    """Write the plan file of curl_pipe_copy.sh: blobs, child manifests, then the tag."""
    lines = [f"blob {blob['digest']} {blob['size']}" for blob in image.blobs]
    lines += [f"manifest {child['digest']} {child['mediaType']} {child['size']}" for child in image.children]
    lines.append(f"manifest {image.tag} {image.root_media_type} {image.root_size}")
    path.write_text("\n".join(lines) + "\n")


# --- tools -------------------------------------------------------------------------------


class Tools:
    """The copy command of each tool, with its configuration isolated under `home`."""

    PEERS = ["crane", "regctl", "skopeo"]

    def __init__(self, work: Path, env_bin: Path, binary: Path, hosts: list[str]):
        self.binary = binary
        self.env_bin = env_bin
        self.hosts = hosts
        self.home = work / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".docker").mkdir(exist_ok=True)
        (self.home / ".docker" / "config.json").write_text('{"auths": {}}\n')
        (self.home / "skopeo-auth.json").write_text('{"auths": {}}\n')
        (self.home / "registries.conf").write_text("# No mirrors, no search registries.\n")
        (self.home / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        self.env = self.tool_env()
        for host in hosts:
            subprocess.run([str(env_bin / "regctl"), "registry", "set", "--tls", "disabled", host], env=self.env, check=True)

    def tool_env(self) -> dict:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "REGCTL_CONFIG", "RUST_LOG", "XDG_CONFIG_HOME")
        }
        env["HOME"] = str(self.home)
        env["DOCKER_CONFIG"] = str(self.home / ".docker")
        env["CONTAINERS_REGISTRIES_CONF"] = str(self.home / "registries.conf")
        env["PATH"] = f"{self.env_bin}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def copy_command(self, tool: str, source: str, target: str) -> list[str]:
        if tool == "pma2docker":
            plain = [word for host in self.hosts for word in ("--plain-http", host)]
            return [str(self.binary), "copy", source, target, *plain]
        if tool == "crane":
            return [str(self.env_bin / "crane"), "copy", source, target, "--insecure"]
        if tool == "regctl":
            return [str(self.env_bin / "regctl"), "image", "copy", source, target]
        if tool == "skopeo":
            return [
                "skopeo",
                "--policy",
                str(self.home / "policy.json"),
                "copy",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--authfile",
                str(self.home / "skopeo-auth.json"),
                f"docker://{source}",
                f"docker://{target}",
            ]
        raise BenchError(f"unknown tool {tool!r}")

    def versions(self) -> dict[str, str]:
        def first_line(argv: list[str]) -> str:
            result = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True)
            return (result.stdout or result.stderr).strip().splitlines()[0]

        regctl = subprocess.run([str(self.env_bin / "regctl"), "version"], env=self.env, capture_output=True, text=True, check=True)
        regctl_tag = next((line.split()[-1] for line in regctl.stdout.splitlines() if line.startswith("VCSTag")), "unknown")
        return {
            "crane": first_line([str(self.env_bin / "crane"), "version"]),
            "regctl": regctl_tag,
            "skopeo": first_line(["skopeo", "--version"]).removeprefix("skopeo version "),
            "curl": first_line(["curl", "--version"]),
            # `registry --version` prints the binary's path, the module and the version.
            "distribution registry": first_line([str(self.env_bin / "registry"), "--version"]).split()[-1],
        }
