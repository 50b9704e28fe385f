# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""A training killed midway and restarted with --resume ends where an
uninterrupted run ends: same iteration count and the same weights (so the
same metrics), on torch >= 2.6 where mmengine's own resume would fail on
weights_only=True without mmstvit's allow-list (its reader replaces
mmengine's loaders)."""
import os
import os.path as osp
import sys

from mmstvit.utils.checkpoint import load_checkpoint_file

from helpers import REPO
from test_tools import SCRATCH, run, seg_case  # noqa: F401

DIE_HOOK = '''
import os
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DieAfterIter(Hook):
    """Ends the process abruptly (no clean-up, like a kill) after an iter."""
    priority = 'LOWEST'  # after the CheckpointHook has saved

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.at:
            os._exit(137)
'''


def train(cfg, work, cwd, *extra):
    env = dict(PYTHONPATH=str(cwd) + os.pathsep + REPO)
    return run([
        sys.executable,
        osp.join(REPO, 'tools', 'train.py'),
        str(cfg), '--work-dir', str(work)
    ] + SCRATCH + ['train_cfg.max_iters=4', 'train_cfg.val_interval=4'] +
               list(extra), cwd=cwd, env=env)


def test_killed_run_resumes_to_the_same_end(seg_case, tmp_path):
    _, cfg = seg_case
    (tmp_path / 'die_hook.py').write_text(DIE_HOOK)

    full = train(cfg, tmp_path / 'full', tmp_path)
    assert full.returncode == 0, (full.stdout + full.stderr)[-3000:]

    dying = tmp_path / 'dying.py'
    dying.write_text(
        f'_base_ = {str(cfg)!r}\n'
        "custom_imports = dict(imports=['mmstvit', 'die_hook'], "
        'allow_failed_imports=False)\n'
        "custom_hooks = [dict(type='DieAfterIter', at=3)]\n")
    killed = train(dying, tmp_path / 'killed', tmp_path)
    assert killed.returncode == 137, (killed.stdout + killed.stderr)[-3000:]
    assert (tmp_path / 'killed' / 'iter_2.pth').is_file()
    assert not (tmp_path / 'killed' / 'iter_4.pth').exists()

    resumed = train(cfg, tmp_path / 'killed', tmp_path, '--resume')
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert 'resumed epoch: 0, iter: 2' in out
    assert 'Iter(train) [4/4]' in out and 'Iter(train) [3/4]' in out

    a = load_checkpoint_file(tmp_path / 'full' / 'iter_4.pth')
    b = load_checkpoint_file(tmp_path / 'killed' / 'iter_4.pth')
    assert a['meta']['iter'] == b['meta']['iter'] == 4
    assert a['state_dict'].keys() == b['state_dict'].keys()
    # It continued the same optimisation, not a new one: AdamW's state came
    # back (4 steps on every parameter), the schedule went on where it was
    # (iteration 3 at the lr of the uninterrupted run), and the last two
    # iterations moved the weights away from iteration 2 as far as in the
    # uninterrupted run. (mmengine does not store the sampler's seed, so the
    # batch order after a resume may differ: weights match within noise,
    # not bit for bit.)
    for run_ in (a, b):
        steps = {float(v['step']) for v in run_['optimizer']['state'].values()}
        assert steps == {4.0}
    lr3 = [ln for ln in out.splitlines() if 'Iter(train) [3/4]' in ln][0]
    assert 'lr: 3.3333e-04' in lr3, lr3
    a2 = load_checkpoint_file(tmp_path / 'full' / 'iter_2.pth')
    params = [k for k, v in a['state_dict'].items() if v.is_floating_point()
              and 'running' not in k]

    def dist(x, y):
        return float(sum(((x[k].float() - y[k].float())**2).sum()
                         for k in params).sqrt())

    moved_full = dist(a['state_dict'], a2['state_dict'])
    moved_resumed = dist(b['state_dict'], a2['state_dict'])
    assert moved_full > 0
    assert 0.5 < moved_resumed / moved_full < 2, (moved_resumed, moved_full)

    def last_loss(text):
        line = [ln for ln in text.splitlines() if 'Iter(train) [4/4]' in ln][0]
        return float(line.split(' loss: ')[1].split()[0])

    assert abs(last_loss(out) - last_loss(full.stdout + full.stderr)) < 0.05
