"""Stable content checksums for pod-template annotations.

A Deployment only rolls its pods when the pod template changes. Rendering the checksum of every
file a container reads at start-up (postgrest.conf, pgbouncer.ini, ...) into an annotation turns
"the config changed" into "the template changed", so Kubernetes restarts the pods for us.
"""

from __future__ import annotations

import hashlib


def content_checksum(*texts: str) -> str:
    """Return the sha256 hex digest over ``texts`` in order.

    Each part is length-prefixed, so ``("ab", "c")`` and ``("a", "bc")`` never collide, and the
    digest depends only on the text (no timestamps, no ordering of dicts), so an unchanged
    render never restarts pods.
    """
    if not texts:
        raise ValueError("content_checksum needs at least one text")
    digest = hashlib.sha256()
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"content_checksum part {index} must be str, got {type(text).__name__}")
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()
