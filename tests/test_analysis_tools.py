# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""get_flops.py reproduces the paper's count for a config; benchmark.py
produces a complete, finite table (a smoke run, not a measurement)."""
import json
import math
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))

import get_flops  # noqa: E402


def test_get_flops_classifier_matches_paper():
    r = get_flops.measure(osp.join(ROOT, 'configs/stvit_s_in1k_224.py'))
    assert r['shape'] == (224, 224)
    # paper: 25M, 4.4G; the authors' model measures 25.50M, 4.37G
    assert abs(r['params'] / 1e6 - 25.50) < 0.01
    assert abs(r['flops'] / 1e9 - 4.4) / 4.4 < 0.03


def test_get_flops_cli_detector_at_a_given_shape():
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/get_flops.py',
         'configs/mask_rcnn_stvit_s_1x.py', '--shape', '128', '160'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'input: 160x128 (W x H)' in out.stdout
    assert 'params: 44.11 M' in out.stdout  # docs/reference_numbers.md: 44.11M


def test_get_flops_needs_a_config():
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/get_flops.py', 'nope.py'],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and 'nope.py does not exist' in out.stderr


def test_benchmark_quick_run(tmp_path):
    out_json = tmp_path / 'bench.json'
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/benchmark.py', '--quick',
         '--models', 'stvit_s', 'resnet50', '--out', str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out_json.read_text())
    assert set(res['models']) == {'stvit_s', 'resnet50'}
    for name, r in res['models'].items():
        for key in ('224_b8', '224_b64', '1280x800_b1'):
            inf = r['inference'][key]
            assert inf['img_s_min'] <= inf['img_s'] <= inf['img_s_max']
            assert math.isfinite(inf['gflop_s']) and inf['gflop_s'] > 0
            assert r['flops'][key] > 0
        assert r['train']['seconds'] > 0 and r['train']['peak_mib'] > 0
    assert abs(res['models']['stvit_s']['params_m'] - 23.94) < 0.01
    assert '| stvit_s |' in out.stdout and '| resnet50 |' in out.stdout


def test_benchmark_refuses_unknown_and_missing_official(tmp_path):
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/benchmark.py', '--quick',
         '--models', 'official_stvit_s', '--out', str(tmp_path / 'b.json')],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and 'needs --official' in out.stderr
