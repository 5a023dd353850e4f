"""Reading what the offline render wrote: the alert rules and dashboards a stack deploys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def rendered_rule_specs(build: Path) -> list[dict[str, Any]]:
    """``spec`` of every PrometheusRule manifest of a rendered stack."""
    specs = []
    for path in sorted((build / "manifests").glob("*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        if manifest.get("kind") == "PrometheusRule":
            specs.append(manifest["spec"])
    return specs


def rendered_dashboards(build: Path) -> dict[str, dict[str, Any]]:
    """Dashboards of the ConfigMaps the Grafana sidecar loads (label grafana_dashboard: "1")."""
    boards: dict[str, dict[str, Any]] = {}
    for path in sorted((build / "manifests").glob("configmap_*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        if (manifest["metadata"].get("labels") or {}).get("grafana_dashboard") == "1":
            for name, text in manifest["data"].items():
                boards[name] = json.loads(text)
    return boards
