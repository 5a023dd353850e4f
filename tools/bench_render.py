"""Benchmark of the offline render (a measurement, not a test).

    python tools/bench_render.py [--runs 5]

Compares, in the same run and as separate processes (what a user waits for):
- a bare import of the Pulumi SDKs the program uses;
- ``python -m tools.render --stack prod`` (what ``make render STACK=prod`` runs);
- a synthetic 50-domain copy of the prod stack against the 3-domain prod stack.
Targets: render <= 2x the bare import; 50 domains <= 4x the 3-domain time (wall time). The CPU
time (user + system) is printed beside it: on a shared machine it moves far less with the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BARE_IMPORT = "import pulumi, pulumi_kubernetes, pulumi_postgresql, pulumi_vault, pulumi_random"


# The warm-up run is there to leave what a user's second run finds, including the bytecode
# cache of the project's own modules (the SDKs' is written when pip installs them); an
# environment that forbids writing it would have every timed run compile the project again.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one execution."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, env=ENV)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def timed(commands: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU time of ``runs`` executions of each command (one warm-up first).

    The commands take turns (a, b, c, a, b, c, ...): on a shared machine the load drifts over
    a minute, and timing one command after the other would put that drift into the ratios.
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for attempt in range(runs + 1):
        for name, argv in commands.items():
            sample = run_once(argv)
            if attempt:
                samples[name].append(sample)
    return {
        name: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
        for name, got in samples.items()
    }


def synthetic_stack(domains: int, path: Path) -> None:
    """The prod stack with ``domains`` copies of its content domain (d001, d002, ...)."""
    document = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    config = document["config"]
    template = config["pgplatform:domains"]["content"]
    config["pgplatform:domains"] = {f"d{i:03d}": dict(template) for i in range(1, domains + 1)}
    config["pgplatform:services"] = []
    # Size the pooler and the database for that many APIs so the connection budget holds.
    config["pgplatform:postgres"] = {"maxConnections": 5000}
    config["pgplatform:pgbouncer"] = {"replicas": 4, "maxClientConn": 20000}
    path.write_text(yaml.safe_dump(document))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        many = out / "Pulumi.bench.yaml"
        synthetic_stack(50, many)
        render = [python, "-m", "tools.render", "--stack", "prod", "--out", str(out / "b3")]
        render50 = [*render[:-1], str(out / "b50"), "--config", str(many)]
        times = timed(
            {"bare": [python, "-c", BARE_IMPORT], "prod": render, "fifty": render50}, args.runs
        )
        count3 = len(yaml.safe_load((out / "b3" / "resources.json").read_text()))
        count50 = len(yaml.safe_load((out / "b50" / "resources.json").read_text()))
    rows = [
        ("bare SDK import", "bare", ""),
        ("render prod (3 domains)", "prod", f"{count3} resources"),
        ("render synthetic (50 domains)", "fifty", f"{count50} resources"),
    ]
    print(f"median of {args.runs} runs each, taking turns, after one warm-up round")
    print(f"  {'':32s} {'wall':>8s} {'cpu':>8s}")
    for label, key, note in rows:
        wall, cpu = times[key]
        print(f"  {label:32s} {wall:6.3f} s {cpu:6.3f} s  {note}")
    for label, (a, b), target in (
        ("render / bare import", ("prod", "bare"), 2.0),
        ("50 domains / 3 domains", ("fifty", "prod"), 4.0),
    ):
        wall = times[a][0] / times[b][0]
        cpu = times[a][1] / times[b][1]
        print(f"  {label:32s} {wall:6.2f}x  {cpu:6.2f}x  (target <= {target}x, wall)")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
