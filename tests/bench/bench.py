#!/usr/bin/env python3
"""Benchmark pma2docker against crane, regctl, skopeo and a curl pipe, and its controller.

Run it through tests/bench/run.sh, which builds the binary and starts the environment. Every
copy goes from the plain registry of tests/env/up.sh (the source) to a second plain registry
that this script starts and empties before each run by deleting its storage and restarting it.
Figures are medians over the counted runs. Each round runs every tool once, in an order that
rotates from round to round, and a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchlib import (
    AccessLog,
    BenchError,
    BenchRegistry,
    Image,
    Run,
    Tools,
    free_port,
    http_request,
    log,
    manifest_digest,
    measure,
    median,
    process_memory_kib,
    read_image,
    stop_process,
    summarize_requests,
    write_curl_plan,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
TOOLS = ["pma2docker", "crane", "regctl", "skopeo"]
# Blobs in flight in the curl pipe, the same as pma2docker's default --jobs.
CURL_JOBS = 4
CONTROLLER_NAMESPACE = "bench-controller"
CONTROLLER_OBJECTS = 200
AT_REST_OBJECTS = 1000
SOURCE_PREFIX = "bench/ctl/s"
# Seconds that Ready=False objects may stay failing while the benchmark waits for them.
FAILURE_GRACE_SECONDS = 60


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work: Path = args.work
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        environment = json.loads((args.env_dir / "env.json").read_text())
        self.kubeconfig = environment["kubeconfig"]
        self.source_host = environment["registries"]["plain"]["host"]
        self.env_bin = Path(environment["bin"])
        self.source_log = AccessLog(args.env_dir / "logs" / "registry-plain.log")
        self.target = BenchRegistry(self.env_bin / "registry", self.work / "target-registry")
        self.target_log = AccessLog(self.target.log_path)
        # `regctl registry set` sends a request to the host, so the target must be running.
        self.target.start()
        try:
            self.tools = Tools(self.work, self.env_bin, args.binary, [self.source_host, self.target.host])
        except BaseException:
            self.target.stop()
            raise
        self.results: dict = {"runs": args.runs, "quick": args.quick}

    # --- fixtures ------------------------------------------------------------------------

    def prepare_image(self, name: str) -> Image:
        """Build the layout of image `name` if needed, push it to the source, and return it."""
        fixtures = self.work / "fixtures"
        if name in ("multiarch-oci", "single"):
            real = fixtures / "real"
            if not (real / "fixtures.json").is_file():
                subprocess.run([sys.executable, str(REPO_ROOT / "tests/fixtures/build_images.py"), str(real)], check=True)
            layout = real / name
        else:
            subprocess.run([sys.executable, str(Path(__file__).with_name("make_fixtures.py")), str(fixtures), name], check=True)
            layout = fixtures / name
        image = read_image(name, layout)
        repository = f"bench/{name}"
        if manifest_digest(self.source_host, repository, image.tag) != image.root_digest:
            log(f"pushing {name} to the source registry")
            subprocess.run(
                [str(self.env_bin / "oras"), "cp", "--from-oci-layout", f"{layout}:{image.tag}",
                 f"{self.source_host}/{repository}:{image.tag}", "--to-plain-http"],
                check=True, stdout=subprocess.DEVNULL,
            )
        return image

    def references(self, image: Image) -> tuple[str, str]:
        repository = f"bench/{image.name}"
        return f"{self.source_host}/{repository}:{image.tag}", f"{self.target.host}/{repository}:{image.tag}"

    def curl_command(self, image: Image) -> list[str]:
        plan = self.work / f"curl-plan-{image.name}.txt"
        write_curl_plan(image, plan)
        repository = f"bench/{image.name}"
        return ["bash", str(Path(__file__).with_name("curl_pipe_copy.sh")), self.source_host, repository,
                self.target.host, repository, str(CURL_JOBS), str(plan)]

    # --- one copy ------------------------------------------------------------------------

    def timed_copy(self, tool: str, image: Image, empty_target: bool = True) -> Run:
        source, target = self.references(image)
        if empty_target:
            self.target.reset()
        argv = self.curl_command(image) if tool == "curl-pipe" else self.tools.copy_command(tool, source, target)
        run = measure(argv, self.tools.env, self.logs / f"{tool}.log")
        copied = manifest_digest(self.target.host, f"bench/{image.name}", image.tag)
        if copied != image.root_digest:
            raise BenchError(f"{tool} left {target} at {copied}, expected {image.root_digest}")
        return run

    def compare(self, label: str, image: Image, tools: list[str]) -> dict:
        """Run every tool once per round, after one warm-up round, and collect the figures."""
        runs: dict[str, list[Run]] = {tool: [] for tool in tools}
        for round_number in range(-1, self.args.runs):
            shift = max(round_number, 0) % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                run = self.timed_copy(tool, image)
                kind = "warm-up" if round_number < 0 else f"run {round_number + 1}"
                log(f"{label} {image.name} {tool} {kind}: {run.wall:.2f} s, {run.max_rss_kib / 1024:.1f} MiB, CPU {run.cpu:.2f} s")
                if round_number >= 0:
                    runs[tool].append(run)
        summary = {}
        for tool in tools:
            walls = [run.wall for run in runs[tool]]
            ratios = [mine.wall / theirs.wall for mine, theirs in zip(runs["pma2docker"], runs[tool])]
            summary[tool] = {
                "walls": walls,
                "rss_mib": [run.max_rss_kib / 1024 for run in runs[tool]],
                "median_wall": median(walls),
                "median_rss_mib": median([run.max_rss_kib / 1024 for run in runs[tool]]),
                "median_cpu": median([run.cpu for run in runs[tool]]),
                "pma2docker_ratio": median(ratios),
            }
        return {"image": image.name, "blobs": len(image.blobs), "bytes": image.total_bytes, "tools": summary}

    # --- sections ------------------------------------------------------------------------

    def run_copy_section(self) -> None:
        cases = [("a", "multiarch-oci"), ("b", "many-layers"), ("c", "large-1g")]
        self.results["copy"] = {}
        for label, name in cases:
            image = self.prepare_image(name)
            tools = TOOLS + (["curl-pipe"] if label == "c" else [])
            self.results["copy"][label] = self.compare(label, image, tools)

    def run_rss_section(self) -> None:
        names = ["large-256m", "large-1g"] + ([] if self.args.quick else ["large-4g"])
        self.results["rss"] = {}
        for name in names:
            image = self.prepare_image(name)
            runs = []
            for number in range(self.args.rss_runs):
                run = self.timed_copy("pma2docker", image)
                log(f"rss {name} run {number + 1}: {run.wall:.2f} s, {run.max_rss_kib / 1024:.1f} MiB")
                runs.append(run)
            self.results["rss"][name] = {
                "largest_layer": image.largest_blob,
                "median_rss_mib": median([run.max_rss_kib / 1024 for run in runs]),
                "max_rss_mib": max(run.max_rss_kib / 1024 for run in runs),
                "median_wall": median([run.wall for run in runs]),
                "mib_per_second": image.total_bytes / MiB / median([run.wall for run in runs]),
            }
            if name == "large-4g":
                self.target.reset()
                subprocess.run(["rm", "-rf", str(image.layout)], check=True)

    def run_recopy_section(self) -> None:
        image = self.prepare_image("multiarch-oci")
        self.results["recopy"] = {}
        for tool in TOOLS:
            self.timed_copy(tool, image)
            self.source_log.mark()
            self.target_log.mark()
            self.timed_copy(tool, image, empty_target=False)
            source_requests = self.source_log.requests_since_mark()
            target_requests = self.target_log.requests_since_mark()
            self.results["recopy"][tool] = {
                "source": len(source_requests),
                "target": len(target_requests),
                "total": len(source_requests) + len(target_requests),
                "source_detail": summarize_requests(source_requests),
                "target_detail": summarize_requests(target_requests),
            }
            log(f"unchanged re-copy {tool}: {len(source_requests)} source + {len(target_requests)} target requests")

    # --- controller ----------------------------------------------------------------------

    def kubectl(self, *arguments: str, input_text: str | None = None) -> str:
        env = {**self.tools.env, "KUBECONFIG": self.kubeconfig}
        result = subprocess.run([str(self.env_bin / "kubectl"), *arguments], env=env, input=input_text,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchError(f"kubectl {' '.join(arguments)} failed: {result.stderr.strip()}")
        return result.stdout

    def delete_image_copies(self) -> None:
        """Delete every ImageCopy in the namespace and wait until a cached list shows none."""
        collection = f"/apis/pma2docker.io/v1alpha1/namespaces/{CONTROLLER_NAMESPACE}/imagecopies"
        # One DELETE of the collection: `kubectl delete --all` sends one request per object,
        # throttled by kubectl's client-side rate limit (200 objects took about 40 s).
        self.kubectl("delete", "--raw", collection)
        # resourceVersion=0 reads the apiserver's watch cache, as the controller's first list does.
        deadline = time.monotonic() + 60
        while json.loads(self.kubectl("get", "--raw", f"{collection}?resourceVersion=0"))["items"]:
            if time.monotonic() > deadline:
                raise BenchError("deleted ImageCopy objects were still listed after 60 s")
            time.sleep(0.2)

    def seed_sources(self, image: Image, count: int) -> None:
        """Put `image` under `count` source repositories by mounting its blobs, one repository each."""
        repository = f"bench/{image.name}"
        status, _, manifest = http_request(self.source_host, "GET", f"/v2/{repository}/manifests/{image.tag}",
                                           {"Accept": image.root_media_type})
        if status != 200:
            raise BenchError(f"cannot read {repository}:{image.tag} from the source: HTTP {status}")
        for number in range(count):
            name = f"{SOURCE_PREFIX}{number:04d}"
            if manifest_digest(self.source_host, name, image.tag) == image.root_digest:
                continue
            for blob in image.blobs:
                path = f"/v2/{name}/blobs/uploads/?mount={blob['digest']}&from={repository}"
                status = http_request(self.source_host, "POST", path)[0]
                if status != 201:
                    raise BenchError(f"mount of {blob['digest']} into {name} returned {status}, expected 201")
            status = http_request(self.source_host, "PUT", f"/v2/{name}/manifests/{image.tag}",
                                  {"Content-Type": image.root_media_type}, manifest)[0]
            if status != 201:
                raise BenchError(f"manifest push to {name} returned {status}, expected 201")

    def image_copy_objects(self, image: Image, first: int, count: int, round_number: int) -> str:
        # Names differ between rounds, so no object shares a name with one deleted just before.
        items = []
        for number in range(first, first + count):
            repository = f"{SOURCE_PREFIX}{number:04d}"
            items.append({
                "apiVersion": "pma2docker.io/v1alpha1",
                "kind": "ImageCopy",
                "metadata": {"name": f"copy-r{round_number}-{number:04d}", "namespace": CONTROLLER_NAMESPACE},
                "spec": {
                    "source": f"{self.source_host}/{repository}:{image.tag}",
                    "target": f"{self.target.host}/{repository}:{image.tag}",
                    "interval": "1h",
                },
            })
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})

    def ready_counts(self) -> tuple[int, int, list[str]]:
        """Return how many ImageCopy objects exist and are Ready=True, and the Ready=False messages."""
        listing = json.loads(self.kubectl("get", "imagecopies", "-n", CONTROLLER_NAMESPACE, "-o", "json"))
        ready = 0
        failures = []
        for item in listing["items"]:
            for condition in item.get("status", {}).get("conditions", []):
                if condition["type"] == "Ready" and condition["status"] == "True":
                    ready += 1
                elif condition["type"] == "Ready" and condition["status"] == "False":
                    failures.append(f"{item['metadata']['name']}: {condition.get('reason')}: {condition.get('message')}")
        return len(listing["items"]), ready, failures

    def wait_all_ready(self, expected: int, started: float, timeout: float = 900) -> float:
        """Poll until `expected` objects are Ready and return the seconds since `started`.

        Raises when some objects stay Ready=False for FAILURE_GRACE_SECONDS, which is longer
        than the controller's first retries, so that a broken setup fails in a minute.
        """
        failing_since = None
        while True:
            total, ready, failures = self.ready_counts()
            now = time.monotonic()
            if total == expected and ready == expected:
                return now - started
            failing_since = (failing_since or now) if failures else None
            if failing_since is not None and now - failing_since > FAILURE_GRACE_SECONDS:
                raise BenchError(f"{len(failures)} ImageCopy objects stayed Ready=False, such as {failures[0]}")
            if now - started > timeout:
                raise BenchError(f"{ready} of {expected} ImageCopy objects Ready after {timeout} s")
            time.sleep(0.25)

    def start_controller(self) -> tuple[subprocess.Popen, str]:
        port = free_port()
        env = {**self.tools.env, "KUBECONFIG": self.kubeconfig}
        output = (self.logs / "controller.log").open("ab")
        process = subprocess.Popen(
            [str(self.args.binary), "controller", "--metrics-address", f"127.0.0.1:{port}",
             "--plain-http", self.source_host, "--plain-http", self.target.host, "--namespace", CONTROLLER_NAMESPACE],
            env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
        )
        address = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{address}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return process, address
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise BenchError(f"controller did not become ready; log: {self.logs / 'controller.log'}")
            time.sleep(0.1)

    def sequential_crane(self, image: Image, count: int) -> float:
        self.target.reset()
        started = time.monotonic()
        for number in range(count):
            repository = f"{SOURCE_PREFIX}{number:04d}"
            argv = self.tools.copy_command("crane", f"{self.source_host}/{repository}:{image.tag}",
                                           f"{self.target.host}/{repository}:{image.tag}")
            measure(argv, self.tools.env, self.logs / "crane-sequential.log")
        return time.monotonic() - started

    def run_controller_section(self) -> None:
        image = self.prepare_image("single")
        log(f"seeding {AT_REST_OBJECTS} source repositories")
        self.seed_sources(image, AT_REST_OBJECTS)
        crd = subprocess.run([str(self.args.binary), "crd"], capture_output=True, text=True, check=True).stdout
        self.kubectl("apply", "--server-side", "-f", "-", input_text=crd)
        if CONTROLLER_NAMESPACE not in self.kubectl("get", "namespaces", "-o", "name"):
            self.kubectl("create", "namespace", CONTROLLER_NAMESPACE)

        rounds = []
        for number in range(self.args.controller_rounds):
            crane_seconds = self.sequential_crane(image, CONTROLLER_OBJECTS)
            log(f"controller round {number + 1}: {CONTROLLER_OBJECTS} sequential crane copies took {crane_seconds:.1f} s")
            self.delete_image_copies()
            self.target.reset()
            process, _ = self.start_controller()
            try:
                idle = process_memory_kib(process.pid)
                started = time.monotonic()
                self.kubectl("create", "-f", "-", input_text=self.image_copy_objects(image, 0, CONTROLLER_OBJECTS, number))
                create_seconds = time.monotonic() - started
                controller_seconds = self.wait_all_ready(CONTROLLER_OBJECTS, started)
                log(f"controller round {number + 1}: {CONTROLLER_OBJECTS} objects Ready after {controller_seconds:.1f} s")
                rounds.append({"crane_seconds": crane_seconds, "controller_seconds": controller_seconds,
                               "ratio": controller_seconds / crane_seconds, "create_seconds": create_seconds, "idle_rss_mib": idle["VmRSS"] / 1024})
                if number == self.args.controller_rounds - 1:
                    self.measure_at_rest(process, image, number)
            finally:
                stop_process(process)
        self.results["controller"] = {
            "rounds": rounds,
            "median_crane_seconds": median([r["crane_seconds"] for r in rounds]),
            "median_controller_seconds": median([r["controller_seconds"] for r in rounds]),
            "median_ratio": median([r["ratio"] for r in rounds]),
            "idle_rss_mib": median([r["idle_rss_mib"] for r in rounds]),
            **self.results.get("controller_at_rest", {}),
        }

    def measure_at_rest(self, process: subprocess.Popen, image: Image, round_number: int) -> None:
        """Add objects up to AT_REST_OBJECTS, wait for all, then read RSS and count requests."""
        started = time.monotonic()
        more = AT_REST_OBJECTS - CONTROLLER_OBJECTS
        self.kubectl("create", "-f", "-", input_text=self.image_copy_objects(image, CONTROLLER_OBJECTS, more, round_number))
        seconds = self.wait_all_ready(AT_REST_OBJECTS, started)
        log(f"{more} more objects Ready after {seconds:.1f} s; letting the controller settle")
        time.sleep(self.args.settle_seconds)
        self.source_log.mark()
        self.target_log.mark()
        before = process_memory_kib(process.pid)
        time.sleep(self.args.at_rest_seconds)
        after = process_memory_kib(process.pid)
        requests = self.source_log.requests_since_mark() + self.target_log.requests_since_mark()
        per_minute = len(requests) * 60 / self.args.at_rest_seconds
        log(f"at rest with {AT_REST_OBJECTS} objects: RSS {after['VmRSS'] / 1024:.1f} MiB, {per_minute:.1f} requests/min")
        self.results["controller_at_rest"] = {
            "objects": AT_REST_OBJECTS,
            "fill_seconds": seconds,
            "rest_rss_mib": max(before["VmRSS"], after["VmRSS"]) / 1024,
            "peak_rss_mib": after["VmHWM"] / 1024,
            "window_seconds": self.args.at_rest_seconds,
            "requests": len(requests),
            "requests_per_minute": per_minute,
            "request_detail": summarize_requests(requests),
        }

    # --- report --------------------------------------------------------------------------

    def describe_machine(self) -> None:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
        self.results["machine"] = {
            "cpus": os.cpu_count(),
            "memory_gib": round(memory_kib / (1 << 20)),
            "cpu": cpu,
            "kernel": platform.release(),
        }
        self.results["versions"] = {"pma2docker": self.args.revision, **self.tools.versions()}
        self.results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    def run(self) -> None:
        self.describe_machine()
        self.results["load_before"] = os.getloadavg()
        self.target.reset()
        try:
            sections = {"copy": self.run_copy_section, "rss": self.run_rss_section,
                        "recopy": self.run_recopy_section, "controller": self.run_controller_section}
            for name in self.args.sections.split(","):
                sections[name]()
        finally:
            self.target.stop()
            self.results["load_after"] = os.getloadavg()
            (self.work / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark pma2docker copies and its controller.")
    parser.add_argument("--env-dir", type=Path, required=True, help="state directory of tests/env/up.sh")
    parser.add_argument("--work", type=Path, required=True, help="directory for fixtures, logs and results")
    parser.add_argument("--binary", type=Path, required=True, help="the pma2docker binary to measure")
    parser.add_argument("--revision", required=True, help="git revision the binary was built from, for the report")
    parser.add_argument("--quick", action="store_true", help="fewer runs, no 4 GiB layer, one controller round")
    parser.add_argument("--sections", default="copy,rss,recopy,controller",
                        help="comma-separated sections to run: copy, rss, recopy, controller")
    args = parser.parse_args()
    args.runs = 2 if args.quick else 5
    args.rss_runs = 2 if args.quick else 3
    args.controller_rounds = 1 if args.quick else 3
    args.settle_seconds = 10
    args.at_rest_seconds = 30 if args.quick else 60
    return args


def main() -> int:
    # SIGTERM ends the run through the `finally` blocks, which stop the target registry and
    # the controller; without this they would keep running after the benchmark.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        bench = Bench(args)
        bench.run()
    except BenchError as error:
        print(f"bench.py: error: {error}", file=sys.stderr)
        return 1
    from report import render_markdown

    text = render_markdown(bench.results, " ".join(["tests/bench/run.sh", *(["--quick"] if args.quick else [])]))
    (args.work / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
