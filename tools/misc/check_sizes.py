# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Lists the functions over 60 lines and the files over 500 lines.

    python tools/misc/check_sizes.py [PATH ...] [--max-function 60]
        [--max-file 500]

PATHs are Python files or folders (default: ``mmstvit/`` and ``tools/`` of
this checkout). A function's size is its lines from ``def`` to its last
line (docstring and nested functions included, decorators not); a file's
size is its number of lines. Every function and method is measured,
nested ones too. The exit code is 1 when something is over a limit, 0
otherwise; a file that does not parse is an error (exit 2).
"""
import argparse
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DEFAULT_PATHS = ('mmstvit', 'tools')


def python_files(paths):
    """The ``.py`` files of ``paths`` (files or folders), sorted."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
            continue
        if not os.path.isdir(path):
            raise FileNotFoundError(f'check_sizes: {path} does not exist')
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith('.')
                             and d != '__pycache__')
            found += [os.path.join(folder, f) for f in files
                      if f.endswith('.py')]
    return sorted(found)


def long_functions(source, limit):
    """``(line, qualified name, lines)`` of every function of ``source``
    (a module's text) longer than ``limit`` lines."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                  ast.ClassDef)):
                name = f'{prefix}{child.name}.'
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = child.end_lineno - child.lineno + 1
                if size > limit:
                    out.append((child.lineno, name[:-1], size))
            visit(child, name)

    visit(ast.parse(source), '')
    return sorted(out)


def check(paths, max_function=60, max_file=500):
    """The problems of ``paths`` as lines ``path:line: what``, longest
    first within each kind (files, then functions)."""
    files, functions = [], []
    for path in python_files(paths):
        with open(path, encoding='utf-8') as f:
            source = f.read()
        lines = len(source.splitlines())
        if lines > max_file:
            files.append((lines, f'{path}: {lines} lines '
                          f'(limit {max_file})'))
        for line, name, size in long_functions(source, max_function):
            functions.append((size, f'{path}:{line}: {name} is {size} lines '
                              f'(limit {max_function})'))
    return [text for _, text in sorted(files, reverse=True)] + [
        text for _, text in sorted(functions, reverse=True)]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='functions and files over the size limits')
    parser.add_argument('paths', nargs='*', help='files or folders (default: '
                        'mmstvit/ and tools/ of this checkout)')
    parser.add_argument('--max-function', type=int, default=60)
    parser.add_argument('--max-file', type=int, default=500)
    args = parser.parse_args(argv)
    paths = args.paths or [os.path.relpath(os.path.join(ROOT, p))
                           for p in DEFAULT_PATHS]
    try:
        problems = check(paths, args.max_function, args.max_file)
    except (OSError, SyntaxError) as e:
        print(f'check_sizes: {e}', file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    print(f'check_sizes: {len(problems)} over the limits (functions '
          f'{args.max_function} lines, files {args.max_file})'
          if problems else 'check_sizes: all functions and files within '
          f'the limits ({args.max_function} / {args.max_file} lines)')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
