"""A role membership lent to the session for one transaction, in a psql script.

Some statements need a table's owner (publications, policies, ``ALTER TABLE``), and the
platform's tables belong to ``pgplatform_owner``, a NOLOGIN role. The admin role (the database
owner, CREATEROLE) may grant itself that membership in PostgreSQL 15; doing so inside the
script's transaction and revoking it before COMMIT leaves no standing membership, and an
admin that already is a member keeps its membership as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, kw_only=True)
class MembershipLoan:
    """``role`` lent to ``CURRENT_USER``; ``flag`` is the psql variable remembering the loan."""

    role: str
    flag: str = "lend_owner"

    def __post_init__(self) -> None:
        for field in ("role", "flag"):
            if not _IDENT.match(getattr(self, field)):
                raise ValueError(f"{field}: not an identifier, got {getattr(self, field)!r}")

    def check(self) -> list[str]:
        """Sets the flag when the current role is not a member yet (run as that role)."""
        return [f"SELECT NOT pg_catalog.pg_has_role('{self.role}', 'MEMBER') AS {self.flag} \\gset"]

    def grant(self) -> list[str]:
        """Inside the transaction, after :meth:`check`."""
        return [f"\\if :{self.flag}", f"GRANT {self.role} TO CURRENT_USER;", "\\endif"]

    def revoke(self) -> list[str]:
        """Before COMMIT: only a membership this script granted is taken back."""
        return [f"\\if :{self.flag}", f"REVOKE {self.role} FROM CURRENT_USER;", "\\endif"]
