"""Empirical Lipschitz estimates of the uni-modal scores (method.md §4).

tau~_k^(m) is estimated, as in the paper, by the largest input-gradient norm
||grad_{x^(m)} s_k^(m)(x)||_2 seen over a data set. The estimate is a lower bound of the
true constant, so radii computed from it are *estimated* certified radii.

Only input gradients are computed (``torch.autograd.grad`` with ``inputs=x``): parameter
gradients are neither computed nor accumulated. The encoder must be in eval mode so that
samples are independent and the gradient of the batch sum of s_k is the per-sample gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

GradientMethod = Literal["loop", "batched"]


def score_gradient_norms(
    score_fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, method: GradientMethod = "loop"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and per-class input-gradient norms of one modality.

    score_fn maps inputs (B, ...) to scores (B, K). Returns (scores (B, K) detached,
    norms (B, K)) with norms[i, k] = ||d s_k(x_i) / d x_i||_2.

    ``method="loop"``: one forward, K backward passes over the retained graph.
    ``method="batched"``: one forward, one vmapped backward over K one-hot cotangents
    (``is_grads_batched``); faster where memory bandwidth is plentiful (GPUs).
    """
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = score_fn(x)
        num_classes = scores.shape[1]
        if method == "loop":
            norms = []
            for k in range(num_classes):
                (grad,) = torch.autograd.grad(scores[:, k].sum(), x, retain_graph=k + 1 < num_classes)
                norms.append(grad.flatten(1).norm(dim=1))
            norm_matrix = torch.stack(norms, dim=1)
        elif method == "batched":
            eye = torch.eye(num_classes, dtype=scores.dtype, device=scores.device)
            cotangents = eye[:, None, :].expand(num_classes, *scores.shape)
            (grad,) = torch.autograd.grad(scores, x, grad_outputs=cotangents, is_grads_batched=True)
            norm_matrix = grad.flatten(2).norm(dim=2).T
        else:
            raise ValueError(f"unknown tau estimation method {method!r}; expected 'loop' or 'batched'")
    return scores.detach(), norm_matrix.detach()


def score_input_gradients(features: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Input gradients g_k(x_i) = d s_k(x_i) / d x_i of every class score s = features @ weight.T.

    features (B, D) must have been computed from ``inputs`` (B, ...) with autograd on; weight
    (K, D). Returns (B, K, ...). K input-only backward passes over the retained graph; the K
    gradients of the batch are held at once (B * K * input size floats). Their Gram matrix gives
    the gradient norm of any class combination, e.g. of a class-pair margin (JT's eta, method.md §1).
    """
    num_classes = weight.shape[0]
    gradients = []
    for k in range(num_classes):
        cotangent = weight[k].expand_as(features)
        (grad,) = torch.autograd.grad(features, inputs, grad_outputs=cotangent, retain_graph=True)
        gradients.append(grad)
    return torch.stack(gradients, dim=1).detach()
