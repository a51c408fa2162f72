"""Train on collected comparisons: reward model, SFT, DPO, PPO/RLOO, evaluation, distillation and Hub publishing."""

__version__ = "0.1.0"
