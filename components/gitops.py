"""GitOps option: render Kubernetes manifests to a directory instead of applying them.

With ``pgplatform:gitops.renderDirectory`` set, every Kubernetes object goes through one explicit
``kubernetes`` provider with ``renderYamlToDirectory``: ``pulumi up`` writes the manifests there
(for a repository that Argo CD or Flux applies) and touches no cluster. Everything that is not
Kubernetes (database roles, Vault) is still applied by Pulumi. Caveats are in docs/gitops.md.
"""

from __future__ import annotations

import pulumi

from components.settings import StackSettings


def kubernetes_providers(s: StackSettings) -> list[pulumi.ProviderResource]:
    """The provider list every component passes down to its Kubernetes children."""
    if not s.gitops.render_directory:
        return []
    from pulumi_kubernetes.provider import Provider

    return [Provider("gitops", render_yaml_to_directory=s.gitops.render_directory)]
