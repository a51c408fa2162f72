"""Annotator accounts, login sessions and login throttling.

`python -m annotate add-user --users users.json --name alice [--admin] [--password PW]` adds or updates one
account (password from --password, else a prompt, else one line of stdin); `python -m annotate remove-user
--users users.json --name alice` removes one. The file never holds a password, only scrypt(password, salt) with a
fresh random salt per user, plus a random `session_secret`; it is replaced atomically (mode 0600) on every write.

Sessions are stateless signed tokens (`Authenticator.issue`): base64(JSON {u, iat, exp, fp}) + "." + an
HMAC-SHA256 under the file's session_secret. Any app process reading the same users file accepts them (replicas,
failover, restarts). `fp` is keyed to the user's stored salt and hash, so removing a user or setting a new password
ends all of that user's sessions at once; nothing else can revoke one token early (logout only drops the cookie).

Login throttling (`Throttle`, `LoginThrottle`) is in memory and per process: a restart forgets it, and with several
replicas each one counts on its own (an attacker gets the allowance once per replica).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotate.schema import SchemaError

# scrypt cost: n=2**14, r=8 takes ~30 ms and 16 MiB per check; enough against offline guessing of a leaked
# file, cheap enough that a login per session is not felt.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
# Logins are shown in the UI, written into every vote and used as throttle keys: keep them plain.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MAX_PASSWORD = 1024  # longer ones are refused unhashed (scrypt's cost grows with the input)
SESSION_COOKIE = "prefkit-session"
SESSION_HOURS = 12.0


@dataclass(frozen=True)
class User:
    name: str
    salt: str  # hex
    hash: str  # hex scrypt digest
    admin: bool = False


def valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def _check_name(name: object, where: str = "") -> None:
    if not valid_name(name):
        raise SchemaError(
            f"{where}user name {name!r}: 1-64 characters of letters, digits and . _ @ -, starting with a letter or "
            "digit"
        )


def hash_password(password: str, salt: bytes, params: dict | None = None) -> str:
    p = params or SCRYPT
    return hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 1024 * 1024, **p).hex()


def _read_file(path: Path) -> tuple[dict[str, User], str | None]:
    """Users and session secret (None if the file has none yet)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such users file (create it with `python -m annotate add-user`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a JSON object")
    users = {}
    for name, entry in (data.get("users") or {}).items():
        _check_name(name, f"{path}: ")
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("salt", "hash")):
            raise SchemaError(f"{path}: user {name!r}: fields 'salt' and 'hash' must be strings")
        users[name] = User(name, entry["salt"], entry["hash"], bool(entry.get("admin", False)))
    secret = data.get("session_secret")
    if secret is not None and not (isinstance(secret, str) and re.fullmatch(r"[0-9a-f]{32,}", secret)):
        raise SchemaError(f"{path}: 'session_secret' must be a hex string of at least 32 digits")
    return users, secret


def load_users(path: str | Path) -> dict[str, User]:
    """Read a users file; SchemaError names the file and the entry on bad content."""
    return _read_file(Path(path))[0]


def save_users(users: dict[str, User], path: str | Path, *, session_secret: str | None = None) -> None:
    """Write atomically with mode 0600; keeps the file's session secret (or makes one) unless one is given."""
    path = Path(path)
    if session_secret is None and path.exists():
        try:
            session_secret = _read_file(path)[1]
        except SchemaError:
            session_secret = None
    data = {
        "scrypt": SCRYPT,
        "session_secret": session_secret or secrets.token_hex(32),
        "users": {u.name: {"salt": u.salt, "hash": u.hash, "admin": u.admin} for u in users.values()},
    }
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start: hashes and the session secret are never readable by others, even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def add_user(path: str | Path, name: str, password: str, *, admin: bool = False) -> User:
    """Add or update `name` (new salt each time, which ends the user's open sessions)."""
    _check_name(name)
    if len(password) < 4:
        raise SchemaError(f"user {name!r}: password too short (at least 4 characters)")
    if len(password) > MAX_PASSWORD:
        raise SchemaError(f"user {name!r}: password too long (at most {MAX_PASSWORD} characters)")
    users = load_users(path) if Path(path).exists() else {}
    salt = secrets.token_bytes(16)
    users[name] = User(name, salt.hex(), hash_password(password, salt), admin)
    save_users(users, path)
    return users[name]


def remove_user(path: str | Path, name: str) -> None:
    """Remove `name`; their sessions end at once. SchemaError if there is no such user."""
    users = load_users(path)
    if name not in users:
        raise SchemaError(f"{path}: no user {name!r}")
    del users[name]
    save_users(users, path)


def verify(users: dict[str, User], name: str, password: str) -> bool:
    """Constant-time check of a password (also spends the hashing time for unknown names)."""
    user = users.get(name)
    salt = bytes.fromhex(user.salt) if user else b"\0" * 16
    digest = hash_password(password or "", salt)
    return user is not None and hmac.compare_digest(digest, user.hash)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Password check, session tokens and admin flags from a users file, re-read when the file changes.

    The change check is one stat per call, so users can be added, removed or re-passworded while the app runs.
    `user_for_request` is the app's auth dependency (it reads the `prefkit-session` cookie).
    """

    cookie = SESSION_COOKIE

    def __init__(
        self, path: str | Path, session_hours: float = SESSION_HOURS, *, clock: Callable[[], float] = time.time
    ):
        if not session_hours > 0:
            raise ValueError(f"session_hours must be positive, got {session_hours}")
        self.path = Path(path)
        self.session_s = session_hours * 3600.0
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        # One tuple swapped whole, so readers on other threads never see users from one file and the key of another.
        self._state: tuple[dict[str, User], bytes] = ({}, b"")
        self._refresh(initial=True)

    @property
    def users(self) -> dict[str, User]:
        return self._refresh()[0]

    def _refresh(self, initial: bool = False) -> tuple[dict[str, User], bytes]:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            if initial:
                raise FileNotFoundError(
                    f"{self.path}: no such users file (create it with `python -m annotate add-user`)"
                ) from None
            stamp = None  # deleted while running: nobody can log in, every session ends
        if stamp == self._stamp and not initial:
            return self._state
        with self._lock:
            if stamp == self._stamp and not initial:
                return self._state
            if stamp is None:
                self._state, self._stamp = ({}, self._state[1]), None
                return self._state
            try:
                users, secret = _read_file(self.path)
                if secret is None:
                    secret = self._add_secret(users)
            except (SchemaError, OSError) as e:
                if initial:
                    raise
                # A half-edited file must not take the app down: keep serving the last good accounts.
                warnings.warn(f"{self.path}: not reloaded ({e}); keeping the previous users", stacklevel=2)
                self._stamp = stamp
                return self._state
            self._state, self._stamp = (users, bytes.fromhex(secret)), stamp
            return self._state

    def _add_secret(self, users: dict[str, User]) -> str:
        """A users file from before sessions: give it a secret so other processes share it."""
        try:
            save_users(users, self.path)
            secret = _read_file(self.path)[1]
        except OSError as e:
            secret = None
            warnings.warn(f"{self.path}: cannot add a session secret ({e}); sessions last only this process",
                          stacklevel=3)  # fmt: skip
        return secret or secrets.token_hex(32)

    def __call__(self, name: str, password: str) -> bool:
        return self.check_password(name, password)

    def check_password(self, name: str, password: str) -> bool:
        """scrypt check (~30 ms, blocking: call it off the event loop)."""
        if not valid_name(name) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        return verify(self._refresh()[0], name, password)

    def is_admin(self, name: str | None) -> bool:
        users = self._refresh()[0]
        return bool(name) and name in users and users[name].admin

    @staticmethod
    def _fingerprint(key: bytes, user: User) -> str:
        return hmac.new(key, f"fp:{user.salt}:{user.hash}".encode(), hashlib.sha256).hexdigest()[:16]

    def issue(self, name: str, *, now: float | None = None) -> str:
        """A session token for `name` (an existing user), valid for session_hours."""
        users, key = self._refresh()
        if name not in users:
            raise KeyError(f"no user {name!r}")
        iat = int(self.clock() if now is None else now)
        body = {"u": name, "iat": iat, "exp": iat + int(self.session_s), "fp": self._fingerprint(key, users[name])}
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return payload + "." + _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())

    def user_for_token(self, token: str | None, *, now: float | None = None) -> str | None:
        """The user a token was issued to, or None if it is forged, expired, or the user was removed/re-passworded."""
        if not token or len(token) > 1024 or token.count(".") != 1:
            return None
        users, key = self._refresh()
        payload, sig = token.split(".")
        try:
            # Compared as canonical text: a lenient base64 decoder would accept padded or junk-laden variants.
            expected = _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())
            if not hmac.compare_digest(expected.encode(), sig.encode("ascii")):
                return None
            body: Any = json.loads(_unb64(payload))
            name, iat, exp, fp = body["u"], body["iat"], body["exp"], body["fp"]
        except (ValueError, KeyError, TypeError, UnicodeError):
            return None
        t = self.clock() if now is None else now
        user = users.get(name) if isinstance(name, str) else None
        if user is None or not isinstance(exp, int) or not isinstance(iat, int) or not isinstance(fp, str):
            return None
        if not (iat - 300 <= t < exp):  # 5 min of clock skew between replicas
            return None
        return name if hmac.compare_digest(fp, self._fingerprint(key, user)) else None

    def user_for_request(self, request: Any) -> str | None:
        """The logged-in user of a Starlette/FastAPI request (its session cookie), else None."""
        return self.user_for_token(request.cookies.get(self.cookie))


class Throttle:
    """Exponential backoff per key: `free` failures cost nothing, then each locks the key for
    base_s * 2**(failures - free) seconds, at most cap_s. Keys quiet for forget_s start over.

    Thread-safe, in memory, per process (a restart forgets; replicas count separately). At most max_keys keys are
    kept (oldest dropped first), so a flood of made-up names cannot grow it without bound.
    """

    def __init__(
        self, free: int = 5, base_s: float = 1.0, cap_s: float = 900.0, forget_s: float = 3600.0,
        max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic,
    ):  # fmt: skip
        self.free, self.base_s, self.cap_s, self.forget_s = free, base_s, cap_s, forget_s
        self.max_keys, self.clock = max_keys, clock
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # key -> (failures, until, last)

    def lock_s(self, failures: int) -> float:
        """How long the key is locked right after its `failures`-th failure."""
        if failures < self.free:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - self.free, 64))

    def wait(self, key: str) -> float:
        """Seconds before `key` may try again (0.0: now)."""
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                return 0.0
            now = self.clock()
            if now - entry[2] > self.forget_s:
                del self._keys[key]
                return 0.0
            return max(0.0, entry[1] - now)

    def failure(self, key: str) -> float:
        """Count a failure; returns the lock it starts (seconds)."""
        with self._lock:
            now = self.clock()
            failures, _, last = self._keys.pop(key, (0, 0.0, now))
            if now - last > self.forget_s:
                failures = 0
            failures += 1
            lock = self.lock_s(failures)
            self._keys[key] = (failures, now + lock, now)  # re-inserted at the end: newest
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            return lock

    def failures(self, key: str) -> int:
        with self._lock:
            return self._keys.get(key, (0, 0.0, 0.0))[0]

    def reset(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)


class LoginThrottle:
    """The login policy: per user name (5 free failures) and per client address (20, several people may share one).

    A success clears the name's count but not the address's, so one good account does not unlock guessing others.
    """

    def __init__(self, per_user: Throttle | None = None, per_address: Throttle | None = None):
        self.per_user = per_user or Throttle(free=5)
        self.per_address = per_address or Throttle(free=20)

    def wait(self, name: str, address: str) -> float:
        return max(self.per_user.wait("u:" + name[:64]), self.per_address.wait("a:" + address))

    def failed(self, name: str, address: str) -> None:
        self.per_user.failure("u:" + name[:64])
        self.per_address.failure("a:" + address)

    def succeeded(self, name: str) -> None:
        self.per_user.reset("u:" + name[:64])


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


def add_remove_user_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", required=True, help="users file (JSON)")
    parser.add_argument("--name", required=True, help="annotator name (the login) to remove")


def main_remove_user(args: argparse.Namespace) -> int:
    remove_user(args.users, args.name)  # SchemaError / FileNotFoundError: exit 2 with the message
    print(f"{args.users}: user {args.name!r} removed; their sessions have ended")
    return 0
