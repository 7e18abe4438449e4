"""Container health probe for the ncf images (standard library only).

    python healthcheck.py url http://localhost:5000/health   # any 2xx answer is healthy
    python healthcheck.py auto                               # probe what PID 1 runs

`auto` lets one image serve several roles (Airflow api-server / scheduler / dag-processor,
Spark master / worker) with one HEALTHCHECK: it reads the command line of PID 1 (the
service itself, or `docker-init -- <service>` under compose's `init: true`) and probes
that role's endpoint. A one-shot command (`airflow db migrate`) has nothing to probe and
counts as healthy. Exit status 0 = healthy, 1 = unhealthy (Docker's convention).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_S = 10

# PID 1 token -> what to probe. The first match in the command line wins.
AIRFLOW_PROBES: dict[str, Sequence[str]] = {
    "api-server": ("url", "http://localhost:8080/api/v2/monitor/health"),
    "scheduler": ("url", "http://localhost:8974/health"),  # [scheduler] enable_health_check
    "dag-processor": ("cmd", "airflow", "jobs", "check", "--job-type", "DagProcessorJob",
                      "--local"),
    "triggerer": ("cmd", "airflow", "jobs", "check", "--job-type", "TriggererJob", "--local"),
}
SPARK_PROBES: dict[str, Sequence[str]] = {
    "org.apache.spark.deploy.master.Master": ("url", "http://localhost:8080/"),
    "master": ("url", "http://localhost:8080/"),
    "org.apache.spark.deploy.worker.Worker": ("url", "http://localhost:8081/"),
    "worker": ("url", "http://localhost:8081/"),
}


def probe_url(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310
            return 200 <= int(response.status) < 300
    except OSError as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return False


def probe_command(argv: Sequence[str]) -> bool:
    try:
        return subprocess.run(list(argv), timeout=TIMEOUT_S * 3, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"unhealthy: {' '.join(argv)}: {error}", file=sys.stderr)
        return False


def choose_probe(cmdline: Sequence[str]) -> Sequence[str] | None:
    """The probe for a service's command line, or None for a one-shot command."""
    basenames = [Path(token).name for token in cmdline]
    if any(name == "airflow" for name in basenames):
        start = basenames.index("airflow") + 1
        for token in cmdline[start:]:
            if token in AIRFLOW_PROBES:
                return AIRFLOW_PROBES[token]
        return None
    for token in cmdline:
        if token in SPARK_PROBES:
            return SPARK_PROBES[token]
    return None


def pid1_cmdline() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


def run(probe: Sequence[str] | None) -> bool:
    if probe is None:
        return True
    kind, *rest = probe
    return probe_url(rest[0]) if kind == "url" else probe_command(rest)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["url"] and len(args) == 2:
        return 0 if probe_url(args[1]) else 1
    if args == ["auto"]:
        return 0 if run(choose_probe(pid1_cmdline())) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
