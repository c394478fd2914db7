"""Focal loss for multi-class logits (lesson 02; used against class imbalance in lesson 06).

FL = -alpha_t * (1 - p_t) ** gamma * log(p_t) (Lin et al., 2017). Confident, easy examples
(p_t near 1) are down-weighted so the hard ones dominate the gradient; gamma = 0 without alpha is
plain cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha=None,
               reduction: str = "mean") -> torch.Tensor:
    """Multi-class focal loss. `alpha` is None, or one weight per class (list or tensor)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    # log_softmax, not log(softmax): the latter gives -inf (and NaN gradients) for large logits.
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_p_t = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # 1 - p_t through expm1 keeps its precision when p_t is close to 1. Where it is exactly 0, the
    # derivative of x ** gamma is infinite for gamma < 1 and times 0 gives NaN gradients: a floor at
    # the smallest normal float keeps it finite, and the clamp passes no gradient there.
    one_minus_p_t = (-torch.expm1(log_p_t)).clamp_min(torch.finfo(log_p_t.dtype).tiny)
    loss = -(one_minus_p_t**gamma) * log_p_t
    if alpha is not None:
        alpha = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        loss = alpha[targets] * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, alpha=None, reduction: str = "mean"):
        super().__init__()
        self.gamma = gamma
        self.reduction = reduction
        # A buffer moves with the module to the training device.
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits, targets):
        return focal_loss(logits, targets, self.gamma, self.alpha, self.reduction)
