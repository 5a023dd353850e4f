"""pgaudit settings of the database Cluster (docs/audit.md).

pgaudit writes to the server log; CloudNativePG's instance manager emits each server log line
as a JSON record on the pod's stdout, pgaudit's parsed into fields (``logger: pgaudit``), for
the cluster's log shipper. Setting any ``pgaudit.*`` parameter is enough there: the operator
adds the library to ``shared_preload_libraries`` and creates the extension in every database,
so neither appears here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# pgaudit's statement classes (pgaudit.log), as its documentation names them.
PGAUDIT_CLASSES: Final = ("read", "write", "function", "role", "ddl", "misc", "misc_set")
# What the standard asks of every production database: schema and privilege changes.
REQUIRED_IN_PROD: Final = ("ddl", "role")


def pgaudit_parameters(classes: Sequence[str]) -> dict[str, str]:
    """``postgresql.parameters`` entries for pgaudit logging ``classes`` (session audit).

    Bind parameters stay out of the log (``log_parameter``: they carry request data and
    secrets), and so do statements that only read the catalog (``log_catalog``: every psql
    ``\\d`` and driver introspection would otherwise flood it). Role passwords in statements
    are redacted by pgaudit itself.
    """
    unknown = sorted(set(classes) - set(PGAUDIT_CLASSES))
    if not classes or unknown:
        raise ValueError(
            f"classes: {list(classes)!r}; allowed: a non-empty list of {list(PGAUDIT_CLASSES)}"
        )
    ordered = [name for name in PGAUDIT_CLASSES if name in classes]
    return {
        "pgaudit.log": ", ".join(ordered),
        "pgaudit.log_catalog": "off",
        "pgaudit.log_parameter": "off",
        "pgaudit.log_relation": "off",
    }
