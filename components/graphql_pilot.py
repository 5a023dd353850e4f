"""GraphqlPilot: PostGraphile on the identity schema, with the REST APIs' JWTs and policies.

The pilot adds no authorization of its own. It logs in as its own NOINHERIT authenticator
``postgraphile`` (created by the access plan when ``graphql.enabled``) through PgBouncer's rw
pool, verifies the same tokens as PostgREST (the stack's one HS256 secret, or the identity
provider's JWKS fetched from the same ``auth.jwksUrl``) and hands the database the same
``role`` + ``request.jwt.claims`` + ``platform.pre_request()`` context, so the row level
security policies of the schema decide everything (docs/graphql-pilot.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components import inputs
from components.k8s import KubeObject, meta
from components.render import graphql_workload as render
from components.render import pods
from components.render.checksum import content_checksum
from components.render.postgraphile import (
    POSTGRAPHILE_VERSION,
    PostgraphileInput,
    read_package_files,
)
from components.render.secrets import (
    EXTERNAL_SECRETS_API_VERSION,
    jwks_external_secret_spec,
    jwks_secret_store_spec,
)
from components.settings import StackSettings, VaultSettings
from components.vault_secrets import VaultConsumer, VaultSecrets, VaultSecretsArgs, secret_name_of


@dataclass(frozen=True, kw_only=True)
class GraphqlPilotArgs:
    """The PostGraphile container, its pod, route and network reach, and its secrets' sources."""

    namespace: str
    env: str
    """Stack name, part of the Vault KV path."""
    vault: VaultSettings
    postgraphile: PostgraphileInput
    package_files: Mapping[str, str]
    """``package.json`` + ``package-lock.json`` the install step runs ``npm ci`` from."""
    resources: pods.Resources
    min_replicas: int
    max_replicas: int
    route: render.RouteInput
    network: render.NetworkInput
    db_password: pulumi.Input[str]
    """Password of the authenticator ``postgraphile`` (delivered through Vault only)."""
    jwt_secret: pulumi.Input[str] | None = None
    """The stack's HS256 secret, the very Output the REST APIs get (hs256 mode only)."""
    jwks_url: str | None = None
    """The identity provider's JWKS URL, the REST APIs' ``auth.jwksUrl`` (jwks mode only)."""
    public_base_url: str

    def __post_init__(self) -> None:
        inp = self.postgraphile
        if (inp.jwt_secret is None) != (self.jwt_secret is None):
            raise ValueError("jwt_secret: required exactly when postgraphile.jwt_secret is set")
        if (inp.jwks_file is None) != (self.jwks_url is None):
            raise ValueError("jwks_url: required exactly when postgraphile.jwks_file is set")
        if inp.db_password.name != secret_name_of(render.CONSUMER):
            raise ValueError(
                f"postgraphile.db_password: must come from {secret_name_of(render.CONSUMER)!r}"
            )
        expected = [inp.graphql_route] + ([inp.graphiql_route] if inp.graphiql else [])
        if list(self.route.paths) != expected:
            raise ValueError(f"route.paths: must be {expected} (what the server serves)")
        if self.route.service_port != inp.port or self.network.server_port != inp.port:
            raise ValueError(f"route.service_port/network.server_port: the pod serves {inp.port}")
        if not self.public_base_url.startswith("https://"):
            raise ValueError(f"public_base_url: must be https, got {self.public_base_url!r}")


class GraphqlPilot(pulumi.ComponentResource):
    """PostGraphile Deployment, ConfigMap, Service, HTTPRoute, HPA, PDB, NetworkPolicy."""

    url: pulumi.Output[str]
    """Public URL of the GraphQL endpoint (gateway route)."""
    service_address: pulumi.Output[str]
    """In-cluster URL of the GraphQL endpoint."""
    deployment_name: pulumi.Output[str]
    """Generated name of the PostGraphile Deployment."""
    config_map_name: pulumi.Output[str]
    """Generated name of the ConfigMap (rc file and npm package files)."""
    secret_name: pulumi.Output[str]
    """Kubernetes Secret (from Vault) holding the password and, in hs256 mode, the JWT key."""

    def __init__(
        self, name: str, args: GraphqlPilotArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:GraphqlPilot", name, None, opts)
        ns = args.namespace
        labels = render.labels()
        child = pulumi.ResourceOptions(parent=self)
        inp = args.postgraphile

        account = KubeObject(
            f"{name}-sa",
            api_version="v1",
            kind="ServiceAccount",
            metadata=meta(ns, labels),
            body=render.service_account_spec(),
            opts=child,
        )
        values: dict[str, pulumi.Input[str]] = {render.PASSWORD_KEY: args.db_password}
        if args.jwt_secret is not None:
            values[render.JWT_SECRET_KEY] = args.jwt_secret
        secrets = VaultSecrets(
            f"{name}-vault",
            VaultSecretsArgs(
                namespace=ns,
                env=args.env,
                vault=args.vault,
                consumers=(
                    VaultConsumer(
                        name=render.CONSUMER, service_account=account.object_name, values=values
                    ),
                ),
                labels=labels,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        secret_name = secrets.secret_names[render.CONSUMER]
        rollout_deps: list[pulumi.Resource] = [secrets]
        if args.jwks_url is not None:
            rollout_deps.append(self._jwks(name, ns, labels, args.jwks_url))

        data = render.config_map_data(inp, args.package_files)
        config = KubeObject(
            f"{name}-config",
            api_version="v1",
            kind="ConfigMap",
            metadata=meta(ns, labels),
            body={"data": data},
            opts=child,
        )
        config_checksum = content_checksum(*(f"{key}\n{data[key]}" for key in sorted(data)))

        def deployment_spec(parts: list[Any]) -> dict[str, Any]:
            config_map, service_account, secrets_checksum = parts
            return render.deployment_spec(
                render.GraphqlWorkloadInput(
                    postgraphile=inp,
                    config_map=str(config_map),
                    service_account=str(service_account),
                    secret_name=secret_name,
                    jwks_secret=render.JWKS_SECRET if args.jwks_url is not None else None,
                    resources=args.resources,
                    min_replicas=args.min_replicas,
                    max_replicas=args.max_replicas,
                    config_checksum=config_checksum,
                    secrets_checksum=str(secrets_checksum),
                )
            )

        deployment = KubeObject(
            f"{name}-deployment",
            api_version="apps/v1",
            kind="Deployment",
            metadata=meta(ns, labels),
            body={
                "spec": pulumi.Output.all(
                    config.object_name, account.object_name, secrets.checksums[render.CONSUMER]
                ).apply(deployment_spec)
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[config, *rollout_deps]),
        )
        service = KubeObject(
            f"{name}-service",
            api_version="v1",
            kind="Service",
            metadata=meta(ns, labels, name=render.SERVICE_NAME),
            body={"spec": render.service_spec(inp.port)},
            opts=child,
        )
        KubeObject(
            f"{name}-hpa",
            api_version="autoscaling/v2",
            kind="HorizontalPodAutoscaler",
            metadata=meta(ns, labels),
            body={
                "spec": deployment.object_name.apply(
                    lambda d: render.hpa_spec(
                        min_replicas=args.min_replicas,
                        max_replicas=args.max_replicas,
                        deployment=d,
                    )
                )
            },
            opts=child,
        )
        KubeObject(
            f"{name}-pdb",
            api_version="policy/v1",
            kind="PodDisruptionBudget",
            metadata=meta(ns, labels),
            body={"spec": render.pdb_spec(args.min_replicas)},
            opts=child,
        )
        KubeObject(
            f"{name}-netpol",
            api_version="networking.k8s.io/v1",
            kind="NetworkPolicy",
            metadata=meta(ns, labels),
            body={"spec": render.network_policy_spec(args.network)},
            opts=child,
        )
        KubeObject(
            f"{name}-route",
            api_version=render.GATEWAY_API_VERSION,
            kind="HTTPRoute",
            metadata=meta(ns, labels),
            body={"spec": render.http_route_spec(args.route)},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[service]),
        )
        # No ServiceMonitor: PostGraphile 4 exposes no metrics endpoint to scrape.

        self.url = pulumi.Output.from_input(f"{args.public_base_url}{inp.graphql_route}")
        self.service_address = service.object_name.apply(
            lambda svc: f"http://{svc}.{ns}.svc.cluster.local:{inp.port}{inp.graphql_route}"
        )
        self.deployment_name = deployment.object_name
        self.config_map_name = config.object_name
        self.secret_name = pulumi.Output.from_input(secret_name)
        self.register_outputs(
            {
                "url": self.url,
                "service_address": self.service_address,
                "deployment_name": self.deployment_name,
                "config_map_name": self.config_map_name,
                "secret_name": self.secret_name,
            }
        )

    def _jwks(self, name: str, ns: str, labels: dict[str, str], jwks_url: str) -> KubeObject:
        """The identity provider's JWKS, fetched exactly as for the REST APIs, into its Secret."""
        store = KubeObject(
            f"{name}-jwks-store",
            api_version=EXTERNAL_SECRETS_API_VERSION,
            kind="SecretStore",
            metadata=meta(ns, labels),
            body={"spec": jwks_secret_store_spec(jwks_url=jwks_url)},
            opts=pulumi.ResourceOptions(parent=self),
        )
        return KubeObject(
            f"{name}-jwks",
            api_version=EXTERNAL_SECRETS_API_VERSION,
            kind="ExternalSecret",
            metadata=meta(ns, labels),
            body={
                "spec": store.object_name.apply(
                    lambda store_name: jwks_external_secret_spec(
                        store_name=store_name,
                        target_secret=render.JWKS_SECRET,
                        secret_labels=labels,
                    )
                )
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[store]),
        )


def graphql_pilot_args(
    s: StackSettings,
    *,
    db_password: pulumi.Input[str],
    jwt_secret: pulumi.Input[str] | None,
) -> GraphqlPilotArgs:
    """Settings → args; ``jwt_secret`` must be the Output the REST APIs get, never a new one."""
    g = s.graphql
    return GraphqlPilotArgs(
        namespace=s.namespace,
        env=s.stack,
        vault=s.vault,
        postgraphile=inputs.postgraphile_input(s),
        package_files=read_package_files(),
        resources=pods.Resources(
            cpu_request=g.resources.requests.cpu,
            memory_request=g.resources.requests.memory,
            cpu_limit=g.resources.limits.cpu,
            memory_limit=g.resources.limits.memory,
        ),
        min_replicas=g.replicas.min,
        max_replicas=g.replicas.max,
        route=inputs.graphql_route_input(s),
        network=inputs.graphql_network_input(s),
        db_password=db_password,
        jwt_secret=jwt_secret if s.auth.mode == "hs256" else None,
        jwks_url=s.auth.jwks_url if s.auth.mode == "jwks" else None,
        public_base_url=s.public_base_url,
    )


def graphql_pilot_report(s: StackSettings) -> list[str]:
    """Summary lines of the offline render: where the pilot is and what it trusts."""
    if not s.graphql.enabled:
        return ["", "GraphQL pilot: off (graphql.enabled false; no postgraphile role)"]
    inp = inputs.postgraphile_input(s)
    keys = "HS256 via Vault" if inp.jwt_secret is not None else f"JWKS from {s.auth.jwks_url}"
    return [
        "",
        f"GraphQL pilot (PostGraphile {POSTGRAPHILE_VERSION}): "
        f"{s.public_base_url}{inp.graphql_route} -> {render.SERVICE_NAME}:{inp.port} "
        f"(schemas {', '.join(inp.schemas)})",
        f"  pool {inp.db_name} @ {inp.db_host} as {inp.db_user}; replicas "
        f"{s.graphql.replicas.min}..{s.graphql.replicas.max}; keys: {keys}; "
        f"GraphiQL {'on' if inp.graphiql else 'off'}; npm from {s.graphql.npm_registry}",
    ]
