"""Distillation losses. Every module of this package registers its methods on import."""

import importlib
import pkgutil

from .base import METHODS, DistillLoss, LossInputs, MethodInfo, MethodParams, PrepareData, build_loss, register_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "DistillLoss", "LossInputs", "MethodInfo", "MethodParams", "PrepareData", "build_loss",
           "register_method"]
