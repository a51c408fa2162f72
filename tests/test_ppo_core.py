"""PPO math against values computed by hand (the arithmetic is written out next to each expectation)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rlhf import ppo_core as core  # noqa: E402


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_gae_hand_computed():
    # gamma=1, lam=0.5, rewards [0,0,1], values [0.5,0.2,0.4]:
    # t=2: delta = 1 + 0 - 0.4 = 0.6                -> A2 = 0.6
    # t=1: delta = 0 + 0.4 - 0.2 = 0.2              -> A1 = 0.2 + 0.5*0.6 = 0.5
    # t=0: delta = 0 + 0.2 - 0.5 = -0.3             -> A0 = -0.3 + 0.5*0.5 = -0.05
    adv, ret = core.gae(t([[0, 0, 1]]), t([[0.5, 0.2, 0.4]]), t([[1, 1, 1]]), gamma=1.0, lam=0.5)
    assert adv[0].tolist() == pytest.approx([-0.05, 0.5, 0.6])
    assert ret[0].tolist() == pytest.approx([0.45, 0.7, 1.0])  # returns = A + V


def test_gae_ignores_padding_and_discounts():
    # gamma=0.5, lam=1, last position is padding (its reward 9 and value 7 must not leak in):
    # t=1: delta = 2 + 0.5*0 - 1 = 1                -> A1 = 1
    # t=0: delta = 0 + 0.5*1 - 1 = -0.5             -> A0 = -0.5 + 0.5*1*1 = 0
    adv, ret = core.gae(t([[0, 2, 9]]), t([[1, 1, 7]]), t([[1, 1, 0]]), gamma=0.5, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert ret[0].tolist() == pytest.approx([1.0, 2.0, 0.0])


def test_whiten_hand_computed():
    # [1,2,3,4]: mean 2.5, unbiased var (2.25+0.25+0.25+2.25)/3 = 5/3, std = 1.2909944
    out = core.whiten(t([[1, 2, 3, 4]]), t([[1, 1, 1, 1]]))
    s = math.sqrt(5 / 3)
    assert out[0].tolist() == pytest.approx([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], abs=1e-5)
    # masked: [1,2,3] (100 is padding): mean 2, unbiased var (1+0+1)/2 = 1 -> [-1, 0, 1], padding stays 0
    out = core.whiten(t([[1, 2, 3, 100]]), t([[1, 1, 1, 0]]))
    assert out[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-5)
    # reward whitening keeps the mean: (x - 2)/1 + 2
    out = core.whiten(t([[1, 2, 3, 100]]), t([[1, 1, 1, 0]]), shift_mean=False)
    assert out[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-5)


def test_clipped_policy_loss_hand_computed():
    # eps=0.2. tok1: ratio 1.5, A=2  -> max(-3, -2*1.2=-2.4) = -2.4 (clipped)
    #          tok2: ratio 0.5, A=1  -> max(-0.5, -0.8) = -0.5 (not clipped)
    #          tok3: ratio 0.5, A=-1 -> max(0.5, 0.8) = 0.8 (clipped); tok4 is padding
    # loss = (-2.4 - 0.5 + 0.8) / 3 = -0.7, clip fraction 2/3
    new = t([[math.log(1.5), math.log(0.5), math.log(0.5), 5.0]])
    old = t([[0.0, 0.0, 0.0, 0.0]])
    loss, clipfrac = core.policy_loss(new, old, t([[2, 1, -1, 100]]), t([[1, 1, 1, 0]]), clip=0.2)
    assert loss.item() == pytest.approx(-0.7, abs=1e-6)
    assert clipfrac.item() == pytest.approx(2 / 3)


def test_clipped_value_loss_hand_computed():
    # eps=0.2. tok1: V=1, V_old=0.5, R=2 -> clipped V = 0.7; max((1-2)^2=1, (0.7-2)^2=1.69) = 1.69 (clipped)
    #          tok2: V=V_old=0, R=1 -> 1
    # loss = 0.5 * (1.69 + 1) / 2 = 0.6725, clip fraction 1/2
    loss, clipfrac = core.value_loss(t([[1.0, 0.0]]), t([[0.5, 0.0]]), t([[2.0, 1.0]]), t([[1, 1]]), clip=0.2)
    assert loss.item() == pytest.approx(0.6725, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)


def test_kl_penalty_hand_computed():
    # kl = logp - ref: [-1+1.5, -2+1, padding] = [0.5, -1, 0]
    kl = core.per_token_kl(t([[-1.0, -2.0, -0.5]]), t([[-1.5, -1.0, -3.0]]), t([[1, 1, 0]]))
    assert kl[0].tolist() == pytest.approx([0.5, -1.0, 0.0])
    # beta=0.1, score 2 on the last real token (index 1): [-0.05, 0.1 + 2, 0]
    rewards = core.kl_penalized_rewards(t([2.0]), kl, torch.tensor([1]), kl_coef=0.1)
    assert rewards[0].tolist() == pytest.approx([-0.05, 2.1, 0.0])


def test_eos_mask_and_penalty():
    responses = torch.tensor([[5, 7, 2, 9], [5, 5, 5, 5]])  # eos id 2: row 0 ends at index 2, row 1 never ends
    mask, last, has_eos = core.response_mask(responses, eos_token_id=2)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert last.tolist() == [2, 3]
    assert has_eos.tolist() == [True, False]
    assert core.apply_eos_penalty(t([0.3, 0.3]), has_eos, penalty=1.0).tolist() == pytest.approx([0.3, -0.7])


def test_adaptive_kl_controller_hand_computed():
    # Ziegler et al. Eq. 2: e = clip(KL/target - 1, +-0.2); beta *= 1 + e * n / horizon
    ctl = core.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    assert ctl.update(9.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 0.0256))  # e = 0.5 clipped to 0.2 -> 0.100512
    assert ctl.update(3.0, 256) == pytest.approx(0.100512 * (1 - 0.2 * 0.0256))  # e = -0.5 -> -0.2
    ctl = core.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    assert ctl.update(6.6, 256) == pytest.approx(0.1 * (1 + 0.1 * 0.0256))  # e = 0.1 inside the clip range
    assert core.FixedKLController(0.05).update(100.0, 256) == 0.05


def test_logprobs_with_temperature():
    # logits [0, ln 3] -> p = [1/4, 3/4]; at temperature 2 -> [0, ln 3 / 2] -> p1 = sqrt3 / (1 + sqrt3)
    logits = t([[[0.0, math.log(3.0)]]])
    assert core.logprobs_of(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75), abs=1e-6)
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    assert core.logprobs_of(logits, torch.tensor([[1]]), temperature=2.0).item() == pytest.approx(expected, abs=1e-6)
