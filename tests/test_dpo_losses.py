"""The length-debiasing DPO losses (rlhf/dpo_losses.py, `--loss-type rdpo|ld|simpo`): each one's loss equals its
paper's formula on a hand-scored batch, packed and padded, and each shows its defining behaviour on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from fixtures import arithmetic_tokenizer, save_tiny_model, synthetic_arithmetic

from rlhf import train

BETA = 1.0
VERBOSE = "the answer is "  # 3 extra tokens in front of the number: the "long" form of an answer


def _write(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _lengthen(row, side):
    row[side] = [{"role": "assistant", "content": VERBOSE + row[side][0]["content"]}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny model, and arithmetic pairs (chosen = the right sum) in which length is confounded with quality.

    Prompts are split three ways: held out (never trained on); "long" prompts, whose chosen answer comes in the
    verbose form ("the answer is 7" against "6": chosen is 3 tokens longer); and "equal" prompts, both answers bare,
    so only quality separates them. A verbosity-loving labeller would produce exactly this mix."""
    root = tmp_path_factory.mktemp("dpo_losses")
    tok = arithmetic_tokenizer()
    model = save_tiny_model(root / "tiny", tok, layers=2, hidden=64, heads=4)
    rows = synthetic_arithmetic(n_prompts=100, wrong_per_prompt=4, seed=0)
    prompts = sorted({r["prompt_id"] for r in rows})
    held = set(prompts[::5])
    long_ = set(sorted(set(prompts) - held)[::2])
    train_rows, equal_rows = [], []
    for r in rows:
        if r["prompt_id"] in held:
            continue
        r = dict(r)
        if r["prompt_id"] in long_:
            _lengthen(r, "chosen")
        else:
            equal_rows.append(r)
        train_rows.append(r)
    heldout = [r for r in rows if r["prompt_id"] in held]
    mixed = [dict(r) for r in heldout[:12]]  # pairs of all three shapes, for the hand-scored batches
    for i, r in enumerate(mixed):
        if i % 3:
            _lengthen(r, "chosen" if i % 3 == 1 else "rejected")
    return {
        "root": root,
        "model": model,
        "tokenizer": tok,
        "train": _write(root / "train.parquet", train_rows),
        "test": _write(root / "test.parquet", heldout),
        "mixed": _write(root / "mixed.parquet", mixed),
        "heldout": heldout,
        "equal": equal_rows,
    }


def _cfg(fx, out, **kw):
    from rlhf.dpo import DPOArgs

    base = dict(model=fx["model"], data=str(fx["train"]), eval_data=str(fx["test"]), output_dir=str(out),
                learning_rate=1e-3, beta=BETA, per_device_train_batch_size=16, logging_steps=1000,
                max_steps=60)  # fmt: skip
    base.update(kw)
    return DPOArgs(**base)


def _trained(fx, out, **kw):
    from rlhf.dpo import build_trainer

    trainer, _ = build_trainer(_cfg(fx, out, **kw))
    trainer.train()
    return trainer.model.eval()


# ---------------------------------------------------------------- scoring by hand (no TRL, no packing)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _hand_logps(model, batch):
    """(per-token log-probs of the completion tokens, completion mask), from a plain forward and log_softmax."""
    ids, mask = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    m = mask[:, 1:].float()
    return logp * m, m


def _plain_copy(model, like_path):
    """A fresh model with `model`'s weights: scored without any TRL or packing patch on its forward."""
    fresh = _load(like_path)
    fresh.load_state_dict(model.state_dict())
    return fresh


def _perturbed(trainer, scale=0.05):
    """Move the policy away from the reference, so log-ratios are not all 0."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _batch(trainer, n=12):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def _trainer_loss(trainer, batch):
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


# ---------------------------------------------------------------- the formulas


@pytest.mark.parametrize("packing, precompute", [(True, True), (False, False), (True, False)])
def test_rdpo_loss_is_eq9_on_a_hand_scored_batch(data, tmp_path, packing, precompute):
    """-log sigmoid(beta (logratio_w - logratio_l) + alpha (|y_w| - |y_l|)), Eq. 9 of arXiv 2403.19159."""
    from rlhf.dpo import build_trainer

    alpha = 0.3
    cfg = _cfg(data, tmp_path, data=str(data["mixed"]), loss_type="rdpo", rdpo_alpha=alpha, packing=packing,
               precompute_ref_log_probs=precompute)  # fmt: skip
    trainer, _ = build_trainer(cfg)
    _perturbed(trainer)
    batch = _batch(trainer)
    pol, m = _hand_logps(_plain_copy(trainer.model, data["model"]), batch)
    ref, _ = _hand_logps(_load(data["model"]), batch)  # the reference is the starting model on disk
    ratio_w, ratio_l = (pol - ref).sum(1).chunk(2)
    len_w, len_l = m.sum(1).chunk(2)
    assert (len_w != len_l).any() and (ratio_w != ratio_l).any()  # the batch exercises both terms
    want = -F.logsigmoid(BETA * (ratio_w - ratio_l) + alpha * (len_w - len_l)).mean().item()
    assert _trainer_loss(trainer, batch) == pytest.approx(want, rel=1e-4, abs=1e-5)
    # alpha = 0 is DPO: TRL's own sigmoid loss on the same batch.
    trainer.alpha = 0.0
    plain_dpo = -F.logsigmoid(BETA * (ratio_w - ratio_l)).mean().item()
    assert _trainer_loss(trainer, batch) == pytest.approx(plain_dpo, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("packing", [True, False])
def test_simpo_loss_is_eq6_on_a_hand_scored_batch(data, tmp_path, packing):
    """-log sigmoid(beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma), Eq. 6 of arXiv 2405.14734."""
    from rlhf.dpo import build_trainer

    gamma, beta = 0.7, 2.5
    cfg = _cfg(data, tmp_path, data=str(data["mixed"]), loss_type="simpo", simpo_gamma=gamma, beta=beta,
               packing=packing)  # fmt: skip
    trainer, _ = build_trainer(cfg)
    batch = _batch(trainer)
    assert "ref_chosen_logps" not in batch
    pol, m = _hand_logps(_plain_copy(trainer.model, data["model"]), batch)
    logp_w, logp_l = pol.sum(1).chunk(2)
    len_w, len_l = m.sum(1).chunk(2)
    assert (len_w != len_l).any()
    want = -F.logsigmoid(beta * logp_w / len_w - beta * logp_l / len_l - gamma).mean().item()
    assert _trainer_loss(trainer, batch) == pytest.approx(want, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("ld_alpha", [None, 0.2])
def test_ld_is_trl_ld_alpha_on_a_hand_scored_batch(data, tmp_path, ld_alpha):
    """`ld` is TRL's sigmoid with ld_alpha (0.5 unless given): the tokens past the shorter response of each pair
    count alpha times in both the policy's and the reference's log-likelihood (LD-DPO, arXiv 2409.06411)."""
    from rlhf.dpo import build_trainer

    cfg = _cfg(data, tmp_path, data=str(data["mixed"]), loss_type="ld", ld_alpha=ld_alpha)
    trainer, _ = build_trainer(cfg)
    alpha = 0.5 if ld_alpha is None else ld_alpha
    assert cfg.ld_alpha == trainer.ld_alpha == trainer.args.ld_alpha == alpha
    assert trainer.loss_types == ["sigmoid"]
    _perturbed(trainer)
    batch = _batch(trainer)
    pol, m = _hand_logps(_plain_copy(trainer.model, data["model"]), batch)
    ref, _ = _hand_logps(_load(data["model"]), batch)
    lengths = m.sum(1)
    shared = torch.minimum(*lengths.chunk(2)).repeat(2)  # l_p = min(|y_w|, |y_l|), the same for both sides
    position = m.cumsum(1)  # 1, 2, ... along each completion
    weight = torch.where(position <= shared[:, None], 1.0, alpha) * m
    ratio_w, ratio_l = ((pol - ref) * weight).sum(1).chunk(2)
    want = -F.logsigmoid(BETA * (ratio_w - ratio_l)).mean().item()
    assert _trainer_loss(trainer, batch) == pytest.approx(want, rel=1e-4, abs=1e-5)
    # ... and it is not plain DPO on this batch (some pairs differ in length).
    plain = -F.logsigmoid(BETA * ((pol - ref).sum(1).chunk(2)[0] - (pol - ref).sum(1).chunk(2)[1])).mean().item()
    assert abs(want - plain) > 1e-4


# ---------------------------------------------------------------- defining behaviour


def _logratio(policy, ref, tok, prompt, answer):
    """log pi(answer | prompt) - log ref(answer | prompt), the answer as the assistant's turn."""
    p = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=True,
                                   return_dict=False)  # fmt: skip
    x = torch.tensor([full])
    out = []
    for model in (policy, ref):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
        out.append(logp.gather(1, x[0, 1:, None])[len(p) - 1 :].sum().item())
    return out[0] - out[1]


def _length_preference(policy, ref, tok, rows):
    """Mean held-out implicit-reward gain of the verbose form of the right answer over the bare one: how much more
    the policy (than the reference) wants to say "the answer is 7" rather than "7". Same content, only length."""
    gains = [_logratio(policy, ref, tok, r["prompt"], VERBOSE + r["chosen"][0]["content"])
             - _logratio(policy, ref, tok, r["prompt"], r["chosen"][0]["content"]) for r in rows]  # fmt: skip
    return sum(gains) / len(gains)


def _quality_margin(policy, ref, tok, rows):
    """Mean implicit-reward margin of right over wrong answer on equal-length (both bare) pairs."""
    margins = [_logratio(policy, ref, tok, r["prompt"], r["chosen"][0]["content"])
               - _logratio(policy, ref, tok, r["prompt"], r["rejected"][0]["content"]) for r in rows]  # fmt: skip
    return sum(margins) / len(margins)


def _p_verbose_start(policy, tok, rows):
    """Probability that the reply starts with "the" (the 4-token form) rather than a bare 1-token number: the
    policy's expected reply length is 1 + 3 times this, read off without sampling."""
    the = tok.convert_tokens_to_ids("the")
    ps = []
    for r in rows:
        x = torch.tensor([tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)])  # fmt: skip
        with torch.no_grad():
            ps.append(torch.softmax(policy(input_ids=x).logits[0, -1].float(), dim=-1)[the].item())
    return sum(ps) / len(ps)


def test_rdpo_learns_quality_but_not_length_where_dpo_learns_both(data, tmp_path):
    """On pairs where the chosen answer is often the longer one, DPO learns to prefer the verbose form of the very
    same answer on held-out prompts; R-DPO with a large alpha (the length gap already credited in the logit) learns
    much less of it, while still learning right-over-wrong from the equal-length pairs. alpha = 0 is exactly DPO."""
    tok, ref = data["tokenizer"], _load(data["model"])
    heldout, equal = data["heldout"], data["equal"][:40]
    results = {}
    for name, kw in {"sigmoid": {}, "rdpo0": {"loss_type": "rdpo", "rdpo_alpha": 0.0},
                     "rdpo": {"loss_type": "rdpo", "rdpo_alpha": 2.0}}.items():  # fmt: skip
        policy = _trained(data, tmp_path / name, **kw)
        results[name] = {"length": _length_preference(policy, ref, tok, heldout),
                         "quality": _quality_margin(policy, ref, tok, equal),
                         "p_verbose": _p_verbose_start(policy, tok, heldout)}  # fmt: skip
    p0 = _p_verbose_start(ref, tok, heldout)
    dpo, rdpo = results["sigmoid"], results["rdpo"]
    assert results["rdpo0"] == pytest.approx(dpo, rel=1e-3, abs=1e-4), results  # R-DPO at alpha 0 is DPO
    assert dpo["length"] > 3.0, results  # DPO learned to prefer length on prompts it never saw
    assert rdpo["length"] < 0.5 * dpo["length"], results
    assert rdpo["p_verbose"] - p0 < 0.6 * (dpo["p_verbose"] - p0), (results, p0)  # shorter replies
    assert rdpo["quality"] > 0.05, results  # and it still learned from the pairs length does not explain


def test_simpo_keeps_no_reference_and_never_scores_one(data, tmp_path, monkeypatch):
    """SimPO is reference-free: no reference model, no reference pass (with either --precompute-ref-log-probs),
    no reference columns; it trains, and evaluates on a new dataset after training (DPO with precompute cannot)."""
    from datasets import Dataset
    from trl import DPOTrainer

    from rlhf.dpo import build_trainer

    def no_reference(*args, **kwargs):
        raise AssertionError("SimPO scored a reference")

    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", no_reference)
    for precompute in (True, False):
        cfg = _cfg(data, tmp_path / str(precompute), loss_type="simpo", max_steps=20,
                   precompute_ref_log_probs=precompute)  # fmt: skip
        assert cfg.beta == BETA and cfg.simpo_gamma == 0.5  # beta as given; gamma by default
        trainer, _ = build_trainer(cfg)
        assert trainer.ref_model is None
        for ds in (trainer.train_dataset, trainer.eval_dataset):
            assert not {"ref_chosen_logps", "ref_rejected_logps"} & set(ds.column_names)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train()
        assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data["heldout"][:8]]
        m = trainer.evaluate(eval_dataset=Dataset.from_list(rows))
        assert m["eval_rewards/accuracies"] >= 0.0 and "eval_loss" in m


def test_simpo_through_the_cli_records_its_defaults(data, tmp_path):
    argv = ["dpo", "--model", data["model"], "--data", str(data["train"]), "--eval-data", str(data["test"]),
            "--output-dir", str(tmp_path), "--learning-rate", "1e-3", "--max-steps", "20", "--loss-type", "simpo",
            "--per-device-train-batch-size", "16"]  # fmt: skip
    assert train.main(argv) == 0
    import yaml

    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (cfg["loss_type"], cfg["beta"], cfg["simpo_gamma"], cfg["rdpo_alpha"]) == ("simpo", 2.0, 0.5, None)
    r = json.loads((tmp_path / "eval.json").read_text())
    assert r["eval_loss"] < r["eval_loss_before"]
    assert "simpo" in (tmp_path / "README.md").read_text()


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "argv, want",
    [
        ([], {"beta": 0.1, "ld_alpha": None, "rdpo_alpha": None, "simpo_gamma": None}),
        (["--loss-type", "simpo"], {"beta": 2.0, "simpo_gamma": 0.5}),
        (["--loss-type", "simpo", "--beta", "0.5", "--simpo-gamma", "1.2"], {"beta": 0.5, "simpo_gamma": 1.2}),
        (["--loss-type", "rdpo"], {"beta": 0.1, "rdpo_alpha": 0.05}),
        (["--loss-type", "rdpo", "--rdpo-alpha", "0.5"], {"rdpo_alpha": 0.5}),
        (["--loss-type", "ld"], {"ld_alpha": 0.5}),
        (["--loss-type", "ld", "--ld-alpha", "0.3"], {"ld_alpha": 0.3}),
        (["--loss-type", "sigmoid_norm", "--ld-alpha", "0.3"], {"ld_alpha": 0.3}),
    ],
)
def test_loss_options_and_their_defaults(tmp_path, argv, want):
    from rlhf.config import parse_config, save_config
    from rlhf.dpo import DPOArgs

    cfg = parse_config(DPOArgs, argv)
    assert {k: getattr(cfg, k) for k in want} == want
    save_config(cfg, tmp_path / "config.yaml")  # the run record is a recipe giving the same config
    assert parse_config(DPOArgs, ["--config", str(tmp_path / "config.yaml")]) == cfg


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--simpo-gamma", "1"], "--simpo-gamma is a parameter of --loss-type simpo, not sigmoid"),
        (["--loss-type", "simpo", "--rdpo-alpha", "1"], "--rdpo-alpha is a parameter of --loss-type rdpo"),
        (["--loss-type", "rdpo", "--ld-alpha", "0.5"], "--ld-alpha does not apply to --loss-type rdpo"),
        (["--loss-type", "ld", "--ld-alpha", "1.5"], "--ld-alpha must be in [0, 1]"),
    ],
)
def test_a_parameter_of_another_loss_exits_2_naming_it(tmp_path, capsys, argv, named):
    assert train.main(["dpo", "--data", "x.parquet", "--output-dir", str(tmp_path), *argv]) == 2
    assert named in capsys.readouterr().err
