"""The real app server driven by gradio_client: votes land in the store, sessions belong to their login, one token
stores one vote, limits hold, and SIGKILL loses nothing."""

import pytest

gradio_client = pytest.importorskip("gradio_client")

from apphelpers import Server, write_pool  # noqa: E402  (tests/ is on sys.path under pytest)

from annotate.store import effective_votes, read_table  # noqa: E402
from annotate.users import add_user  # noqa: E402

pytestmark = pytest.mark.slow
PROGRESS, MESSAGE, TOKEN = 3, 4, 5  # positions in the outputs of next_pair / vote / undo


def client(url, auth=None):
    return gradio_client.Client(url, auth=auth, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    with Server(write_pool(d / "pool.jsonl", n_prompts=40), d / "votes", "--seed", "1") as server:
        yield server, d / "votes"


def test_vote_tie_skip_undo_criteria(demo_server):
    server, store = demo_server
    c = client(server.url)
    shown = c.predict(name="ann1", api_name="/next_pair")
    assert "done today: <b>0</b>" in shown[PROGRESS]
    out = c.predict(choice="a", strength="much", correct="a", helpful="b", rationale=" right answer ", name="ann1",
                    token=shown[TOKEN], api_name="/vote")  # fmt: skip
    assert "Saved: A is better (much)" in out[MESSAGE]
    out = c.predict(choice="tie", name="ann1", token=out[TOKEN], api_name="/vote")
    out = c.predict(choice="skip", name="ann1", token=out[TOKEN], api_name="/vote")
    assert "done today: <b>3</b>" in out[PROGRESS]
    c.predict(choice="both_bad", name="ann1", token=out[TOKEN], api_name="/vote")
    undone = c.predict(name="ann1", api_name="/undo")
    assert "undone" in undone[MESSAGE]

    table = read_table(str(store))
    mine = [r for r in table.to_pylist() if r["annotator"] == "ann1"]
    assert [r["choice"] for r in mine if not r["retracts"]][1:] == ["tie", "skip", "both_bad"]
    first = mine[0]
    # choice "a" = the response shown on the left; stored as the canonical side given by `left`.
    assert first["choice"] == first["left"] and first["strength"] == 3 and first["rationale"] == "right answer"
    other = "b" if first["left"] == "a" else "a"
    assert dict(first["criteria"]) == {"correct": first["left"], "helpful": other}
    assert first["decision_ms"] >= 0 and first["session"]
    assert [r["strength"] for r in mine[1:4]] == [None, None, None]
    retraction = mine[-1]
    assert retraction["retracts"] == mine[3]["comparison_id"]
    assert mine[3]["comparison_id"] not in set(effective_votes(table)["comparison_id"])


def test_vote_rejects_bad_input_stale_or_empty_token_and_oversize(demo_server):
    server, store = demo_server
    c = client(server.url)
    shown = c.predict(name="ann2", api_name="/next_pair")
    before = read_table(str(store)).num_rows
    with pytest.raises(gradio_client.exceptions.AppError, match="choice must be one of"):
        c.predict(choice="left", name="ann2", token=shown[TOKEN], api_name="/vote")
    for token in ("stale-token", ""):
        with pytest.raises(gradio_client.exceptions.AppError, match="no longer shown"):
            c.predict(choice="a", token=token, name="ann2", api_name="/vote")
    with pytest.raises(gradio_client.exceptions.AppError, match="over the limit of 5,000"):
        c.predict(choice="a", rationale="x" * 10_000, token=shown[TOKEN], name="ann2", api_name="/vote")
    with pytest.raises(gradio_client.exceptions.AppError, match="a name is 1-64 characters"):
        c.predict(name="<img src=x onerror=alert(1)>", api_name="/next_pair")
    assert read_table(str(store)).num_rows == before


def test_two_simultaneous_votes_with_one_token_store_one(demo_server):
    server, store = demo_server
    c = client(server.url)
    stored_before = read_table(str(store)).num_rows
    for _ in range(30):
        token = c.predict(name="dbl", api_name="/next_pair")[TOKEN]
        # Two vote events of one session sent at once with the same valid token (a double click, a replay).
        jobs = [c.submit(choice=ch, name="dbl", token=token, api_name="/vote") for ch in "ab"]
        errors = []
        for job in jobs:
            try:
                job.result(timeout=120)
            except gradio_client.exceptions.AppError as e:
                errors.append(str(e))
        assert len(errors) == 1 and "no longer shown" in errors[0], errors
    rows = read_table(str(store)).to_pylist()[stored_before:]
    assert len([r for r in rows if r["annotator"] == "dbl"]) == 30


def test_login_enforced_name_from_login_and_session_bound(tmp_path):
    users = tmp_path / "users.json"
    add_user(users, "alice", "alice-pw")
    add_user(users, "bob", "bob-pw")
    with Server(write_pool(tmp_path / "pool.jsonl"), tmp_path / "votes", "--users", str(users)) as server:
        with pytest.raises(Exception):  # noqa: B017 - the client raises its own error types for a refused login
            client(server.url, auth=("alice", "wrong-pw"))
        with pytest.raises(Exception):  # noqa: B017
            client(server.url).predict(name="alice", api_name="/next_pair")
        alice, bob = client(server.url, auth=("alice", "alice-pw")), client(server.url, auth=("bob", "bob-pw"))
        shown = alice.predict(name="bob", api_name="/next_pair")  # the name field is ignored with login
        alice.predict(choice="b", name="bob", token=shown[TOKEN], api_name="/vote")
        bob_view = bob.predict(api_name="/next_pair")
        bob.predict(choice="a", token=bob_view[TOKEN], api_name="/vote")
        # Alice takes over bob's session hash: every event is refused and nothing is stored.
        alice.session_hash = bob.session_hash
        before = read_table(str(tmp_path / "votes")).num_rows
        for call in (
            lambda: alice.predict(api_name="/undo"),
            lambda: alice.predict(choice="a", token=bob_view[TOKEN], api_name="/vote"),
            lambda: alice.predict(api_name="/next_pair"),
        ):
            with pytest.raises(gradio_client.exceptions.AppError, match="belongs to another annotator"):
                call()
        assert read_table(str(tmp_path / "votes")).num_rows == before
    table = read_table(str(tmp_path / "votes"))
    assert table.num_rows == 2 and table["annotator"].to_pylist() == ["alice", "bob"]


def test_sigkill_after_acknowledged_votes_loses_nothing(tmp_path):
    pool, store = write_pool(tmp_path / "pool.jsonl", n_prompts=20), tmp_path / "votes"
    server = Server(pool, store)
    try:
        c = client(server.url)
        token = c.predict(name="k", api_name="/next_pair")[TOKEN]
        acked = 0
        for i in range(25):
            token = c.predict(choice="ab"[i % 2], name="k", token=token, api_name="/vote")[TOKEN]
            acked += 1  # predict returned: the server acknowledged the vote
    finally:
        server.kill()  # SIGKILL: no chance to flush or seal anything
    assert read_table(str(store)).num_rows == acked
    with Server(pool, store) as again:
        out = client(again.url).predict(name="k", api_name="/next_pair")
        assert "done today: <b>25</b>" in out[PROGRESS]  # the restarted sampler knows them too
    assert read_table(str(store)).num_rows == acked
