"""The program's entry point for a cluster that runs no controller (``test_kubernetes.py``).

The API server of ``tests/apiserver`` stores and admits objects but nothing reconciles them: no
Deployment rolls out, no Job completes, no Service gets endpoints, and no garbage collector
removes the ``foregroundDeletion`` finalizer that the provider's default deletion (foreground
propagation) puts on every object it deletes. So this entry point, linked as ``__main__.py`` of
the scratch project, registers one stack transformation that adds two annotations the
pulumi-kubernetes provider reads to every Kubernetes object, then runs the program's own
``__main__.py`` unchanged:

- ``pulumi.com/skipAwait: "true"``: create and update return once the API server accepted the
  object, without waiting for readiness (Deployment rollout, Job completion, Service endpoints);
- ``pulumi.com/deletionPropagationPolicy: background``: a delete removes the object at once.

Provider 4.25 has no provider-wide switch for either (no ``skipAwait`` provider option, no
environment variable), and these annotations must not reach a real cluster, so they live here.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Final

import pulumi

CONTROLLERLESS_ANNOTATIONS: Final = {
    "pulumi.com/skipAwait": "true",
    "pulumi.com/deletionPropagationPolicy": "background",
}
PROGRAM: Final = Path(__file__).resolve().parents[2] / "__main__.py"


def annotate(
    args: pulumi.ResourceTransformationArgs,
) -> pulumi.ResourceTransformationResult | None:
    """Add the annotations to a Kubernetes object's metadata; leave every other resource alone."""
    if not args.type_.startswith("kubernetes:"):
        return None
    metadata = args.props.get("metadata")
    if not isinstance(metadata, dict):
        raise TypeError(f"{args.name}: metadata must be a plain dict, got {type(metadata)}")
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise TypeError(f"{args.name}: annotations must be a plain dict, got {type(annotations)}")
    props = {
        **args.props,
        "metadata": {**metadata, "annotations": {**annotations, **CONTROLLERLESS_ANNOTATIONS}},
    }
    return pulumi.ResourceTransformationResult(props, args.opts)


if __name__ == "__main__":
    pulumi.runtime.register_stack_transformation(annotate)
    runpy.run_path(str(PROGRAM), run_name="__main__")
