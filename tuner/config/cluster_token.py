"""A Ray cluster's own token: `python -m tuner.config.cluster_token PATH [--force]`.

Writes 32 random bytes as 64 hex digits (the format of `ray get-auth-token --generate`) to PATH,
readable and writable by its owner only (mode 0600, in a folder of mode 0700 when it creates one).
The file appears whole or not at all: the token goes to a temporary file beside PATH, created with
mode 0600 (never readable by others, not even for a moment), flushed to disk, then linked to PATH,
which fails if PATH exists. An existing token is never overwritten without --force, which then
replaces it atomically (a rotation); the old token keeps working until the nodes get the new file.

Never point it at ~/.ray/auth_token: that file is the account's own token, which Ray makes for every
local study and which `ray get-auth-token --generate` reuses. docs/cluster.md says how to make, mount,
rotate and revoke a cluster's token. The token itself is never printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import uuid
from pathlib import Path

SHARED_TOKEN = Path("~/.ray/auth_token")  # the account's own token: never a cluster's


class TokenError(Exception):
    pass


def write_token(path: str | os.PathLike, force: bool = False) -> Path:
    """Write a fresh token to `path` (mode 0600); refuse an existing file unless `force`."""
    path = Path(path).expanduser()
    if path.resolve() == SHARED_TOKEN.expanduser().resolve():
        raise TokenError(f"{path} is the account's shared Ray token (every local study uses it); "
                         "give the cluster a file of its own, e.g. ~/.gentune/gentune-lab.token")
    if path.is_dir():
        raise TokenError(f"{path} is a folder; give the path of the token file")
    if path.exists() and not force:
        raise TokenError(f"{path} exists; pass --force to replace it with a new token (a rotation)")
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)  # the umask may only remove bits: make it exactly 0600
            fh.write(secrets.token_hex(32))  # no newline, as Ray writes its own
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if PATH appeared meanwhile: never overwrite without --force
            except FileExistsError:
                raise TokenError(f"{path} exists; pass --force to replace it with a new token (a rotation)")
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuner.config.cluster_token",
        description="Write a fresh Ray token for one cluster to PATH (mode 0600), never the account's "
                    "~/.ray/auth_token. The token is not printed.")
    parser.add_argument("path", metavar="PATH", help="the token file, e.g. ~/.gentune/gentune-lab.token")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing token (a rotation: run `ray up` again to copy it to the nodes)")
    args = parser.parse_args(argv)
    try:
        path = write_token(args.path, force=args.force)
    except (TokenError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote a new token to {path} (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
