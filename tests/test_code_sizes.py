# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""tools/misc/check_sizes.py: no function over 60 lines and no file over 500
in mmstvit/ and tools/. The checker is tested on synthetic files first (it
finds what is over and only that), then run over the tree."""
import subprocess
import sys

from helpers import REPO

CHECKER = 'tools/misc/check_sizes.py'


def _check(*args):
    return subprocess.run([sys.executable, CHECKER, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _function(name, lines, indent=''):
    """A function of exactly ``lines`` lines (``def`` to its last line)."""
    body = [f'{indent}    x = {i}' for i in range(lines - 2)]
    return [f'{indent}def {name}():', *body, f'{indent}    return x']


def test_checker_finds_long_functions_and_files(tmp_path):
    code = (_function('fits', 60) + _function('too_long', 61) +
            ['class Model:'] + _function('method', 62, '    ') +
            _function('outer', 20) + _function('inner', 61, '    '))
    (tmp_path / 'module.py').write_text('\n'.join(code) + '\n')
    (tmp_path / 'pkg').mkdir()
    (tmp_path / 'pkg' / 'big.py').write_text('x = 1\n' * 501)
    (tmp_path / 'pkg' / 'full.py').write_text('x = 1\n' * 500)
    (tmp_path / 'notes.txt').write_text('not python\n' * 600)
    out = _check(str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    module = tmp_path / 'module.py'
    assert lines[:-1] == [
        f'{tmp_path / "pkg" / "big.py"}: 501 lines (limit 500)',
        # longest first; 'outer' holds 'inner', so both are over
        f'{module}:185: outer is 81 lines (limit 60)',
        f'{module}:123: Model.method is 62 lines (limit 60)',
        f'{module}:61: too_long is 61 lines (limit 60)',
        f'{module}:205: outer.inner is 61 lines (limit 60)',
    ], out.stdout
    assert lines[-1].startswith('check_sizes: 5 over the limits')
    # the limits are options
    assert _check('--max-function', '100', '--max-file', '600',
                  str(tmp_path)).returncode == 0


def test_checker_refuses_a_missing_path(tmp_path):
    out = _check(str(tmp_path / 'nope'))
    assert out.returncode == 2 and 'does not exist' in out.stderr


def test_tree_within_limits():
    """Every function of mmstvit/ and tools/ within 60 lines, every file
    within 500 (the checker's defaults): the output names what is over."""
    out = _check()
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip() == ('check_sizes: all functions and files '
                                  'within the limits (60 / 500 lines)')
