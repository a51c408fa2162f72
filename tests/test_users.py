"""Users file: salted scrypt hashes, add-user/remove-user CLI, session tokens, name rules, login throttling."""

import base64
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from annotate.__main__ import main as cli_main
from annotate.schema import SchemaError
from annotate.users import Authenticator, LoginThrottle, Throttle, add_user, load_users, remove_user, verify

ROOT = Path(__file__).resolve().parents[1]


def test_add_user_stores_only_salted_hashes(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "correct horse")
    add_user(path, "bob", "correct horse", admin=True)
    text = path.read_text()
    assert "correct horse" not in text
    users = load_users(path)
    assert users["alice"].salt != users["bob"].salt and users["alice"].hash != users["bob"].hash
    assert users["bob"].admin and not users["alice"].admin
    assert verify(users, "alice", "correct horse")
    assert not verify(users, "alice", "wrong")
    assert not verify(users, "mallory", "correct horse")
    assert path.stat().st_mode & 0o077 == 0  # not readable by others


def test_authenticator_sees_users_added_later(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw-alice")
    auth = Authenticator(path)
    assert auth("alice", "pw-alice") and not auth("carol", "pw-carol")
    add_user(path, "carol", "pw-carol", admin=True)
    assert auth("carol", "pw-carol") and auth.is_admin("carol") and not auth.is_admin("alice")


def test_cli_add_user_with_password_from_stdin(tmp_path):
    path = tmp_path / "u.json"
    cmd = [sys.executable, "-m", "annotate", "add-user", "--users", str(path), "--name", "dana", "--admin"]
    run = subprocess.run(cmd, input="s3cret-pw\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    assert verify(load_users(path), "dana", "s3cret-pw") and load_users(path)["dana"].admin


def test_bad_users_file_names_file_and_entry(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"users": {"eve": {"salt": 1}}}))
    with pytest.raises(SchemaError, match=r"bad.json: user 'eve'"):
        load_users(path)
    path.write_text("{not json")
    cmd = [sys.executable, "-m", "annotate", "add-user", "--users", str(path), "--name", "x", "--password", "pass"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 2 and "bad.json" in run.stderr


# --- sessions -----------------------------------------------------------------------------------------------------


def test_session_secret_is_made_once_and_kept(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw-alice")
    secret = json.loads(path.read_text())["session_secret"]
    assert len(bytes.fromhex(secret)) == 32
    add_user(path, "bob", "pw-bob")
    remove_user(path, "bob")
    assert json.loads(path.read_text())["session_secret"] == secret
    assert path.stat().st_mode & 0o077 == 0


def test_old_users_file_gets_a_shared_secret(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw-alice")
    data = json.loads(path.read_text())
    del data["session_secret"]  # a file written before sessions existed
    path.write_text(json.dumps(data))
    token = Authenticator(path).issue("alice")
    assert "session_secret" in json.loads(path.read_text())
    assert Authenticator(path).user_for_token(token) == "alice"  # another process on the same file agrees


def test_tokens_verify_across_processes_and_refuse_tampering(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw-alice")
    add_user(path, "bob", "pw-bob")
    auth, replica = Authenticator(path), Authenticator(path)
    token = auth.issue("alice")
    assert auth.user_for_token(token) == "alice" and replica.user_for_token(token) == "alice"
    assert auth.user_for_request(SimpleNamespace(cookies={"prefkit-session": token})) == "alice"
    assert auth.user_for_request(SimpleNamespace(cookies={})) is None
    payload, sig = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**body, "u": "bob"}).encode()).rstrip(b"=").decode()
    bad = [None, "", "x", token + "A", token + "=", payload + "." + sig[::-1], forged + "." + sig, "." + sig,
           token.replace(".", ".."), "é" + token]  # fmt: skip
    assert [auth.user_for_token(t) for t in bad] == [None] * len(bad)
    other = tmp_path / "other.json"  # same user name, different file (different secret)
    add_user(other, "alice", "pw-alice")
    assert Authenticator(other).user_for_token(token) is None
    with pytest.raises(KeyError):
        auth.issue("mallory")


def test_tokens_expire(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw-alice")
    auth = Authenticator(path, session_hours=1.0)
    token = auth.issue("alice", now=1_000_000)
    assert auth.user_for_token(token, now=1_000_000 + 3599) == "alice"
    assert auth.user_for_token(token, now=1_000_000 + 3600) is None
    assert auth.user_for_token(token, now=1_000_000 - 3600) is None  # issued "in the future": refused
    clock = [2_000_000.0]
    short = Authenticator(path, session_hours=0.01, clock=lambda: clock[0])  # 36 s
    token = short.issue("alice")
    clock[0] += 35
    assert short.user_for_token(token) == "alice"
    clock[0] += 2
    assert short.user_for_token(token) is None
    with pytest.raises(ValueError):
        Authenticator(path, session_hours=0)


def test_repassword_and_removal_end_sessions(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw-alice")
    add_user(path, "bob", "pw-bob")
    auth = Authenticator(path)
    alice, bob = auth.issue("alice"), auth.issue("bob")
    add_user(path, "bob", "pw-bob", admin=True)  # same password, new salt: still a re-password
    assert auth.user_for_token(bob) is None and auth.user_for_token(alice) == "alice"
    assert auth.is_admin("bob") and auth.user_for_token(auth.issue("bob")) == "bob"
    remove_user(path, "alice")
    assert auth.user_for_token(alice) is None and not auth("alice", "pw-alice")
    with pytest.raises(SchemaError, match="no user 'alice'"):
        remove_user(path, "alice")


def test_users_file_deleted_or_broken_while_running(tmp_path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw-alice")
    auth = Authenticator(path)
    token = auth.issue("alice")
    good = path.read_text()
    path.write_text("{half-edited")
    with pytest.warns(UserWarning, match="not reloaded"):
        assert auth.user_for_token(token) == "alice"  # the last good accounts keep working
    path.unlink()
    assert auth.user_for_token(token) is None and not auth.is_admin("alice")  # no file: nobody
    path.write_text(good)
    assert auth.user_for_token(token) == "alice"


# --- names ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", " bob", "bob ", "-bob", ".x", "a b", "x" * 65, "zoë", "a/b", "a\nb", "<i>"])
def test_bad_login_names_refused(tmp_path, name):
    with pytest.raises(SchemaError, match="user name"):
        add_user(tmp_path / "users.json", name, "password")


def test_good_login_names_and_bad_name_in_file(tmp_path):
    path = tmp_path / "users.json"
    for name in ["a", "Bob.Smith", "carol_2", "dan-o", "eve@example.org", "7" + "x" * 63]:
        add_user(path, name, "password")
    data = json.loads(path.read_text())
    data["users"]["bad name"] = data["users"]["a"]
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=r"users.json: user name 'bad name'"):
        load_users(path)


def test_cli_remove_user_exit_codes(tmp_path, capsys):
    path = tmp_path / "users.json"
    add_user(path, "alice", "pw-alice")
    assert cli_main(["remove-user", "--users", str(path), "--name", "bob"]) == 2
    assert "no user 'bob'" in capsys.readouterr().err
    assert cli_main(["remove-user", "--users", str(path), "--name", "alice"]) == 0
    assert load_users(path) == {}
    assert cli_main(["remove-user", "--users", str(tmp_path / "missing.json"), "--name", "alice"]) == 2
    assert "no such users file" in capsys.readouterr().err
    assert cli_main(["add-user", "--users", str(path), "--name=-x", "--password", "pw-long"]) == 2


# --- throttling -----------------------------------------------------------------------------------------------------


def test_throttle_backoff():
    now = [100.0]
    t = Throttle(free=5, base_s=1.0, cap_s=900.0, forget_s=3600.0, clock=lambda: now[0])
    assert [t.lock_s(n) for n in range(1, 9)] == [0, 0, 0, 0, 1, 2, 4, 8]
    assert t.lock_s(15) == 900.0 and t.lock_s(10_000) == 900.0  # capped, no overflow
    locks = [t.failure("k") for _ in range(5)]
    assert locks == [0, 0, 0, 0, 1.0] and t.wait("k") == 1.0 and t.wait("other") == 0.0
    now[0] += 0.5
    assert t.wait("k") == 0.5
    now[0] += 0.5
    assert t.wait("k") == 0.0
    assert t.failure("k") == 2.0 and t.failures("k") == 6
    t.reset("k")
    assert t.wait("k") == 0.0 and t.failures("k") == 0
    for _ in range(7):
        t.failure("k")
    now[0] += 3601  # a quiet hour: start over
    assert t.wait("k") == 0.0 and t.failure("k") == 0.0


def test_throttle_bounded_memory():
    t = Throttle(free=1, max_keys=100)
    for i in range(1000):
        t.failure(f"name{i}")
    assert len(t._keys) == 100 and t.wait("name999") > 0 and t.wait("name0") == 0


def test_login_throttle_success_resets_user_not_address():
    lt = LoginThrottle(Throttle(free=2), Throttle(free=3))
    lt.failed("alice", "10.0.0.1")
    lt.succeeded("alice")
    lt.failed("alice", "10.0.0.1")
    assert lt.wait("alice", "10.0.0.2") == 0  # alice's count restarted at the success
    lt.failed("bob", "10.0.0.1")  # the address's third failure: locked for everyone there
    assert lt.wait("carol", "10.0.0.1") > 0 and lt.wait("carol", "10.0.0.2") == 0
    lt.failed("alice", "10.0.0.2")
    assert lt.wait("alice", "10.0.0.3") > 0  # alice's second failure since the success
