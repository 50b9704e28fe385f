# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The data pre-flight of tools/train.py and tools/test.py runs once per
job: on rank 0 only, read from each launcher's environment; in a 2-process
torchrun run of tools/train.py its log line appears once per annotation
file, and a bad annotation file still stops both processes with the
message. And the benchmark of the check against pycocotools runs."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
from mmengine.config import Config

from mmstvit.cli import dist, preflight
from mmstvit.cli.errors import ToolError

from helpers import REPO, free_port

TOY_DET = osp.join(REPO, 'configs', 'toy', 'mask_rcnn_stvit_s_toy.py')
TINY_ARCH = dict(
    embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])

# --------------------------------------------------------------------------
# which rank checks
# --------------------------------------------------------------------------

RANK_VARS = ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK')


@pytest.fixture
def clean_rank_env(monkeypatch):
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def missing_root_cfg(tmp_path, launcher):
    return Config(
        dict(
            launcher=launcher,
            train_dataloader=dict(
                dataset=dict(
                    type='CocoDataset',
                    data_root=str(tmp_path / 'missing'),
                    ann_file='annotations/instances_train.json'))))


@pytest.mark.parametrize('launcher, var', [('pytorch', 'RANK'),
                                           ('slurm', 'SLURM_PROCID'),
                                           ('mpi', 'OMPI_COMM_WORLD_RANK')])
def test_only_rank_0_of_each_launcher_checks(clean_rank_env, tmp_path,
                                            launcher, var):
    cfg = missing_root_cfg(tmp_path, launcher)
    for rank in ('1', '7'):
        clean_rank_env.setenv(var, rank)
        assert dist.launcher_rank(launcher) == int(rank)
        preflight.stop_on_bad_data(cfg, 'mmdet', ('train', ))  # skipped
    clean_rank_env.setenv(var, '0')
    with pytest.raises(ToolError, match='does not exist'):
        preflight.stop_on_bad_data(cfg, 'mmdet', ('train', ))
    # another launcher's variable does not count
    for other in RANK_VARS:
        clean_rank_env.setenv(other, '0' if other == var else '3')
    with pytest.raises(ToolError, match='does not exist'):
        preflight.stop_on_bad_data(cfg, 'mmdet', ('train', ))


def test_non_distributed_runs_always_check(clean_rank_env, tmp_path):
    for var in RANK_VARS:  # e.g. inside a Slurm allocation
        clean_rank_env.setenv(var, '2')
    cfg = missing_root_cfg(tmp_path, 'none')
    assert dist.launcher_rank('none') == 0
    with pytest.raises(ToolError, match='does not exist'):
        preflight.stop_on_bad_data(cfg, 'mmdet', ('train', ))
    # the launcher given outright wins over cfg.launcher
    preflight.stop_on_bad_data(cfg, 'mmdet', ('train', ), launcher='pytorch')
    # a variable that is not a number: checked, not skipped
    clean_rank_env.setenv('RANK', 'x')
    with pytest.raises(ToolError, match='does not exist'):
        preflight.stop_on_bad_data(cfg, 'mmdet', ('train', ), launcher='pytorch')


# --------------------------------------------------------------------------
# a 2-process torchrun run of tools/train.py
# --------------------------------------------------------------------------

TINY_DET_CFG = """
_base_ = {base!r}
data_root = {data!r}
model = dict(
    backbone=dict(_delete_=True, type='STViT', arch={arch!r},
                  stoken_size=[4, 2, 1, 1], drop_path_rate=0.),
    neck=dict(in_channels=[16, 32, 48, 64], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32)))
train_dataloader = dict(batch_size=1, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
"""


def processes_mentioning(text):
    """Ids of the live processes whose command line contains ``text``."""
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(
                    errors='replace')
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


def torchrun_train(cfg, work_dir, timeout=240):
    """tools/train.py in 2 CPU processes under torchrun: (exit code,
    stdout + stderr, seconds). On a timeout the whole process group (which
    this call started) is ended and the test fails."""
    cmd = [
        sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1',
        '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
        '--master_port',
        str(free_port()),
        osp.join(REPO, 'tools', 'train.py'),
        str(cfg), '--launcher', 'pytorch', '--work-dir',
        str(work_dir)
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        MKL_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='')
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f'torchrun did not end within {timeout} s:\n'
                    f'{out[-4000:]}')
    return proc.returncode, out, time.monotonic() - t0


@pytest.fixture
def tiny_det(tmp_path):
    from mmstvit.data.toy_data import generate_toy_coco
    data = tmp_path / 'toy_coco'
    generate_toy_coco(data, num_train=2, num_val=2)
    cfg = tmp_path / 'tiny_mask_rcnn_toy.py'
    cfg.write_text(
        TINY_DET_CFG.format(base=TOY_DET, data=str(data) + '/',
                            arch=TINY_ARCH))
    return cfg, data


def test_torchrun_checks_each_annotation_file_once(tiny_det, tmp_path):
    cfg, data = tiny_det
    work = tmp_path / 'work'
    code, out, _ = torchrun_train(cfg, work)
    assert code == 0, out[-4000:]
    assert 'Iter(train) [1/1]' in out and (work / 'iter_1.pth').is_file()
    # both processes log their INFO lines before the process group starts
    # (so a check on rank 1 would show): the switch to gloo, once each
    assert out.count("using the 'gloo' backend") == 2, out[-4000:]
    checked = [line.split('mmstvit: data check: ')[1].rsplit(' (', 1)[0]
               for line in out.splitlines() if 'mmstvit: data check: ' in line]
    assert len(checked) == len(set(checked)), out[-4000:]  # each once
    for split in ('train', 'val'):
        ann = f'{data}/annotations/instances_{split}.json'
        assert out.count(f'mmstvit: data check: {ann}: 2 images') == 1, \
            out[-4000:]
    # and the images of both splits (tools/train.py's --data-check fast)
    assert sum('images readable (fast check)' in c for c in checked) == 2, \
        checked


def test_torchrun_stops_both_processes_on_a_bad_annotation_file(
        tiny_det, tmp_path):
    cfg, data = tiny_det
    ann_file = data / 'annotations' / 'instances_train.json'
    coco = json.loads(ann_file.read_text())
    coco['annotations'][0]['image_id'] = 999
    ann_file.write_text(json.dumps(coco))
    work = tmp_path / 'work_bad'
    code, out, seconds = torchrun_train(cfg, work)
    assert code != 0, out[-4000:]
    message = (f'mmstvit: {ann_file} is not a valid COCO instances file: '
               'annotations refer to image ids missing from "images": '
               'annotations[0]')
    assert out.count(message) == 1, out[-4000:]
    assert 'image_id 999' in out and 'make_toy_data' in out
    assert 'Iter(train)' not in out
    assert not work.exists() or not list(work.rglob('*.pth'))
    deadline = time.monotonic() + 30
    while processes_mentioning(str(work)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(str(work)) == [], 'a process was left'
    assert seconds < 180


# --------------------------------------------------------------------------
# tools/analysis_tools/benchmark_data_check.py
# --------------------------------------------------------------------------


def test_benchmark_data_check_runs(tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run([
        sys.executable,
        osp.join(REPO, 'tools', 'analysis_tools', 'benchmark_data_check.py'),
        '--images', '30', '--annotations', '200', '--out',
        str(out)
    ],
                          cwd=tmp_path,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '200 of 200 annotations written' in proc.stderr
    assert 'measuring pycocotools COCO(path)' in proc.stderr
    table = proc.stdout
    assert 'bench.json' in table and '30 images, 200 annotations' in table
    for row in ('pycocotools COCO(path)',
                'mmstvit check_coco_annotation(path)'):
        line = next(x for x in table.splitlines() if x.startswith(row))
        seconds, peak, added = map(float, line[len(row):].split())
        assert seconds >= 0 and peak > 0 and added >= 0
    assert 'mmstvit / pycocotools:' in table
    from mmstvit.data.checks import check_coco_annotation
    info = check_coco_annotation(out)
    assert (info['num_images'], info['num_annotations'],
            info['num_categories']) == (30, 200, 80)
