# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""tools/demo.py, the main job: a one-iteration smoke run on tiny data (the
real run, 200 training images and a few hundred iterations, is `make demo`;
its figures are in the README)."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from helpers import REPO, load_script


def load_demo():
    return load_script('tools/demo.py')


def test_parse_args_rejects_nonsense(capsys):
    demo = load_demo()
    args = demo.parse_args([])
    assert args.tasks == ['det', 'seg'] and args.iters is None
    for bad in (['--iters', '0'], ['--num-val', '-1'], ['--tasks', 'cls']):
        with pytest.raises(SystemExit):
            demo.parse_args(bad)
    assert '--iters must be at least 1' in capsys.readouterr().err


def test_latest_metrics_takes_the_newest_run(tmp_path):
    demo = load_demo()
    with pytest.raises(SystemExit, match='no metrics json'):
        demo.latest_metrics(str(tmp_path))
    old = tmp_path / '20240101_000000' / '20240101_000000.json'
    new = tmp_path / '20240102_000000' / '20240102_000000.json'
    for path, value in ((old, 0.1), (new, 0.7)):
        path.parent.mkdir()
        path.write_text(json.dumps({'mIoU': value}))
    os.utime(old, (1, 1))
    (tmp_path / '20240102_000000' / 'vis_data').mkdir()
    (tmp_path / '20240103_000000').mkdir()
    (tmp_path / '20240103_000000' / 'broken.json').write_text('{')
    assert demo.latest_metrics(str(tmp_path)) == {'mIoU': 0.7}


def test_demo_smoke_run(tmp_path):
    """Data generation, before/train/after with the real tools and the
    summary, for both models, one iteration each on 2 training and 5 validation images (mmseg
    draws every 5th validation image: the 5th)."""
    work = tmp_path / 'demo'
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = subprocess.run([
        sys.executable, 'tools/demo.py', '--work-dir',
        str(work), '--data-root',
        str(tmp_path / 'data'), '--num-train', '2', '--num-val', '5',
        '--iters', '1'
    ],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=600,
                          env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert 'toy_coco: wrote 2 train + 5 val images' in out
    assert 'mmstvit demo: STViT-S trained from random init' in out

    # a quiet console: phases, one progress line per logged iteration and
    # the summary table last; the mm logs and warnings go to the log files
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) < 40, out
    assert proc.stderr == '', proc.stderr
    for noise in ('mmengine - INFO', 'Warning', 'paramwise_options',
                  'Iter(train)', 'Iter(test)'):
        assert noise not in out, noise
    for phase in ('[data]', '[det]', '[seg]', 'evaluate at random init',
                  'train 1 iteration', 'evaluate the trained model'):
        assert phase in out, phase
    assert sum(ln.lstrip().startswith('iter    1/1  loss ')
               for ln in lines) == 2  # one logged iteration per model
    assert lines[-1] == '=' * 72
    assert lines.index('mmstvit demo: STViT-S trained from random init on '
                       'the toy data') > max(
                           i for i, ln in enumerate(lines)
                           if 'evaluate the trained model' in ln)

    summary = json.loads((work / 'summary.json').read_text())
    det, seg = summary['tasks']['det'], summary['tasks']['seg']
    for task, metrics in ((det, ('bbox mAP', 'segm mAP')), (seg, ('mIoU', ))):
        assert task['checkpoint'].endswith('iter_1.pth')
        assert osp.isfile(task['checkpoint'])
        for when in ('before', 'after'):
            assert set(task[when]) == set(metrics)
            # numbers parsed from the json that tools/test.py wrote
            assert all(isinstance(v, (int, float))
                       for v in task[when].values()), task
        assert all(osp.isfile(p) for p in task['pictures'])
        # what the console no longer shows is in the logs, command first
        for phase, log in task['logs'].items():
            text = open(log).read()
            assert text.startswith('$ ') and 'tools/' in text.splitlines()[0]
            assert 'mmengine - INFO' in text, phase
        assert 'Iter(train) [1/1]' in open(task['logs']['train']).read()
    assert len(det['pictures']) == 5  # mmdet draws every val image
    assert len(seg['pictures']) == 1  # mmseg every 5th (iter 5 of 5)
    assert 0 <= seg['after']['mIoU'] <= 100
    assert summary['total_seconds'] > 0
    # the printed table shows the parsed figures
    row = [ln for ln in out.splitlines() if ln.startswith('UperNet')
           and 'mIoU' in ln]
    assert row and row[-1].split()[-1] == f'{seg["after"]["mIoU"]:.2f}'
