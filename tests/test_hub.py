"""Publishing: --dry-run folders load back (Parquet via datasets, cards via huggingface_hub); no token -> exit 2."""

from __future__ import annotations

import glob
import json
import random
import socket
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from annotate.__main__ import main as annotate_main
from annotate.schema import new_comparison
from annotate.store import ComparisonStore
from rlhf.train import main as train_main

PROMPT = [{"role": "user", "content": "Explain {}."}]
HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: a dry run must stay local."""

    def refuse(*a, **k):
        raise AssertionError("network access during a dry run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def store(tmp_path):
    """A store with 3 annotators voting on 6 prompts, one vote retracted."""
    rng = random.Random(0)
    recs = []
    for i in range(30):
        p = i % 6
        prompt = [{"role": "user", "content": f"Explain topic {p}."}]
        choice = rng.choice(["a", "a", "b", "tie"])
        recs.append(
            new_comparison(
                prompt_id=f"p{p}", prompt=prompt, response_a_id=f"p{p}-x", response_a="short answer",
                response_b_id=f"p{p}-y", response_b="a much longer answer " * 3, choice=choice,
                strength=2 if choice in ("a", "b") else None, annotator=["ann@x.org", "bob", "carol"][i % 3],
                left=rng.choice(["a", "b"]), source_a="m1", source_b="m2", decision_ms=1000 + i,
            )
        )  # fmt: skip
    root = tmp_path / "store"
    with ComparisonStore(root) as s:
        s.append_many(recs)
        first = recs[0]
        s.append(new_comparison(**{k: first[k] for k in ("prompt_id", "prompt", "response_a_id", "response_a",
                                                          "response_b_id", "response_b", "choice", "annotator")},
                                retracts=first["comparison_id"]))  # fmt: skip
    return root


def test_dataset_dry_run_loads_back_with_a_valid_card(store, tmp_path, no_network):
    out = tmp_path / "ds"
    guide = tmp_path / "guide.md"
    guide.write_text("Prefer the answer that is correct, then the one that is helpful.")
    rc = annotate_main(["push", "--store", str(store), "--repo-id", "me/prefs", "--dry-run", str(out),
                        "--guidelines", str(guide), "--license", "cc-by-4.0"])  # fmt: skip
    assert rc == 0

    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["text-generation"]
    assert "human-feedback" in meta["tags"] and meta["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"comparisons", "preferences"}

    from datasets import load_dataset

    loaded = {}
    for name, c in configs.items():
        (spec,) = c["data_files"]
        files = sorted(glob.glob(str(out / spec["path"])))
        assert spec["split"] == "train" and files, name
        loaded[name] = load_dataset("parquet", data_files={"train": files}, cache_dir=str(tmp_path / "hf"))["train"]
    comps, prefs = loaded["comparisons"], loaded["preferences"]
    assert len(comps) == 29  # 30 votes, one retracted (the retraction record itself is not a vote)
    assert "retracts" not in comps.column_names
    assert set(comps["annotator"]) == {"annotator-01", "annotator-02", "annotator-03"}  # no login ids published
    assert "ann@x.org" not in (out / "README.md").read_text()
    assert set(prefs.column_names) >= {"prompt", "chosen", "rejected", "margin", "prompt_id", "n_votes"}
    assert 0 < len(prefs) <= 6 and prefs[0]["chosen"][0]["role"] == "assistant"

    body = card.text
    assert "29 collected with prefkit's labeling app" in body and "`cc-by-4.0`: given with --license" in body
    assert "Labeling-app annotators appear as pseudonyms" in body and "| annotator-01 | labeling app |" in body
    assert "| standing votes (comparisons) | 29 |" in body
    assert "Prefer the answer that is correct" in body and "| prompt | `list<" in body
    # scipy is a base dependency, so the audit always runs here: its figures and the length ruler on the votes
    assert "Krippendorff" in body and "The audit was not run" not in body
    assert 'votes predicted by "pick the longer"' in body and "style-only model" in body
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data"]


def _hh_store(tmp_path, n: int = 30):
    """The first `n` records of the real HH-RLHF sample, imported as `annotate import --format hh` does."""
    import gzip
    import itertools

    if not HH.exists():
        pytest.skip("needs ../shared/data/hh-rlhf-harmless-sample.jsonl.gz")
    src = tmp_path / "harmless-base.jsonl.gz"
    with gzip.open(HH, "rt") as f, gzip.open(src, "wt") as g:
        g.writelines(itertools.islice(f, n))
    assert annotate_main(["import", str(src), "--format", "hh", "--store", str(tmp_path / "hh")]) == 0
    return tmp_path / "hh"


def _push(store, out, *extra) -> int:
    return annotate_main(["push", "--store", str(store), "--repo-id", "me/prefs", "--dry-run", str(out), *extra])


def _annotators(out) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(out / "data" / "comparisons").column("annotator").to_pylist())


def test_an_hh_import_keeps_its_provenance_licence_and_annotator_ids(tmp_path, no_network, capsys):
    store = _hh_store(tmp_path)
    assert _push(store, tmp_path / "hh-card") == 0
    card = DatasetCard.load(tmp_path / "hh-card" / "README.md")
    assert card.data.to_dict()["license"] == "mit"  # HH-RLHF's own, with no --license given
    body = card.text
    assert "30 imported from HH-RLHF (Anthropic/hh-rlhf)" in body and "`harmless-base.jsonl.gz`" in body
    assert "`mit`: the licence of HH-RLHF (Anthropic/hh-rlhf) at its source" in body
    assert "labeling app" not in body and "cc-by" not in body
    assert _annotators(tmp_path / "hh-card") == {"hh-rlhf"}  # the source's attribution, not renamed
    assert "| hh-rlhf | imported (id as given) | 30 |" in body
    assert "keep the annotator ids they were imported with (`hh-rlhf`)" in body

    # Votes from the app join them: their annotators are pseudonymised (and the card says so), the HH ids are not,
    # and the licence of the whole can no longer be inferred.
    with ComparisonStore(store) as s:
        s.append_many([new_comparison(prompt_id=f"p{i}", prompt=PROMPT, response_a_id="x", response_a="x",
                                      response_b_id="y", response_b="yy", choice="a", left="a",
                                      annotator=["ann@x.org", "bob"][i % 2]) for i in range(4)])  # fmt: skip
    capsys.readouterr()
    assert _push(store, tmp_path / "mixed") == 0
    assert "unknown: set --license" in capsys.readouterr().err
    card = DatasetCard.load(tmp_path / "mixed" / "README.md")
    assert card.data.to_dict()["license"] == "unknown"
    body = card.text
    assert "**unknown: set --license**" in body and "the 4 votes collected with prefkit's labeling app" in body
    assert "Labeling-app annotators appear as pseudonyms" in body and "ann@x.org" not in body
    assert _annotators(tmp_path / "mixed") == {"hh-rlhf", "annotator-01", "annotator-02"}

    # Given a licence other than the source's, the card and stderr say what the HH votes are under.
    assert _push(store, tmp_path / "given", "--license", "cc-by-4.0") == 0
    assert "are mit at their source" in capsys.readouterr().err
    body = DatasetCard.load(tmp_path / "given" / "README.md").text
    assert "`cc-by-4.0`: given with --license; the 30 votes imported from HH-RLHF" in body


def test_a_trl_import_has_no_licence_to_inherit_and_a_real_push_refuses_it(tmp_path, no_network, monkeypatch, capsys):
    rows = [{"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": f"{i + 1}"} for i in range(5)]
    src = tmp_path / "mine.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert annotate_main(["import", str(src), "--format", "trl", "--store", str(tmp_path / "s")]) == 0
    assert _push(tmp_path / "s", tmp_path / "dry") == 0
    card = DatasetCard.load(tmp_path / "dry" / "README.md")
    assert card.data.to_dict()["license"] == "unknown" and "**unknown: set --license**" in card.text
    assert "5 imported from the TRL preference file `mine.jsonl`" in card.text
    assert _annotators(tmp_path / "dry") == {"trl:mine"}

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # past the token check: the licence stops the push
    capsys.readouterr()
    assert annotate_main(["push", "--store", str(tmp_path / "s"), "--repo-id", "me/prefs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --license:") and "set --license" in err


def _run_dir(tmp_path):
    """A real distillation run (tiny models) whose teacher is itself a run of the bundled default model."""
    from fixtures import arithmetic_tokenizer, save_tiny_model

    from rlhf.common import BaseArgs
    from rlhf.config import save_config
    from rlhf.distill import DistillArgs, distill

    teacher = tmp_path / "teacher"
    save_tiny_model(teacher, arithmetic_tokenizer(), layers=2, hidden=32)
    save_config(BaseArgs(model="default", data="prefs.parquet", output_dir=str(teacher)), teacher / "config.yaml")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i} + 1 ?"}) + "\n" for i in range(12)))
    out = tmp_path / "run"
    cfg = DistillArgs(teacher=str(teacher), output_dir=str(out), prompts=str(prompts), student_layers=1,
                        eval_prompts=4, max_new_tokens=6, max_steps=2, device="cpu", speed_prompts=2)  # fmt: skip
    distill(cfg)
    return out


def test_model_dry_run_folder_and_card(tmp_path, no_network):
    run = _run_dir(tmp_path)
    out = tmp_path / "model"
    rc = train_main(["push", "--model-dir", str(run), "--repo-id", "me/student", "--dry-run", str(out),
                     "--data-repo", "me/prefs", "--data-revision", "abc123"])  # fmt: skip
    assert rc == 0
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # followed back through the teacher's run
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0" and "distill" in meta["tags"] and meta["datasets"] == ["me/prefs"]
    body = card.text
    assert "revision `abc123`" in body and "student_layers: 1" in body
    assert "- **Training:** 2 optimizer steps" in body  # the trainer's count, though no loss line was logged
    assert "generation speed-up" in body and "Where the student falls short" in body and "verbos" in body.lower()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
    assert AutoTokenizer.from_pretrained(out).chat_template
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "eval.json", "distill_report.json", "distill_report.png", "model.safetensors"} <= names
    assert not any(p.is_dir() for p in out.iterdir())  # no trainer checkpoints or optimizer state


def test_missing_token_exits_2_before_any_work(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    # The store and model dir do not exist: exit 2 must come from the token check, which runs first.
    assert annotate_main(["push", "--store", str(tmp_path / "nowhere"), "--repo-id", "me/prefs"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert train_main(["push", "--model-dir", str(tmp_path / "nothing"), "--repo-id", "me/m"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_dry_run_refuses_a_non_empty_folder(store, tmp_path, no_network):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert annotate_main(["push", "--store", str(store), "--repo-id", "me/prefs", "--dry-run", str(out)]) == 2
