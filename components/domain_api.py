"""DomainApi: one PostgREST per domain schema, behind the gateway, with secrets from Vault."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_random as random

from components import inputs
from components.k8s import KubeObject, meta
from components.render import domain_api as render
from components.render.postgrest import (
    POSTGREST_VERSION,
    PostgrestConfInput,
    render_postgrest_conf,
)
from components.render.secrets import (
    EXTERNAL_SECRETS_API_VERSION,
    jwks_external_secret_spec,
    jwks_secret_store_spec,
)
from components.settings import StackSettings, VaultSettings
from components.workload import StatelessWorkload, VaultAccountSpec, WorkloadRefs, deploy

JWT_SECRET_LENGTH = 64
"""Generated HS256 secret length (alphanumeric, ~380 bits); PostgREST needs at least 32."""


def jwt_signing_secret(
    s: StackSettings, opts: pulumi.ResourceOptions | None = None
) -> pulumi.Output[str] | None:
    """The stack's HS256 secret (``auth.mode`` hs256): ``pgplatform:jwtSecret`` or generated.

    One secret per stack, shared by every API that verifies tokens (each gets its own copy in
    its Vault secret). ``None`` in jwks mode, where the identity provider's keys are used.
    """
    if s.auth.mode != "hs256":
        return None
    if s.jwt_secret is not None:
        return pulumi.Output.secret(s.jwt_secret.get_secret_value())
    generated = random.RandomPassword(
        "jwt-secret", length=JWT_SECRET_LENGTH, special=False, opts=opts
    )
    return pulumi.Output.secret(generated.result)


def api_resource_name(domain: str) -> str:
    """Logical name of a domain's DomainApi (children are ``<name>-<part>``)."""
    return f"{render.dns_name(domain)}-api"


def domain_api_args(
    s: StackSettings,
    domain: str,
    *,
    db_password: pulumi.Input[str],
    jwt_secret: pulumi.Input[str] | None,
    database: inputs.DatabaseHost | None = None,
) -> DomainApiArgs:
    """Stack settings of ``domain`` mapped onto the component's args (``database``: the host of
    the CDC copies, for a domain that serves them)."""
    return DomainApiArgs(
        spec=inputs.domain_api_spec(s, domain, database),
        conf=inputs.postgrest_conf_input(s, domain, database),
        env=s.stack,
        vault=s.vault,
        db_password=db_password,
        jwt_secret=jwt_secret,
        jwks_url=s.auth.jwks_url if s.auth.mode == "jwks" else None,
        public_url=inputs.domain_public_url(s, domain),
    )


def domain_api_report(s: StackSettings) -> list[str]:
    """Summary lines of the render: per domain, the route, pool, scaling and objects."""
    lines = ["", "Domain APIs (PostgREST " + POSTGREST_VERSION + "):"]
    keys = "JWKS via webhook ExternalSecret" if s.auth.mode == "jwks" else "HS256 via Vault"
    objects = "ServiceAccount, ConfigMap, Deployment, Service, HPA, PDB, NetworkPolicy, "
    objects += "HTTPRoute, Vault KV/policy/role, SecretStore, ExternalSecret"
    if s.auth.mode == "jwks":
        objects += ", JWKS SecretStore + ExternalSecret"
    copies = s.copy_domains()
    for domain, d in s.domains.items():
        if domain in copies:
            source = f"database {s.cdc.database} on the read replicas, direct (CDC copies)"
        else:
            conf = inputs.postgrest_conf_input(s, domain)
            source = f"pool {conf.db_name} @ {conf.db_host}"
        budget = ", ".join(f"{k} {v}" for k, v in render.disruption_budget(d.replicas.min).items())
        lines += [
            f"  {domain}: {inputs.domain_public_url(s, domain)} -> "
            f"{render.service_name(domain)}:{render.HTTP_PORT} (schema {s.schema_of(domain)})",
            f"    {source}; replicas {d.replicas.min}..{d.replicas.max} (cpu {d.cpu_target}%"
            + (f", {d.rps_target} rps/pod" if d.rps_target else "")
            + f"); PDB {budget}; keys: {keys}",
            f"    objects: {objects}",
        ]
    return lines


@dataclass(frozen=True, kw_only=True)
class DomainApiArgs:
    """One domain API: manifest inputs, ``postgrest.conf`` inputs and where secrets come from."""

    spec: render.DomainApiSpec
    conf: PostgrestConfInput
    env: str
    """Stack name, part of the Vault KV path."""
    vault: VaultSettings
    db_password: pulumi.Input[str]
    """Password of the authenticator ``postgrest`` (delivered through Vault, never in a file)."""
    jwt_secret: pulumi.Input[str] | None = None
    """HS256 secret; required with ``auth_mode`` hs256, refused with jwks."""
    jwks_url: str | None = None
    """Identity provider JWKS URL; required with ``auth_mode`` jwks."""
    public_url: str

    def __post_init__(self) -> None:
        jwks = self.spec.auth_mode == "jwks"
        if jwks and not self.jwks_url:
            raise ValueError("jwks_url: required when spec.auth_mode is 'jwks'")
        if not jwks and self.jwt_secret is None:
            raise ValueError("jwt_secret: required when spec.auth_mode is 'hs256'")
        if jwks and self.jwt_secret is not None:
            raise ValueError("jwt_secret: not used when spec.auth_mode is 'jwks'; leave it unset")
        if self.conf.jwt_secret_file != self.spec.jwt_file:
            raise ValueError(
                f"conf.jwt_secret_file: {self.conf.jwt_secret_file!r} is not where the pod "
                f"mounts the {self.spec.auth_mode} key ({self.spec.jwt_file!r})"
            )
        if self.conf.domain != render.dns_name(self.spec.domain):
            raise ValueError(
                f"conf.domain: {self.conf.domain!r} is not domain {self.spec.domain!r}"
            )
        if self.conf.server_port != render.HTTP_PORT or (
            self.conf.admin_server_port != render.ADMIN_PORT
        ):
            raise ValueError(
                f"conf.server_port/admin_server_port: the pod exposes "
                f"{render.HTTP_PORT}/{render.ADMIN_PORT}"
            )
        if not self.public_url.startswith("https://"):
            raise ValueError(f"public_url: must be https, got {self.public_url!r}")


class DomainApi(pulumi.ComponentResource):
    """PostgREST for one schema: workload, Service, autoscaling, budget, network policy, route."""

    url: pulumi.Output[str]
    """Public base URL of the API (gateway route)."""
    service_address: pulumi.Output[str]
    """In-cluster URL of the API Service."""
    service_name: pulumi.Output[str]
    """Name of the Service (``<domain>-api``)."""
    deployment_name: pulumi.Output[str]
    """Name of the PostgREST Deployment (``<domain>-api``)."""
    config_map_name: pulumi.Output[str]
    """Generated name of the ConfigMap holding ``postgrest.conf``."""
    secret_name: pulumi.Output[str]
    """Kubernetes Secret (from Vault) holding the authenticator password."""

    def __init__(
        self, name: str, args: DomainApiArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("pgplatform:index:DomainApi", name, None, opts)
        spec = args.spec
        ns = spec.namespace
        labels = render.pod_labels(spec.domain)
        workload_name = render.service_name(spec.domain)

        values: dict[str, pulumi.Input[str]] = {render.PASSWORD_KEY: args.db_password}
        if args.jwt_secret is not None:
            values[render.JWT_SECRET_KEY] = args.jwt_secret
        rollout_after: list[pulumi.Resource] = []
        if spec.auth_mode == "jwks":
            rollout_after.append(self._jwks(name, spec, labels, args.jwks_url or ""))
        conf = render_postgrest_conf(args.conf)
        conf_checksum = render.conf_checksum(conf)

        def deployment(refs: WorkloadRefs) -> dict[str, Any]:
            return render.deployment_body(
                spec,
                conf=args.conf,
                config_map=refs.config_map,
                service_account=refs.service_account,
                secret_name=refs.secret_name,
                conf_checksum=conf_checksum,
                secrets_checksum=refs.secrets_checksum,
            )

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
                    consumer=render.consumer_name(spec.domain),
                    values=values,
                    body=render.service_account_body(),
                ),
                config={render.CONF_KEY: conf},
                deployment=deployment,
                service_name=workload_name,
                service=render.service_body(spec),
                hpa=render.hpa_body(spec, deployment=workload_name),
                pdb=render.pdb_body(spec),
                network_policy=render.network_policy_body(spec),
                rollout_after=rollout_after,
            ),
        )
        KubeObject(
            f"{name}-route",
            api_version=render.GATEWAY_API_VERSION,
            kind="HTTPRoute",
            # Fixed name: the gateway's metrics carry it and the API alerts select on it.
            metadata=meta(ns, labels, name=workload_name),
            body=render.http_route_body(spec),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[workload.service]),
        )

        self.url = pulumi.Output.from_input(args.public_url)
        self.service_name = workload.service.object_name
        self.service_address = workload.service.object_name.apply(
            lambda svc: f"http://{svc}.{ns}.svc.cluster.local:{render.HTTP_PORT}"
        )
        self.deployment_name = workload.deployment.object_name
        self.config_map_name = workload.config.object_name
        self.secret_name = pulumi.Output.from_input(workload.secret_name)
        self.register_outputs(
            {
                "url": self.url,
                "service_address": self.service_address,
                "service_name": self.service_name,
                "deployment_name": self.deployment_name,
                "config_map_name": self.config_map_name,
                "secret_name": self.secret_name,
            }
        )

    def _jwks(
        self, name: str, spec: render.DomainApiSpec, labels: dict[str, str], jwks_url: str
    ) -> KubeObject:
        """Prod keys: the identity provider's JWKS fetched into ``<domain>-postgrest-jwks``."""
        ns = spec.namespace
        target = render.jwks_secret_name(spec.domain)
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
                    store_name=store.object_name, target_secret=target, secret_labels=labels
                )
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[store]),
        )
