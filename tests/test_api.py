"""The JSON API against the real server: same rules as the screen (login, session owner, token, limits)."""

import httpx
import pytest
from apphelpers import Server, write_pool

from annotate.store import read_table
from annotate.users import add_user

pytestmark = pytest.mark.slow


def post(c: httpx.Client, path: str, **body) -> httpx.Response:
    return c.post(f"/api/v1/{path}", json=body)


def test_json_api_votes_with_login_and_keeps_the_rules(tmp_path):
    users, store = tmp_path / "users.json", tmp_path / "votes"
    add_user(users, "alice", "alice-pw")
    add_user(users, "bob", "bob-pw")
    with Server(write_pool(tmp_path / "pool.jsonl", nasty=False), store, "--users", str(users)) as server:
        anon = httpx.Client(base_url=server.url, timeout=60)
        assert post(anon, "next").status_code == 401  # no login, no pair
        clients = {}
        for name in ("alice", "bob"):
            c = httpx.Client(base_url=server.url, timeout=60)
            assert c.post("/login", data={"username": name, "password": f"{name}-pw"}).status_code == 200
            clients[name] = c
        alice, bob = clients["alice"], clients["bob"]
        shown = post(alice, "next", name="bob").json()  # the name is ignored with login
        assert shown["annotator"] == "alice" and shown["pair"]["prompt"][-1]["role"] == "user"
        sid = shown["session"]
        for token in ("", "stale"):
            r = post(alice, "vote", session=sid, token=token, choice="a")
            assert r.status_code == 400 and "no longer shown" in r.json()["error"]
        r = post(alice, "vote", session=sid, token=shown["token"], choice="a", rationale="x" * 5001)
        assert r.status_code == 400 and "over the limit" in r.json()["error"]
        # Bob with alice's session id is refused and stores nothing.
        r = post(bob, "vote", session=sid, token=shown["token"], choice="b")
        assert r.status_code == 400 and "belongs to another annotator" in r.json()["error"]
        assert not store.exists() or read_table(str(store)).num_rows == 0
        voted = post(alice, "vote", session=sid, token=shown["token"], choice="a", strength="much",
                     criteria={"correct": "a"})  # fmt: skip
        assert voted.status_code == 200 and "Saved: A is better (much)" in voted.json()["message_html"]
        assert post(alice, "vote", session=sid, token=shown["token"], choice="b").status_code == 400  # used up
        flagged = post(alice, "flag", session=sid, token=voted.json()["token"], reason="duplicate")
        assert flagged.status_code == 200
        assert post(alice, "next", session="not-a-session").status_code == 400
        assert post(alice, "vote", session=sid, choice="a", token=flagged.json()["token"]).status_code == 200
    rows = read_table(str(store)).to_pylist()
    assert [(r["annotator"], r["choice"] if r["choice"] == "skip" else "ab") for r in rows] == [
        ("alice", "ab"), ("alice", "skip"), ("alice", "ab")]  # fmt: skip
    first = rows[0]
    assert first["choice"] == first["left"] and first["strength"] == 3 and dict(first["criteria"]) == {
        "correct": first["left"]}  # fmt: skip
    assert rows[1]["flag"] == "duplicate"
