# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The kernel plans of the STViT backbone, as the analysis tools name them.

The one module of :mod:`mmstvit.analysis` that knows where the plans live
(:mod:`mmstvit.models.backbones.kernels`) and what they, the switch and
the model's argument are called; the others ask here.
"""
import dataclasses

from mmstvit.models.backbones import kernels as execution

#: the class of a plan (one flag per fast path)
Plan = execution.Kernels
#: the model's keyword for its plan (``STViT(..., kernels=plan)``)
MODEL_ARG = 'kernels'
#: whether oneDNN's fused convolutions exist in this torch
HAS_ONEDNN = execution.HAS_ONEDNN


def fast_plan():
    """The plan users train with (the default)."""
    return execution.FAST


def deploy_plan():
    """The plan users run inference with (``switch_to_deploy``)."""
    return execution.deploy_plan(execution.HAS_ONEDNN)


def replaced(plan, **flags):
    """``plan`` with ``flags`` changed (a new plan)."""
    return dataclasses.replace(plan, **flags)


def flag_names():
    """The names of the plan's flags, in order."""
    return [f.name for f in dataclasses.fields(Plan)]


def set_plan(model, plan):
    """Runs STViT ``model`` with ``plan`` (a name or a plan); returns it."""
    return model.set_kernels(plan)


def counting_flops(model):
    """A ``with`` block in which every STViT of ``model`` runs the paper's
    FLOP-counting protocol (the ``reference`` plan)."""
    return execution.use_kernels(model, 'reference')
