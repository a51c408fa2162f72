"""The multi-head reward model's trainer (`reward --heads`, rlhf/reward_heads.py): a RewardTrainer whose `score`
layer has K outputs, one per head, on the shared last-token features, the way odin trains its two heads
(rlhf/reward_debias.py: the DroppedTermTrainer / ColumnsCollator pattern, nothing dropped at the end here).

With y_ik in {+1, -1, 0} pair i's label for head k (+1 the chosen response is better on it, -1 the rejected one,
0 no label) and r_k(x, y) head k's output, each head is a Bradley-Terry model (Bradley & Terry 1952) fitted on its
own labelled pairs only, with the reward-model loss of Ouyang et al. 2022 (arXiv 2203.02155, Eq. 1):

    loss = sum_k  mean_{i: y_ik != 0}  -log sigmoid(y_ik * (r_k(x_i, y_c,i) - r_k(x_i, y_r,i)))

A head with no labelled pair in a batch adds nothing to that batch's loss. TRL's optional per-pair margin applies
to `overall` only: it measures the strength of the overall votes; so does `--label-trust`'s soft label or weight
(rlhf/label_trust.py: -[p log sigmoid(d) + (1 - p) log sigmoid(-d)] for that head). Tensor shapes: B pairs per
batch, K heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhf.label_trust import COLUMNS
from rlhf.reward_debias import DroppedTermTrainer, bt_loss
from rlhf.reward_heads import LABELS


class HeadsTrainer(DroppedTermTrainer):
    """RewardTrainer for a K-output `score` head trained by the per-head loss above (module doc)."""

    extra_columns = (LABELS,)  # (B, K)

    def __init__(self, *args, heads: Sequence[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.heads = tuple(heads)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop(LABELS)  # (B, K)
        outputs = self.pair_forward(model, inputs)
        r_c, r_r = torch.chunk(outputs.logits.float(), 2)  # (B, K) each: chosen, rejected
        right = labels * (r_c - r_r)  # (B, K): > 0 where the head orders the pair as its label does
        loss = r_c.new_zeros(())
        accuracy = {}
        for k, head in enumerate(self.heads):
            has = labels[:, k] != 0  # (B,)
            if not has.any():
                continue
            # The margin and --label-trust's soft label or weight measure the overall votes: `overall` alone.
            per_pair = {c: v[has] for c, v in inputs.items() if c in ("margin", *COLUMNS)} if head == "overall" else {}
            loss = loss + bt_loss(right[has, k], per_pair)
            accuracy[f"accuracy_{head}"] = (right[has, k] > 0).float().mean().item()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((r_c + r_r) ** 2)
        main = self.heads.index("overall") if "overall" in self.heads else 0
        self.log_pair_metrics(r_c[:, main], r_r[:, main], **accuracy)
        return (loss, outputs) if return_outputs else loss
