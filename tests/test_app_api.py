"""The real app server driven by gradio_client: votes land in the store, login is enforced, SIGKILL loses nothing."""

import pytest

gradio_client = pytest.importorskip("gradio_client")

from apphelpers import Server, write_pool  # noqa: E402  (tests/ is on sys.path under pytest)

from annotate.store import effective_votes, read_table  # noqa: E402
from annotate.users import add_user  # noqa: E402

pytestmark = pytest.mark.slow


def client(url, auth=None):
    return gradio_client.Client(url, auth=auth, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    with Server(write_pool(d / "pool.jsonl"), d / "votes", "--seed", "1") as server:
        yield server, d / "votes"


def test_vote_tie_skip_undo_criteria(demo_server):
    server, store = demo_server
    c = client(server.url)
    shown = c.predict(name="ann1", api_name="/next_pair")
    assert "done today: **0**" in shown[3]
    c.predict(choice="a", strength="much", correct="a", helpful="b", rationale=" right answer ", name="ann1",
              api_name="/vote")  # fmt: skip
    c.predict(choice="tie", name="ann1", api_name="/vote")
    out = c.predict(choice="skip", name="ann1", api_name="/vote")
    assert "done today: **3**" in out[3]
    c.predict(choice="both_bad", name="ann1", api_name="/vote")
    undone = c.predict(name="ann1", api_name="/undo")
    assert "undone" in undone[4]

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


def test_vote_rejects_bad_input_and_stale_page(demo_server):
    server, store = demo_server
    c = client(server.url)
    c.predict(name="ann2", api_name="/next_pair")
    before = read_table(str(store)).num_rows
    with pytest.raises(gradio_client.exceptions.AppError, match="choice must be one of"):
        c.predict(choice="left", name="ann2", api_name="/vote")
    with pytest.raises(gradio_client.exceptions.AppError, match="no longer shown"):
        c.predict(choice="a", token="stale-token", name="ann2", api_name="/vote")
    assert read_table(str(store)).num_rows == before


def test_login_enforced_and_name_from_login(tmp_path):
    users = tmp_path / "users.json"
    add_user(users, "alice", "alice-pw")
    add_user(users, "root", "root-pw", admin=True)
    with Server(write_pool(tmp_path / "pool.jsonl"), tmp_path / "votes", "--users", str(users)) as server:
        with pytest.raises(Exception):  # noqa: B017 - the client raises its own error types for a refused login
            client(server.url, auth=("alice", "wrong-pw"))
        with pytest.raises(Exception):  # noqa: B017
            client(server.url).predict(name="alice", api_name="/next_pair")
        c = client(server.url, auth=("alice", "alice-pw"))
        c.predict(name="root", api_name="/next_pair")
        c.predict(choice="b", name="root", api_name="/vote")  # tries to vote as someone else
    table = read_table(str(tmp_path / "votes"))
    assert table.num_rows == 1 and table["annotator"].to_pylist() == ["alice"]


def test_sigkill_after_acknowledged_votes_loses_nothing(tmp_path):
    pool, store = write_pool(tmp_path / "pool.jsonl", n_prompts=20), tmp_path / "votes"
    server = Server(pool, store)
    c = client(server.url)
    c.predict(name="k", api_name="/next_pair")
    acked = 0
    for i in range(25):
        c.predict(choice="ab"[i % 2], name="k", api_name="/vote")
        acked += 1  # predict returned: the server acknowledged the vote
    server.kill()  # SIGKILL: no chance to flush or seal anything
    assert read_table(str(store)).num_rows == acked
    with Server(pool, store) as again:
        out = client(again.url).predict(name="k", api_name="/next_pair")
        assert "done today: **25**" in out[3]  # the restarted sampler knows them too
    assert read_table(str(store)).num_rows == acked
