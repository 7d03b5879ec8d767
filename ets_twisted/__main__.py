"""
C{python -m ets_twisted generate-secrets}: print fresh secrets as
shell-ready assignments, e.g. to append to an environment file.
"""

from __future__ import annotations

import secrets
import sys
from typing import TextIO

USAGE = "usage: python -m ets_twisted generate-secrets"

# 48 random bytes each, base64url: 64 characters that need no shell quoting.
_SECRET_BYTES = 48
_GENERATED = ("TVM_JWT_HS256_KEY", "UPSTREAM_SERVICE_SECRET")


def main(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """
    Run the command line.

    @param argv: the arguments after the program name (C{sys.argv[1:]}).
    @return: the exit status: 0, or 2 with a usage line for anything but
        C{generate-secrets}.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if argv != ["generate-secrets"]:
        print(USAGE, file=stderr)
        return 2
    for name in _GENERATED:
        print(f"{name}={secrets.token_urlsafe(_SECRET_BYTES)}", file=stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
