"""Rolling pods when a Vault-delivered secret changes, without racing the External Secrets sync.

An environment variable filled from a Secret (``PGPASSWORD``) is read once, when the container
starts, so a rotated value must restart the pods. Three pieces make that safe:

* :func:`values_checksum` is an HMAC of the secret values under a random key that only Pulumi's
  encrypted state holds. It goes into a pod-template annotation (so the Deployment rolls when
  a value changes) and into the annotations of the ExternalSecret (so the operator re-syncs at
  once instead of at the next refresh interval). A plain hash would let anyone who can read a
  Deployment test guesses of a low-entropy value offline; the keyed HMAC reveals nothing.
* The same checksum is written into the Vault secret itself, under :data:`CHECKSUM_KEY`, so the
  Kubernetes Secret carries the checksum of the values it holds.
* :func:`wait_for_secret_container` is an init container that compares the two and exits
  non-zero until they match. The kubelet retries it with back-off and resolves Secret-backed
  env vars again on every start, so the main container only starts once the Secret holds the
  values the pod template was rendered for: a pod can never come up with the old password.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any, Final

CHECKSUM_KEY: Final = "checksum"
"""Key of the values checksum inside the Vault secret and the synced Kubernetes Secret."""

SECRETS_CHECKSUM_ANNOTATION: Final = "pgplatform.io/secrets-checksum"
"""Pod-template (and ExternalSecret) annotation carrying :func:`values_checksum`."""

MIN_KEY_LENGTH: Final = 32

_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_ANNOTATION = re.compile(
    r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


def values_checksum(key: str, values: Mapping[str, str]) -> str:
    """Return HMAC-SHA256 (hex) of ``values`` under ``key``; order of the mapping is irrelevant.

    The message is canonical JSON (sorted keys), so equal values always give the same checksum
    and an unchanged deploy never restarts pods.
    """
    if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"values_checksum.key: needs at least {MIN_KEY_LENGTH} characters")
    if not values:
        raise ValueError("values_checksum.values: needs at least one value")
    for name, value in values.items():
        if not isinstance(name, str) or not _SECRET_KEY.fullmatch(name):
            raise ValueError(f"values_checksum.values: {name!r} is not a Secret key")
        if name == CHECKSUM_KEY:
            raise ValueError(f"values_checksum.values: {CHECKSUM_KEY!r} is reserved")
        if not isinstance(value, str):
            raise ValueError(f"values_checksum.values[{name!r}]: must be a string")
    message = json.dumps(dict(values), sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


WAIT_SCRIPT: Final = "\n".join(
    [
        'if [ -n "${EXPECTED_CHECKSUM:-}" ] \\',
        '  && [ "${ACTUAL_CHECKSUM:-}" = "$EXPECTED_CHECKSUM" ]; then',
        '  echo "secret $SECRET_NAME is in sync (checksum $EXPECTED_CHECKSUM)"',
        "  exit 0",
        "fi",
        'echo "secret $SECRET_NAME not synced yet (have ${ACTUAL_CHECKSUM:-none},'
        ' want ${EXPECTED_CHECKSUM:-none}); retrying" >&2',
        "sleep 5",
        "exit 1",
        "",
    ]
)
"""Exit 0 only when the Secret's checksum equals the pod's annotation; the kubelet retries."""


def wait_for_secret_container(
    secret_name: str,
    *,
    image: str,
    security_context: Mapping[str, Any],
    annotation: str = SECRETS_CHECKSUM_ANNOTATION,
    name: str = "wait-for-secrets",
) -> dict[str, Any]:
    """Return the init container that holds the pod until ``secret_name`` has the new values.

    ``EXPECTED_CHECKSUM`` comes from the pod's own annotation through the downward API, so the
    checksum is written once (in the annotation) and the container needs no API access.
    """
    if not _SECRET_NAME.fullmatch(secret_name):
        raise ValueError(f"wait_for_secret_container.secret_name: invalid name {secret_name!r}")
    if not _ANNOTATION.fullmatch(annotation):
        raise ValueError(f"wait_for_secret_container.annotation: invalid key {annotation!r}")
    if ":" not in image or image.endswith((":latest", ":")):
        raise ValueError(f"wait_for_secret_container.image: pin a version, got {image!r}")
    return {
        "name": name,
        "image": image,
        "command": ["sh", "-c", WAIT_SCRIPT],
        "env": [
            {"name": "SECRET_NAME", "value": secret_name},
            {
                "name": "ACTUAL_CHECKSUM",
                "valueFrom": {"secretKeyRef": {"name": secret_name, "key": CHECKSUM_KEY}},
            },
            {
                "name": "EXPECTED_CHECKSUM",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{annotation}']"}},
            },
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "8Mi"},
            "limits": {"cpu": "50m", "memory": "16Mi"},
        },
        "securityContext": dict(security_context),
    }
