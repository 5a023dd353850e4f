"""What holds data is never deleted by Pulumi unless the stack says so (``protectData``).

A ``pulumi destroy``, a resource removed from the program, or a logical rename without an alias
(Pulumi creates the new resource, then deletes the old one) would otherwise delete:

- the CloudNativePG ``Cluster``: the operator garbage-collects its PVCs with it (they carry the
  Cluster as owner; CloudNativePG has no PVC retention policy), so the database is gone;
- the Barman Cloud plugin's ``ObjectStore``: WAL archiving and every backup stop;
- the Vault KV v2 entries: they are written with ``delete_all_versions``, so a delete wipes every
  version, including the one a rename has just written to the same path;
- the pulumi-postgresql ``Schema`` resources: the tables of an external database live in them;
- our PersistentVolumeClaims (the audit export's spool): audit lines the SIEM's forwarder has not
  read yet, and the export's position, without which it starts over (duplicates at the SIEM).

With ``protectData`` on (prod's default) each of them is registered with ``protect`` (the engine
refuses the delete and names the resource) and ``retain_on_delete`` (once someone lifts the
protection, a delete only makes Pulumi forget the object: the data stays and can be imported
again). A stack-wide resource transformation applies both, so a component that adds such a
resource is covered without knowing about it, and this table is the one place that decides.
"""

from __future__ import annotations

from typing import Final

import pulumi

STATEFUL_TYPES: Final = frozenset(
    {
        "kubernetes:postgresql.cnpg.io/v1:Cluster",
        "kubernetes:barmancloud.cnpg.io/v1:ObjectStore",
        "vault:kv/secretV2:SecretV2",
        "postgresql:index/schema:Schema",
        "kubernetes:core/v1:PersistentVolumeClaim",
    }
)
"""Type tokens of the resources that hold data (see the module docstring for why each)."""


def protect_stateful(
    args: pulumi.ResourceTransformationArgs,
) -> pulumi.ResourceTransformationResult | None:
    """Add ``protect`` and ``retain_on_delete`` to a resource of ``STATEFUL_TYPES``."""
    if args.type_ not in STATEFUL_TYPES:
        return None
    return pulumi.ResourceTransformationResult(
        props=args.props,
        opts=pulumi.ResourceOptions.merge(
            args.opts, pulumi.ResourceOptions(protect=True, retain_on_delete=True)
        ),
    )


def protection_options(enabled: bool) -> pulumi.ResourceOptions:
    """Options for every component of the stack: children inherit the transformation."""
    return pulumi.ResourceOptions(transformations=[protect_stateful] if enabled else [])


def protection_report(enabled: bool) -> str:
    """One line of the offline render's summary: what a destroy would leave alone."""
    if not enabled:
        return "Protection: off (protectData false): a destroy deletes what holds data"
    kinds = ", ".join(sorted(t.rsplit(":", 1)[-1] for t in STATEFUL_TYPES))
    return f"Protection: protect + retain_on_delete on every {kinds} (protectData)"
