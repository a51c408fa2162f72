"""Users file: salted scrypt hashes, add-user CLI, verification used as the Gradio login."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from annotate.schema import SchemaError
from annotate.users import Authenticator, add_user, load_users, verify

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
