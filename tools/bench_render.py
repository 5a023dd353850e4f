"""Benchmark of the offline render (a measurement, not a test).

    python tools/bench_render.py [--runs 5]

Compares, in the same run and as separate processes (what a user waits for):
- a bare import of the Pulumi SDKs the program uses;
- ``python -m tools.render --stack prod`` (what ``make render STACK=prod`` runs);
- a synthetic 50-domain copy of the prod stack against the 3-domain prod stack.
Targets: render <= 2x the bare import; 50 domains <= 4x the 3-domain time.
"""

from __future__ import annotations

import argparse
import os
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


def timed(argv: list[str], runs: int) -> float:
    """Median wall time of ``runs`` executions (one warm-up run first)."""
    samples = []
    for attempt in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, env=ENV)
        if attempt:
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


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
        bare = timed([python, "-c", BARE_IMPORT], args.runs)
        prod = timed(render, args.runs)
        fifty = timed(render50, args.runs)
        count3 = len(yaml.safe_load((out / "b3" / "resources.json").read_text()))
        count50 = len(yaml.safe_load((out / "b50" / "resources.json").read_text()))
    rows = [
        ("bare SDK import", bare, ""),
        ("render prod (3 domains)", prod, f"{count3} resources"),
        ("render synthetic (50 domains)", fifty, f"{count50} resources"),
    ]
    print(f"median of {args.runs} runs each, after one warm-up run")
    for label, seconds, note in rows:
        print(f"  {label:32s} {seconds:6.3f} s  {note}")
    ratio_import = prod / bare
    ratio_scale = fifty / prod
    print(f"  render / bare import          {ratio_import:6.2f}x  (target <= 2.0x)")
    print(f"  50 domains / 3 domains        {ratio_scale:6.2f}x  (target <= 4.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
