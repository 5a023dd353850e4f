"""CrossGuard pack: the rules of ``policy/rules.py`` as mandatory Pulumi policies.

    pulumi preview --stack prod --policy-pack policy

The environment whose rules apply comes from the stack name in each resource's URN (``staging``
→ staging, any other stack → prod) unless the policy config sets ``environment``, e.g.
``--policy-pack-config`` with ``{"database-tls": {"environment": "staging"}}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The CLI runs this file with policy/ as the program root; the rules are imported as the
# package ``policy.rules`` (as the tests do), so the repository root goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policy import rules

CONFIG_SCHEMA = PolicyConfigSchema(
    properties={
        "environment": {
            "type": "string",
            "enum": list(rules.ENVIRONMENTS),
            "description": "Rules of this environment; default: derived from the stack name.",
        }
    }
)


def _environment(urn: str, config: object) -> rules.Environment:
    override = config.get("environment") if isinstance(config, dict) else None
    return rules.environment_of(rules.stack_of_urn(urn), override)


def resource_policy(rule: rules.Rule) -> ResourceValidationPolicy:
    check = rule.check
    if check is None:
        raise ValueError(f"{rule.name}: not a resource rule")

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        environment = _environment(args.urn, dict(args.get_config()))
        for message in check(args.resource_type, args.props, environment):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=CONFIG_SCHEMA,
    )


def stack_policy(rule: rules.Rule) -> StackValidationPolicy:
    check = rule.stack_check
    if check is None:
        raise ValueError(f"{rule.name}: not a stack rule")

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        urn = args.resources[0].urn if args.resources else ""
        environment = _environment(urn, dict(args.get_config()))
        resources = [(r.resource_type, r.name, r.props) for r in args.resources]
        for message in check(resources, environment):
            report_violation(message, None)

    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=CONFIG_SCHEMA,
    )


def policies() -> list[ResourceValidationPolicy | StackValidationPolicy]:
    """One mandatory policy per rule, in the order of ``rules.RULES``."""
    return [
        resource_policy(rule) if rule.check is not None else stack_policy(rule)
        for rule in rules.RULES
    ]


if __name__ == "__main__":
    # The analyzer runs this file as __main__; the constructor serves the pack until stopped.
    PolicyPack(
        name="pgplatform-security",
        enforcement_level=EnforcementLevel.MANDATORY,
        policies=list(policies()),
    )
