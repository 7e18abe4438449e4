"""Write docker/.env from docker/.env.example with fresh random secrets (standard library only).

    python3 docker/make_env.py            # docker/.env (refuses to overwrite one)
    python3 docker/make_env.py --force    # replace it: new passwords, so only on a new stack
    python3 docker/make_env.py --output /path/.env

Every `change-me` placeholder gets a random value: 48 hex digits (URL-safe, since the
passwords go into connection URLs), a Fernet key for AIRFLOW_FERNET_KEY. DOCKER_GID is
read from the Docker socket when there is one. The file is written with mode 0600.
PostgreSQL reads the passwords only when its data volume is empty: changing them later
needs `docker compose down -v` (which deletes the data) or an ALTER ROLE by hand.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDER = "change-me"


def secret_for(name: str) -> str:
    if name == "AIRFLOW_FERNET_KEY":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return secrets.token_hex(24)


def render(example: str, *, docker_gid: int | None) -> str:
    """The example's lines with placeholders filled; comments and other values kept."""
    lines = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and value == PLACEHOLDER:
            lines.append(f"{name}={secret_for(name)}")
        elif sep and name == "DOCKER_GID" and docker_gid is not None:
            lines.append(f"{name}={docker_gid}")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def socket_gid(path: str) -> int | None:
    try:
        return os.stat(path).st_gid
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", type=Path, default=HERE / ".env.example")
    parser.add_argument("--output", type=Path, default=HERE / ".env")
    parser.add_argument("--docker-socket", default="/var/run/docker.sock")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.force:
        print(f"{args.output} exists; keep it (its passwords are in the database already) "
              "or pass --force", file=sys.stderr)
        return 1
    text = render(args.example.read_text(), docker_gid=socket_gid(args.docker_socket))
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(args.output, 0o600)  # O_CREAT's mode does not apply to an existing file
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
