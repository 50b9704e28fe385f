# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Which checkpoint a resume starts from, and whether it fits the config.

* :func:`choose_resume_checkpoint`: ``--resume`` with a path checks that the
  file loads, and names the newest older checkpoint that does when it does
  not; auto-resume takes the file ``last_checkpoint`` names, or, when that is
  missing, empty or unreadable, the newest checkpoint of the work dir that
  loads, and says which and why. It never starts from scratch while the
  work dir holds checkpoints (it stops and names them when none loads).
* :func:`fit_problems`: a checkpoint of another model or of an optimizer
  with other parameter groups (``frozen_stages`` raised since the run
  started) is named with what differs, instead of mmengine's raw
  ``ValueError`` from ``Optimizer.load_state_dict`` or a partial
  ``strict=False`` load of the weights.

Errors are :class:`ResumeError`; ``tools/train.py`` prints its message and
exits, the toolboxes' own tools show it at the end of a traceback.
"""
import difflib
import logging
import os
import os.path as osp
import pickle
import re
from typing import Iterable, List, Optional, Tuple

from mmstvit.engine.atomic_files import final_name_of

#: names of the checkpoints CheckpointHook writes by default
DEFAULT_TEMPLATES = ('epoch_{}.pth', 'iter_{}.pth')

#: config keys a resume changes by itself (not a change of the run)
_RUN_KEYS = ('load_from', 'resume', 'work_dir', 'launcher')


class ResumeError(RuntimeError):
    """A resume that cannot go on; the message says why and what to do."""


def _reason(e: BaseException) -> str:
    """The error under ``e``, its first sentence."""
    cause = e.__cause__ if e.__cause__ is not None else e
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ''
    return f'{type(cause).__name__}: {text.split(". ")[0][:200]}'


def read_checkpoint(path: str):
    """``(checkpoint, None)`` when ``path`` is a checkpoint of an mm
    training run that loads with the weights-only reader (memory-mapped, so
    cheap), else ``(None, why not)``."""
    from mmstvit.weights import (UnsafeCheckpointError, is_official_checkpoint,
                                 load_checkpoint_file, sniff_format)
    if not osp.isfile(path):
        return None, 'there is no such file'
    try:
        ckpt = load_checkpoint_file(path, mmap=True)
    except UnsafeCheckpointError as e:
        return None, str(e)
    except (ValueError, OSError, EOFError, RuntimeError,
            pickle.UnpicklingError) as e:
        return None, (f'it is not a complete PyTorch file ({_reason(e)}); '
                      'a process killed while writing it leaves such a file')
    if is_official_checkpoint(ckpt):
        return None, ('it is an official STViT ImageNet checkpoint, with no '
                      'training state; start a new run from it with '
                      'load_from instead')
    if sniff_format(path) == 'safetensors':
        return None, ('it is a .safetensors file: weights only, with no '
                      'training state; start a new run from it with '
                      'load_from instead')
    if not isinstance(ckpt, dict) or not isinstance(
            ckpt.get('state_dict', None), dict) or not isinstance(
                ckpt.get('meta', None), dict):
        return None, ('it is not a checkpoint of an mm training run (no '
                      '"state_dict" and "meta")')
    return ckpt, None


def checkpoint_seed(path: str) -> Optional[int]:
    """The random seed of the run that saved ``path`` (None if unknown)."""
    ckpt, _ = read_checkpoint(path)
    seed = (ckpt or {}).get('meta', {}).get('seed', None)
    return int(seed) if isinstance(seed, int) else None


def checkpoint_problem(path: str) -> Optional[str]:
    """None when :func:`read_checkpoint` reads ``path``, else why not."""
    return read_checkpoint(path)[1]


def _position(ckpt) -> str:
    meta = ckpt.get('meta', {})
    return f"epoch {meta.get('epoch', '?')}, iteration {meta.get('iter', '?')}"


def _pattern(template: str):
    return re.compile('^' + re.escape(template).replace(r'\{\}', r'(\d+)') +
                      '$')


def find_checkpoints(folders: Iterable[str],
                     templates: Iterable[str] = DEFAULT_TEMPLATES
                     ) -> List[str]:
    """The checkpoints CheckpointHook wrote in ``folders`` (names made by
    ``templates``; temporary files and ``best_*`` files are not), newest
    first: highest number, then latest modification."""
    patterns = [_pattern(t) for t in templates]
    found = {}
    for folder in folders:
        if not folder or not osp.isdir(folder):
            continue
        for name in os.listdir(folder):
            if final_name_of(name) is not None:
                continue
            for p in patterns:
                m = p.match(name)
                if m:
                    path = osp.join(folder, name)
                    found[osp.realpath(path)] = (int(m.group(1)),
                                                 osp.getmtime(path), path)
    return [v[2] for v in sorted(found.values(), reverse=True)]


def read_last_checkpoint(work_dir: str) -> Tuple[Optional[str], str]:
    """``(path, note)``: what ``work_dir/last_checkpoint`` names (None when
    it is missing or empty, with the note saying so)."""
    marker = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(marker):
        return None, f'{marker} does not exist'
    try:
        with open(marker) as f:
            path = f.read().strip()
    except OSError as e:
        return None, f'{marker} cannot be read ({e})'
    if not path:
        return None, f'{marker} is empty'
    return path, ''


def _same(a: str, b: str) -> bool:
    return osp.realpath(a) == osp.realpath(b)


def older_readable(path: str, folders: Iterable[str],
                   templates=DEFAULT_TEMPLATES) -> Optional[Tuple[str, str]]:
    """``(file, position)`` of the newest checkpoint in ``folders`` other
    than ``path`` that loads, or None."""
    for cand in find_checkpoints(folders, templates):
        if _same(cand, path):
            continue
        ckpt, problem = read_checkpoint(cand)
        if problem is None:
            return cand, _position(ckpt)
    return None


def choose_resume_checkpoint(work_dir: str,
                             resume_from: Optional[str] = None,
                             folders: Iterable[str] = (),
                             templates=DEFAULT_TEMPLATES,
                             how: str = '--resume'
                             ) -> Tuple[Optional[str], List[str]]:
    """The checkpoint a resume starts from, and what to log about it.

    Args:
        work_dir: The run's work dir (``last_checkpoint`` is there).
        resume_from: An explicit checkpoint (``--resume PATH``), or None
            for auto-resume.
        folders: More folders that hold the run's checkpoints
            (CheckpointHook's ``out_dir``).
        templates: Checkpoint file names, ``{}`` for the number.
        how: How the user asks for a resume, for the messages.

    Returns:
        ``(path, notes)``: notes are ``(logging level, message)``; path None
        means there is no checkpoint at all (the run starts from the
        beginning, and a note says so).

    Raises:
        ResumeError: the given file does not load (the message names the
        newest older checkpoint that does), or auto-resume finds
        checkpoints and none of them loads.
    """
    folders = [work_dir] + [f for f in folders if f]
    if resume_from is not None and '://' in str(resume_from):
        return resume_from, []  # remote: mmengine's loader says what fails
    if resume_from is not None:
        return _check_given_checkpoint(
            osp.expanduser(str(resume_from)), folders, templates, how)
    return _newest_loading_checkpoint(work_dir, folders, templates, how)


def _check_given_checkpoint(resume_from: str, folders: List[str],
                            templates, how: str
                            ) -> Tuple[str, List[Tuple[int, str]]]:
    """``--resume PATH``: the path and a note when it loads; otherwise a
    :class:`ResumeError` that names the newest older checkpoint that
    loads (in ``folders`` or beside the file)."""
    ckpt, problem = read_checkpoint(resume_from)
    if problem is None:
        return resume_from, [
            (logging.INFO, f'mmstvit: resuming from {resume_from} '
             f'({_position(ckpt)})')]
    older = older_readable(
        resume_from, folders + [osp.dirname(resume_from)], templates)
    lines = [f'mmstvit: cannot resume from {resume_from}: {problem}.']
    if older:
        lines.append(f'The newest checkpoint that loads is {older[0]} '
                     f'({older[1]}): resume from it with {how} '
                     f'{older[0]}')
    else:
        lines.append('No other checkpoint of this run loads: train '
                     f'from the start (without {how}), or start from '
                     'weights you have with load_from.')
    raise ResumeError('\n'.join(lines))


def _newest_loading_checkpoint(work_dir: str, folders: List[str], templates,
                               how: str
                               ) -> Tuple[Optional[str], List[Tuple[int, str]]]:
    """Auto-resume: the file ``last_checkpoint`` names if it loads, else the
    newest checkpoint in ``folders`` that loads (a warning for each one
    skipped); ``(None, [warning])`` when there is none; a
    :class:`ResumeError` listing them when none of them loads."""
    named, why = read_last_checkpoint(work_dir)
    candidates = find_checkpoints(
        folders + ([osp.dirname(named)] if named else []), templates)
    if named:
        candidates = [named] + [c for c in candidates if not _same(c, named)]
    skipped = []
    for cand in candidates:
        ckpt, problem = read_checkpoint(cand)
        if problem is not None:
            skipped.append((cand, problem))
            continue
        if named and _same(cand, named):
            source = 'last_checkpoint names it'
        elif skipped:
            source = 'the newest checkpoint that loads'
        else:
            source = f'the newest checkpoint; {why}'
        notes = [(logging.WARNING,
                  f'mmstvit: not resuming from {path}: {reason}. '
                  'It is left in place.') for path, reason in skipped]
        notes.append((logging.INFO,
                      f'mmstvit: resuming from {cand} ({_position(ckpt)}'
                      f'; {source})'))
        return cand, notes
    if skipped:
        lines = [f'mmstvit: {how} found checkpoints of this run, and none '
                 'of them loads:']
        lines += [f'  {path}: {reason}' for path, reason in skipped]
        lines.append('Move them away (to train from the start) or resume '
                     f'from a checkpoint you have with {how} PATH.')
        raise ResumeError('\n'.join(lines))
    return None, [(logging.WARNING,
                   f'mmstvit: {how}: no checkpoint in {work_dir} '
                   f'({why or "and no checkpoint file"}): training starts '
                   'from the beginning')]


# ---------------------------------------------------------------------------
# does the checkpoint fit the config
# ---------------------------------------------------------------------------


def _summarise(keys, n=6):
    from mmstvit.weights import summarise_keys as summarise
    return summarise(keys, n)


def _strip_module(key: str) -> str:
    return re.sub(r'^module\.', '', key)


def _model_problems(saved: dict, model) -> List[str]:
    own = {_strip_module(k): v for k, v in model.state_dict().items()}
    theirs = {_strip_module(k): v for k, v in saved.items()}
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    shapes = [f'{k}: checkpoint {tuple(theirs[k].shape)}, model '
              f'{tuple(own[k].shape)}' for k in own
              if k in theirs and hasattr(theirs[k], 'shape')
              and tuple(theirs[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing or unexpected or shapes:
        problems.append('the model is another one: ' + '; '.join(
            p for p in (
                f'{len(missing)} of its tensors are not in the checkpoint '
                f'({_summarise(missing)})' if missing else '',
                f'{len(unexpected)} checkpoint tensors are not in the model '
                f'({_summarise(unexpected)})' if unexpected else '',
                f'{len(shapes)} tensors have other shapes ('
                f'{_summarise(shapes, 3)})' if shapes else '') if p))
    return problems


def _groups(sizes: List[int]) -> str:
    n = len(sizes)
    text = (f'{n} parameter group{"s" if n != 1 else ""} with {sum(sizes)} '
            'parameters')
    if 1 < n <= 4:
        text += f' ({"/".join(str(s) for s in sizes)})'
    return text


def _optimizer_problems(saved, optim_wrapper) -> List[str]:
    from mmengine.optim import OptimWrapperDict
    if saved is None or optim_wrapper is None or not hasattr(
            optim_wrapper, 'state_dict'):
        return []
    if isinstance(optim_wrapper, OptimWrapperDict):
        pairs = [(f' {name!r}', saved.get(name, None), w.optimizer)
                 for name, w in optim_wrapper.items()]
    else:
        pairs = [('', saved, getattr(optim_wrapper, 'optimizer', None))]
    problems = []
    for name, sd, optimizer in pairs:
        if optimizer is None:
            continue
        if not isinstance(sd, dict) or 'param_groups' not in sd:
            problems.append(f'the optimizer{name} is not in the checkpoint')
            continue
        theirs = [len(g['params']) for g in sd['param_groups']]
        ours = [len(g['params']) for g in optimizer.param_groups]
        if theirs != ours:
            problems.append(
                f'the optimizer{name} differs: the checkpoint holds '
                f'{_groups(theirs)}, this config builds {_groups(ours)} '
                '(parameters frozen or unfrozen, or other paramwise '
                'settings, since the checkpoint was saved)')
    return problems


def config_changes(saved_text: str, current_text: str,
                   limit: int = 12) -> List[str]:
    """The lines of the config that differ between the checkpoint's run and
    this one (a text diff: the saved config is never executed), without
    the keys a resume sets itself."""
    diff = difflib.unified_diff(
        saved_text.splitlines(), current_text.splitlines(), n=0,
        lineterm='')
    lines = [
        ln for ln in diff
        if ln[:1] in '+-' and not ln.startswith(('+++', '---')) and
        not re.match(r'^[+-]\s*(' + '|'.join(_RUN_KEYS) + r')\s*=',
                     ln)
    ]
    if len(lines) > limit:
        lines = lines[:limit] + [f'... ({len(lines) - limit} more lines)']
    return lines


def fit_problems(checkpoint: dict, model, optim_wrapper) -> List[str]:
    """What keeps ``checkpoint`` from continuing with this ``model`` and
    ``optim_wrapper`` (empty when it fits)."""
    problems = _model_problems(checkpoint.get('state_dict', {}), model)
    problems += _optimizer_problems(
        checkpoint.get('optimizer', None), optim_wrapper)
    return problems


def misfit_message(path: str, problems: List[str], saved_cfg: Optional[str],
                   current_cfg: Optional[str]) -> str:
    lines = [f'mmstvit: cannot resume from {path}: it does not fit this '
             'config.']
    lines += [f'  - {p}' for p in problems]
    if saved_cfg and current_cfg:
        changes = config_changes(saved_cfg, current_cfg)
        if changes:
            lines.append('  The config lines that changed since that run '
                         'saved it:')
            lines += [f'    {ln}' for ln in changes]
    lines.append(
        '  A resume continues the same run with the same config. To go on '
        'from these weights with the changed config, start a new run that '
        f'loads them: load_from={path} without --resume (weights only: the '
        'optimizer, the schedule and the iteration count start afresh), '
        f'e.g. --cfg-options load_from={path}')
    return '\n'.join(lines)
