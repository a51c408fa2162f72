"""Annotator accounts: a JSON file of salted scrypt password hashes, and the check Gradio's login calls.

`python -m annotate add-user --users users.json --name alice [--admin] [--password PW]` adds or updates one
account (password from --password, else a prompt, else one line of stdin). The file never holds a password,
only scrypt(password, salt) with a fresh random salt per user; it is replaced atomically on every write.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from annotate.schema import SchemaError

# scrypt cost: n=2**14, r=8 takes ~30 ms and 16 MiB per check; enough against offline guessing of a leaked
# file, cheap enough that a login per session is not felt.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


@dataclass(frozen=True)
class User:
    name: str
    salt: str  # hex
    hash: str  # hex scrypt digest
    admin: bool = False


def hash_password(password: str, salt: bytes, params: dict | None = None) -> str:
    p = params or SCRYPT
    return hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 1024 * 1024, **p).hex()


def load_users(path: str | Path) -> dict[str, User]:
    """Read a users file; SchemaError names the file and the entry on bad content."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such users file (create it with `python -m annotate add-user`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    users = {}
    for name, entry in (data.get("users") or {}).items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("salt", "hash")):
            raise SchemaError(f"{path}: user {name!r}: fields 'salt' and 'hash' must be strings")
        users[name] = User(name, entry["salt"], entry["hash"], bool(entry.get("admin", False)))
    return users


def save_users(users: dict[str, User], path: str | Path) -> None:
    path = Path(path)
    data = {
        "scrypt": SCRYPT,
        "users": {u.name: {"salt": u.salt, "hash": u.hash, "admin": u.admin} for u in users.values()},
    }
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)  # hashes are still worth protecting
    os.replace(tmp, path)


def add_user(path: str | Path, name: str, password: str, *, admin: bool = False) -> User:
    """Add or update `name` (new salt each time)."""
    if not name.strip() or name != name.strip():
        raise SchemaError(f"user name {name!r}: must be non-empty with no surrounding spaces")
    if len(password) < 4:
        raise SchemaError(f"user {name!r}: password too short (at least 4 characters)")
    users = load_users(path) if Path(path).exists() else {}
    salt = secrets.token_bytes(16)
    users[name] = User(name, salt.hex(), hash_password(password, salt), admin)
    save_users(users, path)
    return users[name]


def verify(users: dict[str, User], name: str, password: str) -> bool:
    """Constant-time check of a password (also spends the hashing time for unknown names)."""
    user = users.get(name)
    salt = bytes.fromhex(user.salt) if user else b"\0" * 16
    digest = hash_password(password or "", salt)
    return user is not None and hmac.compare_digest(digest, user.hash)


class Authenticator:
    """Callable for `gr.Blocks.launch(auth=...)`; re-reads the file when it changes (add users live)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._mtime = -1.0
        self.users: dict[str, User] = {}
        self._refresh()

    def _refresh(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime != self._mtime:
            self.users, self._mtime = load_users(self.path), mtime

    def __call__(self, name: str, password: str) -> bool:
        self._refresh()
        return verify(self.users, name, password)

    def is_admin(self, name: str | None) -> bool:
        self._refresh()
        return bool(name) and name in self.users and self.users[name].admin


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", required=True, help="users file (JSON; created if missing)")
    parser.add_argument("--name", required=True, help="annotator name (the login)")
    parser.add_argument("--admin", action="store_true", help="may see the Export and Dashboard tabs")
    parser.add_argument("--password", help="password (default: prompt, or one line from stdin)")


def main(args: argparse.Namespace) -> int:
    password = args.password
    if password is None:
        password = getpass.getpass(f"password for {args.name}: ") if sys.stdin.isatty() else sys.stdin.readline()
        password = password.rstrip("\n")
    add_user(args.users, args.name, password, admin=args.admin)
    print(f"{args.users}: user {args.name!r} saved{' (admin)' if args.admin else ''}")
    return 0
