"""The optimizers of a run: the GPT-2 recipe's AdamW with its weight-decay groups, or torch's Muon for the matrices
inside the transformer blocks beside AdamW for the rest (--optimizer muon)."""

import inspect
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn

from model import clean_name

# The 2-D weights inside the transformer blocks: what --optimizer muon gives to Muon (its docs: embeddings, the head,
# norms and biases stay on AdamW).
BLOCK_MATRICES = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# Muon's learning-rate adjustment: Moonshot's, which scales each matrix's orthogonalized update to AdamW's RMS (0.2
# sqrt(max(A, B))), so that Muon's learning rate and weight decay live on AdamW's scale and follow the same schedule.
MUON_ADJUST_LR = "match_rms_adamw"


def muon_available() -> bool:
    return hasattr(torch.optim, "Muon")


def configure_muon(model: nn.Module, weight_decay: float, adamw_lr: float, muon_lr: float, momentum: float,
                   device_type: str, log: Optional[Callable[[str], None]] = print
                   ) -> tuple[torch.optim.AdamW, torch.optim.Optimizer]:
    """(AdamW, Muon): torch.optim.Muon (Nesterov momentum, 5 Newton-Schulz steps, MUON_ADJUST_LR) over the block
    matrices, configure_optimizers' AdamW over the rest: the tied embedding and head, the positions, LayerNorms and
    biases. Both decay weights by weight_decay (decoupled)."""
    if not muon_available():
        raise ValueError(f"--optimizer muon needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}")
    named = [(clean_name(name), p) for name, p in model.named_parameters() if p.requires_grad]
    matrices = [p for name, p in named if name.endswith(BLOCK_MATRICES)]
    adamw = configure_optimizers([p for name, p in named if not name.endswith(BLOCK_MATRICES)], weight_decay,
                                 adamw_lr, device_type, log)
    muon = torch.optim.Muon(matrices, lr=muon_lr, weight_decay=weight_decay, momentum=momentum,
                            adjust_lr_fn=MUON_ADJUST_LR)
    if log is not None:
        log(f"Muon: {len(matrices)} block matrices, {sum(p.numel() for p in matrices):,} parameters, lr {muon_lr:g}, "
            f"momentum {momentum:g}, adjust_lr_fn {MUON_ADJUST_LR}")
    return adamw, muon


def configure_optimizers(parameters: Iterable[nn.Parameter], weight_decay: float, learning_rate: float,
                         device_type: str, log: Optional[Callable[[str], None]] = print) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95, eps 1e-8) over any model's parameters, weight decay only on matrices and embeddings
    (dim >= 2), fused on CUDA. The group sizes are reported through `log` (print by default; None is silent)."""
    params = [p for p in parameters if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    if log is not None:
        log(
            f"decayed: {len(decay)} tensors, {sum(p.numel() for p in decay):,} parameters; "
            f"not decayed: {len(no_decay)} tensors, {sum(p.numel() for p in no_decay):,} parameters; "
            f"fused AdamW: {fused}"
        )
    return optimizer
