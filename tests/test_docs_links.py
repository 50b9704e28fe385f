# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Every relative link of README.md and docs/*.md resolves: the file or
folder it names exists in the checkout, and its ``#anchor`` names a heading
of the target page as GitHub slugs headings.

The Markdown is parsed by markdown-it-py (CommonMark with GitHub's tables),
so links in code blocks and inline code are not links, and reference-style
links count as the links they render to.
"""
import glob
import os.path as osp
import re
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

from helpers import REPO

#: attributes of raw HTML (``<img src=...>``, ``<a href=...>``) that are links
HTML_LINK = re.compile(r'''\b(?:href|src)\s*=\s*["']([^"']+)["']''')


def github_slug(text: str) -> str:
    """GitHub's anchor for a heading whose rendered text is ``text``: lower
    case, every character but letters, digits, ``_``, ``-`` and spaces
    dropped, each space a ``-`` (``"Interrupted runs: --resume"`` ->
    ``interrupted-runs---resume``)."""
    return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


def parse(path: str):
    """The anchors of a Markdown file (GitHub's: a repeated slug gets
    ``-1``, ``-2``, ...) and its links as ``(line, target)`` pairs."""
    with open(path, encoding='utf-8') as f:
        tokens = MarkdownIt('commonmark').enable('table').parse(f.read())
    anchors, links, seen = set(), [], {}
    for i, tok in enumerate(tokens):
        line = tok.map[0] + 1 if tok.map else 0
        if tok.type == 'heading_open':
            text = ''.join(c.content for c in tokens[i + 1].children
                           if c.type in ('text', 'code_inline'))
            slug = github_slug(text)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f'{slug}-{n}')
        if tok.type in ('html_block', 'html_inline'):
            links += [(line, href) for href in HTML_LINK.findall(tok.content)]
        for child in tok.children or ():
            if child.type in ('softbreak', 'hardbreak'):
                line += 1  # the line of the link itself, not of its paragraph
            elif child.type == 'link_open':
                links.append((line, child.attrs['href']))
            elif child.type == 'image':
                links.append((line, child.attrs['src']))
            elif child.type == 'html_inline':
                links += [(line, href) for href in HTML_LINK.findall(child.content)]
    return anchors, links


def broken_links(paths, root: str):
    """``'FILE:LINE: TARGET (why)'`` for each relative link of ``paths``
    that does not resolve inside ``root``; links with a scheme (``https:``,
    ``mailto:``) are not checked."""
    problems, pages = [], {}
    for path in paths:
        rel = osp.relpath(path, root)
        for line, href in parse(path)[1]:
            url = urlsplit(href)
            if url.scheme or url.netloc:
                continue
            target = (osp.normpath(osp.join(osp.dirname(path), unquote(url.path)))
                      if url.path else path)
            where = f'{rel}:{line}: {href}'
            if not osp.realpath(target).startswith(osp.realpath(root) + osp.sep):
                problems.append(f'{where} (outside the repository)')
            elif not osp.exists(target):
                problems.append(f'{where} (no such file: {osp.relpath(target, root)})')
            elif url.fragment and target.endswith('.md'):
                if target not in pages:
                    pages[target] = parse(target)[0]
                if unquote(url.fragment) not in pages[target]:
                    problems.append(f'{where} (no heading #{url.fragment} in '
                                    f'{osp.relpath(target, root)})')
    return problems


def test_readme_and_docs_links_resolve():
    pages = [osp.join(REPO, 'README.md')] + sorted(
        glob.glob(osp.join(REPO, 'docs', '**', '*.md'), recursive=True))
    assert len(pages) >= 8, pages  # the README and the docs pages are all there
    problems = broken_links(pages, REPO)
    assert not problems, 'broken links:\n' + '\n'.join(problems)


@pytest.mark.parametrize('heading,slug', [
    ('Interrupted runs: `--resume` continues bit for bit',
     'interrupted-runs---resume-continues-bit-for-bit'),
    ('As a package: `pip install .` or a wheel', 'as-a-package-pip-install--or-a-wheel'),
    ("The paper's ablation study (`configs/ablations/`, `mmstvit::ablations/` by scope)",
     'the-papers-ablation-study-configsablations-mmstvitablations-by-scope'),
    ('Params and FLOPs (whole models, paper protocol)',
     'params-and-flops-whole-models-paper-protocol'),
    ('snake_case stays', 'snake_case-stays'),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_broken_links_are_reported(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'img.png').write_bytes(b'')
    (tmp_path / 'docs' / 'page.md').write_text(
        '# Page\n\n## A `code` heading: here\n\n## Twice\n\n## Twice\n')
    readme = tmp_path / 'README.md'
    readme.write_text(
        '# Top\n\n'
        '[ok](docs/page.md) [ok](docs/page.md#a-code-heading-here) [ok](#top)\n'
        '[ok](docs/page.md#twice-1) [ok](docs/) ![ok](img.png) [web](https://x.org/y.md)\n\n'
        '[gone](docs/missing.md)\n\n'
        '[bad anchor](docs/page.md#no-such-heading)\n\n'
        '[twice-2](docs/page.md#twice-2) [local](#nowhere)\n\n'
        '![picture](images/none.png) <img src="images/html.png">\n\n'
        '[ref link][r]\n\n[r]: ../elsewhere.md\n\n'
        '```\n[in a code block](not/checked.md)\n```\n'
        '`[inline code](not/checked.md)`\n')
    problems = broken_links([str(readme), str(tmp_path / 'docs' / 'page.md')],
                            str(tmp_path))
    assert problems == [
        'README.md:6: docs/missing.md (no such file: docs/missing.md)',
        'README.md:8: docs/page.md#no-such-heading (no heading #no-such-heading in '
        'docs/page.md)',
        'README.md:10: docs/page.md#twice-2 (no heading #twice-2 in docs/page.md)',
        'README.md:10: #nowhere (no heading #nowhere in README.md)',
        'README.md:12: images/none.png (no such file: images/none.png)',
        'README.md:12: images/html.png (no such file: images/html.png)',
        'README.md:14: ../elsewhere.md (outside the repository)',
    ]


def test_readme_is_a_front_page():
    """At most 250 lines (the rest is in docs/), with the two commands of
    the Makefile that CI and a newcomer run first."""
    with open(osp.join(REPO, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 250
    with open(osp.join(REPO, 'Makefile'), encoding='utf-8') as f:
        targets = re.findall(r'^([\w-]+):', f.read(), flags=re.M)
    code = ''.join(t.content for t in MarkdownIt('commonmark').parse(readme)
                   if t.type == 'fence')
    for command in ('demo', 'test'):
        assert command in targets
        assert re.search(rf'^make {command}\b', code, flags=re.M), command
