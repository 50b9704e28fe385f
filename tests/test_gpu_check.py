# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""tools/analysis_tools/gpu_check.py on the CPU (``--device cpu --quick``):
the code a GPU machine runs, with the device and dtype as parameters (the
plain kernel plan stands in for the GPU's numbers, bfloat16 for fp16),
ends with its table and JSON and passes its own checks."""
import json
import math
import os
import subprocess
import sys

from helpers import REPO


def test_gpu_check_on_cpu(tmp_path):
    out = tmp_path / 'gpu_check.json'
    proc = subprocess.run(
        [sys.executable, 'tools/analysis_tools/gpu_check.py', '--device',
         'cpu', '--quick', '--out', str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1'))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-5000:]
    # progress on stderr as it goes, one table at the end on stdout
    assert '[gpu_check' in proc.stderr and 'compare: cpu fp64' in proc.stderr
    table = proc.stdout.split('\n\nwritten to')[0]
    assert table.startswith('| check | setting | result | limit | status |')
    assert 'all checks passed' in table
    for row in ('| cpu fp32 plain vs cpu fp32 |',
                '| cpu fp32 plain vs cpu fp64 |',
                '| cpu fp32 vs cpu fp64 |',
                '| AMP bf16 steps (DeviceAmpOptimWrapper) |',
                '| speed stvit_s fp32 |', '| speed swin_t bf16 |',
                '| speed STViT-S / Swin-T bf16 |'):
        assert row in table, (row, table)

    res = json.loads(out.read_text())
    assert res['ok'] and res['quick'] and res['table'] == table
    compare = res['compare']
    assert [(p['a'], p['b']) for p in compare['pairs']] == [
        ('cpu fp32 plain', 'cpu fp32'),
        ('cpu fp32 plain', 'cpu fp64'), ('cpu fp32', 'cpu fp64')]
    for p in compare['pairs']:
        assert p['ok'] and p['params_compared'] > 300
        assert p['param_grads'] <= compare['tolerance']['grads']
    amp = res['amp']['bf16']
    assert amp['ok'] and amp['autocast_dtype'] == 'torch.bfloat16'
    assert amp['logits_dtype'] == 'torch.bfloat16'
    assert not amp['loss_scaling'] and not amp['mmengine_path']
    assert all(math.isfinite(v) for v in amp['losses'])
    assert amp['max_weight_change'] > 0
    assert amp['first_step_grad_rel_err'] <= amp['grad_tolerance']
    speed = res['speed']['models']
    for name in ('stvit_s', 'swin_t'):
        for precision in ('fp32', 'bf16'):
            r = speed[name][precision]
            assert r['inference']['img_s'] > 0
            assert r['train']['seconds'] > 0 and r['train']['peak_mib'] >= 0
