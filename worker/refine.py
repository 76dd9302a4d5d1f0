"""Teacher refinement before distillation: MCMI (docs/methods.md#mcmi).

The teacher is fine-tuned on CE − λ·CMI, with the class centroids Q computed once over the
training split (model in eval mode) and kept fixed, SGD with momentum and a cosine schedule, as
the reference FineTuneTeacher.py does. Only a TorchScript teacher can be refined: it is the only
format whose weights we can train without running user Python code (it runs in the teacher jail).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from kdserve.models.teachers import TorchScriptTeacher, named_outputs
from kdserve.worker.losses.mcmi import MCMIParams, class_centroids, cmi_estimate, teacher_loss


def refine_mcmi(teacher: TorchScriptTeacher, x: torch.Tensor, y: torch.Tensor, params: MCMIParams,
                device: torch.device, seed: int, on_epoch: Callable[[int, float, float], None]) -> None:
    """Fine-tune teacher.module in place on the labelled rows (x, y). on_epoch(epoch, mean_loss,
    cmi) after each epoch. Runs inside the teacher jail (worker/teacher_host.py): a TorchScript
    teacher is a program, and training it runs that program; a cancel ends the jailed process."""
    module = teacher.module.to(device)
    logits_of = lambda x: named_outputs(module(x))[teacher.logits_name].float()  # noqa: E731
    x, y = x.to(device), y.to(device)
    module.eval()
    with torch.no_grad():
        probs = torch.cat([F.softmax(logits_of(x[i:i + 512]), dim=1) for i in range(0, len(x), 512)])
    centroids = class_centroids(probs, y, teacher.num_classes).to(device)

    for p in module.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(module.parameters(), lr=params.lr, momentum=params.momentum,
                                weight_decay=params.weight_decay)
    steps = params.epochs * math.ceil(len(x) / params.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(params.epochs):
        module.train()
        total, cmi_total = 0.0, 0.0
        for idx in torch.randperm(len(x), generator=generator).to(device).split(params.batch_size):
            if len(idx) < 2:
                continue
            logits = logits_of(x[idx])
            loss = teacher_loss(logits, y[idx], centroids, params.lam)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss) * len(idx)
            cmi_total += float(cmi_estimate(logits.detach(), y[idx], centroids)) * len(idx)
        on_epoch(epoch + 1, total / len(x), cmi_total / len(x))
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
