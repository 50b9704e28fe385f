# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The measurements behind tools/analysis_tools/ (benchmark.py, gpu_check.py,
fast_paths.py, compare_checkouts.py, get_flops.py), as a library.

``import mmstvit`` does not import this package; import its modules
(``from mmstvit.analysis import timing``). One job each:

========================  ==================================================
``timing``                interleaved rounds, the CPU-time clock, medians,
                          the inference call and training step timed
``memory``                peak memory of one step, a fresh process for it
``models``                the backbones compared (ours, the authors', peers)
                          and their FLOPs
``plans``                 the kernel plans as the tools name them
``speed``                 a set of models timed in one setting
``benchmark``             benchmark.py's run; ``ddp``, ``compiled``: its
                          DDP and ``torch.compile`` comparisons
``tables`` / ``report``   the markdown tables; JSON, machine, table cells
``device_check``          gpu_check.py's run and table; ``numerics`` (same
                          numbers as the CPU) and ``amp_steps`` its checks
``fast_paths``            each fast path turned off on its own
``checkouts``             two checkouts of mmstvit, fresh processes
``flops``                 get_flops.py's protocol (the paper's counts)
``support``               what they take from the tools' support code
========================  ==================================================
"""
