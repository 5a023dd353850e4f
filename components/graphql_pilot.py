"""GraphqlPilot: PostGraphile on the identity schema, with the REST APIs' JWTs and policies.

The pilot adds no authorization of its own. It logs in as its own NOINHERIT authenticator
``postgraphile`` (created by the access plan when ``graphql.enabled``) through PgBouncer's rw
pool, verifies the same tokens as PostgREST (the stack's one HS256 secret, or the identity
provider's JWKS fetched from the same ``auth.jwksUrl``) and hands the database the same
``role`` + ``request.jwt.claims`` + ``platform.pre_request()`` context, so the row level
security policies of the schema decide everything (docs/graphql-pilot.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from components import inputs
from components.k8s import KubeObject, meta
from components.render import graphql_workload as render
from components.render import pods
from components.render.checksum import content_checksum
from components.render.postgraphile import POSTGRAPHILE_VERSION, PostgraphileInput
from components.render.secrets import (
    EXTERNAL_SECRETS_API_VERSION,
    jwks_external_secret_spec,
    jwks_secret_store_spec,
)
from components.settings import StackSettings, VaultSettings
from components.vault_secrets import secret_name_of
from components.workload import StatelessWorkload, VaultAccountSpec, WorkloadRefs, deploy


@dataclass(frozen=True, kw_only=True)
class GraphqlPilotArgs:
    """The PostGraphile container, its pod, route and network reach, and its secrets' sources."""

    namespace: str
    env: str
    """Stack name, part of the Vault KV path."""
    vault: VaultSettings
    postgraphile: PostgraphileInput
    image: str
    """The pilot image built from ``components/graphql/Dockerfile`` (``graphql.image``)."""
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
    """Name of the PostGraphile Deployment (``graphql-api``)."""
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
        inp = args.postgraphile

        values: dict[str, pulumi.Input[str]] = {render.PASSWORD_KEY: args.db_password}
        if args.jwt_secret is not None:
            values[render.JWT_SECRET_KEY] = args.jwt_secret
        rollout_after: list[pulumi.Resource] = []
        if args.jwks_url is not None:
            rollout_after.append(self._jwks(name, ns, labels, args.jwks_url))
        data = render.config_map_data(inp)
        config_checksum = content_checksum(*(f"{key}\n{data[key]}" for key in sorted(data)))

        def deployment(refs: WorkloadRefs) -> dict[str, Any]:
            return {
                "spec": render.deployment_spec(
                    render.GraphqlWorkloadInput(
                        postgraphile=inp,
                        config_map=refs.config_map,
                        service_account=refs.service_account,
                        secret_name=refs.secret_name,
                        jwks_secret=render.JWKS_SECRET if args.jwks_url is not None else None,
                        image=args.image,
                        resources=args.resources,
                        min_replicas=args.min_replicas,
                        max_replicas=args.max_replicas,
                        config_checksum=config_checksum,
                        secrets_checksum=refs.secrets_checksum,
                    )
                )
            }

        workload_name = render.SERVICE_NAME
        workload = deploy(
            self,
            name,
            StatelessWorkload(
                name=workload_name,
                account=VaultAccountSpec(
                    name=workload_name,
                    namespace=ns,
                    labels=labels,
                    env=args.env,
                    vault=args.vault,
                    consumer=render.CONSUMER,
                    values=values,
                    body=render.service_account_spec(),
                ),
                config=data,
                deployment=deployment,
                service_name=render.SERVICE_NAME,
                service={"spec": render.service_spec(inp.port, inp.metrics_port)},
                hpa={
                    "spec": render.hpa_spec(
                        min_replicas=args.min_replicas,
                        max_replicas=args.max_replicas,
                        deployment=workload_name,
                    )
                },
                pdb={"spec": render.pdb_spec(args.min_replicas)},
                network_policy={"spec": render.network_policy_spec(args.network)},
                rollout_after=rollout_after,
            ),
        )
        service = workload.service
        KubeObject(
            f"{name}-route",
            api_version=render.GATEWAY_API_VERSION,
            kind="HTTPRoute",
            # Fixed name, like the REST APIs' routes: the gateway's metrics carry it.
            metadata=meta(ns, labels, name=render.SERVICE_NAME),
            body={"spec": render.http_route_spec(args.route)},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[service]),
        )
        # The ServiceMonitor of the metrics port lives with every other monitor, in
        # ObservabilityStack (its alerts select the job it gives the series).

        self.url = pulumi.Output.from_input(f"{args.public_base_url}{inp.graphql_route}")
        self.service_address = service.object_name.apply(
            lambda svc: f"http://{svc}.{ns}.svc.cluster.local:{inp.port}{inp.graphql_route}"
        )
        self.deployment_name = workload.deployment.object_name
        self.config_map_name = workload.config.object_name
        self.secret_name = pulumi.Output.from_input(workload.secret_name)
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
                "spec": jwks_external_secret_spec(
                    store_name=store.object_name,
                    target_secret=render.JWKS_SECRET,
                    secret_labels=labels,
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
        image=inputs.graphql_image(s),
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
        f"GraphiQL {'on' if inp.graphiql else 'off'}; image {inputs.graphql_image(s)}",
    ]
