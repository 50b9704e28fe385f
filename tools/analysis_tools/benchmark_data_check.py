# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Time and peak memory of the COCO pre-flight check beside pycocotools;
files per second of the image check.

    python tools/analysis_tools/benchmark_data_check.py [--images 59000]
        [--annotations 430000] [--points 11] [--out FILE.json | --ann FILE]
        [--repeats 1] [--keep]
    python tools/analysis_tools/benchmark_data_check.py --image-files 3000
        [--image-dir DIR] [--full-files 300]

``--image-files N`` writes N COCO-sized JPEGs (640x480, quality 90; 1% of
them truncated) and times :func:`mmstvit.data.image_files.check_images`
in its fast mode over all of them and in its full mode (decoding) over
``--full-files`` of them; files/s are per CPU second of this process and
per wall-clock second, with the files in the page cache (just written), so
they measure the check, not the disk. ``--image-dir DIR`` times an existing
folder (e.g. COCO's train2017) instead.

tools/train.py and tools/test.py check a config's COCO annotation files
(:func:`mmstvit.data.checks.check_coco_annotation`) before they build
the Runner, which then loads the same files with pycocotools. This script
writes a COCO-shaped instances file (by default about half of train2017:
59k images, 430k annotations, mostly polygons of ``--points`` points on
average and 1% crowd RLEs, about 145 MB) and measures, each in a fresh child
process that has imported both pycocotools and mmstvit (so both start from
the same resident memory):

* ``pycocotools COCO(path)``: the toolbox's own load (json + index);
* ``mmstvit check_coco_annotation(path)``: the pre-flight check, including
  the release of everything it parsed.

Time is wall-clock seconds of the call; peak is the child's peak resident
memory (VmHWM, restarted just before the call) in MiB, and "added" is that
peak above the resident memory just before the call. ``--ann`` measures an
existing file (e.g. the real instances_train2017.json) instead.
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

METHODS = ('pycocotools', 'mmstvit')
LABELS = {
    'pycocotools': 'pycocotools COCO(path)',
    'mmstvit': 'mmstvit check_coco_annotation(path)',
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Time and peak memory of the COCO annotation pre-flight '
        'check beside pycocotools.COCO')
    parser.add_argument('--images', type=int, default=59_000,
                        help='images in the generated file (default 59000)')
    parser.add_argument('--annotations', type=int, default=430_000,
                        help='annotations in the generated file '
                        '(default 430000)')
    parser.add_argument('--points', type=int, default=11,
                        help='mean points per polygon (default 11)')
    parser.add_argument('--crowd', type=float, default=0.01,
                        help='fraction of crowd (RLE) annotations')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='write the generated file here and '
                        'keep it (default: a temporary folder, removed)')
    parser.add_argument('--ann', help='measure this existing annotation '
                        'file instead of generating one')
    parser.add_argument('--repeats', type=int, default=1,
                        help='child processes per method (the table shows '
                        'the fastest time and the largest peak)')
    parser.add_argument('--image-files', type=int, default=0,
                        help='time the image check on this many generated '
                        'JPEGs instead (e.g. 3000)')
    parser.add_argument('--image-dir', help='time the image check on the '
                        'images of this folder instead')
    parser.add_argument('--full-files', type=int, default=300,
                        help='files for the full (decoding) mode')
    parser.add_argument('--child', choices=METHODS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# a COCO-shaped file
# ---------------------------------------------------------------------------

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (
    12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _progress(msg):
    print(msg, file=sys.stderr, flush=True)


def _images(rng, num_images):
    """Image ids, sizes and the JSON of the image records."""
    img_ids = rng.choice(600_000, size=num_images, replace=False) + 1
    sizes = rng.choice([(480, 640), (640, 480), (427, 640), (640, 427),
                        (375, 500), (500, 375)], size=num_images)
    parts = []
    for k, (img_id, (h, w)) in enumerate(zip(img_ids, sizes)):
        name = f'{img_id:012d}.jpg'
        parts.append(
            f'{{"license":1,"file_name":"{name}","coco_url":'
            f'"http://images.cocodataset.org/train2017/{name}",'
            f'"height":{h},"width":{w},"date_captured":'
            f'"2013-11-{k % 28 + 1:02d} 1{k % 10}:2{k % 10}:3{k % 10}",'
            f'"flickr_url":"http://farm{k % 9 + 1}.staticflickr.com/'
            f'{k % 9000 + 1000}/{img_id}0{k}_{k % 997:x}b2e9f_z.jpg",'
            f'"id":{img_id}}}')
    return img_ids, sizes, ','.join(parts)


def _annotation(rng, h, w, crowd, mean_points):
    """The bbox, segmentation and area of one annotation, as JSON."""
    bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    box = f'[{x0:.2f},{y0:.2f},{bw:.2f},{bh:.2f}]'
    if crowd:
        counts = rng.integers(1, 400, size=rng.integers(50, 400))
        seg = ('{"counts":[' + ','.join(map(str, counts)) +
               f'],"size":[{h},{w}]}}')
    else:
        polys = []
        for _ in range(1 + (rng.random() < 0.15) + (rng.random() < 0.05)):
            m = max(3, int(rng.poisson(mean_points)))
            xy = rng.uniform(0, 1, size=(m, 2)) * (bw, bh) + (x0, y0)
            polys.append('[' + ','.join(
                f'{v:.2f}' for v in xy.ravel().tolist()) + ']')
        seg = '[' + ','.join(polys) + ']'
    return box, seg, f'{bw * bh * 0.6:.2f}'


def _annotations(f, rng, img_ids, sizes, num_annotations, crowd,
                 mean_points):
    """Writes the annotation records in chunks, with progress."""
    t0 = time.perf_counter()
    chunk, written, next_report = 20_000, 0, 0.25
    while written < num_annotations:
        n = min(chunk, num_annotations - written)
        which = rng.integers(0, len(img_ids), size=n)
        cats = rng.choice(COCO_CATEGORY_IDS, size=n)
        is_crowd = rng.random(n) < crowd
        parts = []
        for j in range(n):
            box, seg, area = _annotation(rng, *sizes[which[j]], is_crowd[j],
                                         mean_points)
            parts.append(
                f'{{"segmentation":{seg},"area":{area},'
                f'"iscrowd":{int(is_crowd[j])},"image_id":'
                f'{img_ids[which[j]]},"bbox":{box},"category_id":'
                f'{cats[j]},"id":{written + j + 1}}}')
        if written:
            f.write(',')
        f.write(','.join(parts))
        written += n
        if written >= next_report * num_annotations or \
                written == num_annotations:
            _progress(f'  ... {written:,} of {num_annotations:,} '
                      f'annotations written '
                      f'({time.perf_counter() - t0:.0f} s)')
            next_report += 0.25


def write_coco(path, num_images, num_annotations, mean_points=11,
               crowd=0.01, seed=0):
    """Writes a COCO instances file shaped like train2017's: its key order
    (info, licenses, images, annotations, categories), image records with
    urls and dates, annotations with 2-decimal polygons (one to three per
    object, ``mean_points`` points on average), ``crowd`` of them with an
    uncompressed RLE, and the 80 categories with their sparse ids."""
    import numpy as np
    rng = np.random.default_rng(seed)
    with open(path, 'w') as f:
        f.write('{"info":{"description":"mmstvit benchmark, COCO-shaped",'
                '"version":"1.0","year":2017},"licenses":[{"url":"http://'
                'creativecommons.org/licenses/by-nc-sa/2.0/","id":1,"name":'
                '"Attribution-NonCommercial-ShareAlike License"}],"images":[')
        img_ids, sizes, images = _images(rng, num_images)
        f.write(images)
        del images
        f.write('],"annotations":[')
        _annotations(f, rng, img_ids, sizes, num_annotations, crowd,
                     mean_points)
        f.write('],"categories":[' + ','.join(
            f'{{"supercategory":"thing","id":{c},"name":"class_{c}"}}'
            for c in COCO_CATEGORY_IDS) + ']}')
    return os.path.getsize(path)


# ---------------------------------------------------------------------------
# one measurement per child process
# ---------------------------------------------------------------------------


def child(method, path):
    """Runs one method on ``path`` and prints its numbers as JSON."""
    import resource

    from pycocotools.coco import COCO

    from mmstvit.analysis.memory import peak_rss_kib, reset_peak_rss, rss_kib
    from mmstvit.data.checks import check_coco_annotation

    def run():
        if method == 'pycocotools':
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(path)
            return dict(images=len(coco.imgs), annotations=len(coco.anns))
        info = check_coco_annotation(path)
        return dict(images=info['num_images'],
                    annotations=info['num_annotations'])

    before = rss_kib()
    try:
        reset_peak_rss()  # VmHWM restarts from the current RSS (Linux)
        restarted = True
    except OSError:
        restarted = False
    t0 = time.perf_counter()
    counts = run()
    seconds = time.perf_counter() - t0
    peak = peak_rss_kib() if restarted else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(seconds=seconds, before_kib=before, peak_kib=peak,
                          **counts)))


def _summary(runs):
    """The fastest time, the largest peak and the largest growth (MiB)."""
    return dict(
        seconds=min(r['seconds'] for r in runs),
        peak=max(r['peak_kib'] for r in runs) / 1024,
        added=max(r['peak_kib'] - r['before_kib'] for r in runs) / 1024)


def measure(method, path):
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--child', method,
         '--ann', path],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'benchmark_data_check: the {method} child failed '
                         f'(exit code {proc.returncode}):\n'
                         f'{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# the image check
# ---------------------------------------------------------------------------


def write_jpegs(folder, n, seed=0):
    """``n`` 640x480 JPEGs (16 distinct smooth pictures with noise, quality
    90: about COCO's file size), every 100th truncated to two thirds.
    Returns the truncated files."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    encoded = []
    for k in range(16):
        base = (np.sin(xx / (20 + 5 * k)) + np.cos(yy / (15 + 3 * k))) * 60
        img = base[..., None] + rng.normal(128, 20, (480, 640, 3))
        buf = io.BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
            buf, 'JPEG', quality=90)
        encoded.append(buf.getvalue())
    bad = []
    for i in range(n):
        data = encoded[i % 16]
        path = os.path.join(folder, f'{i:012d}.jpg')
        if i % 100 == 99:
            data = data[:len(data) * 2 // 3]
            bad.append(path)
        with open(path, 'wb') as f:
            f.write(data)
    return bad


def _time_check(paths, mode):
    from mmstvit.data.image_files import find_unreadable_images
    cpu, wall = time.process_time(), time.perf_counter()
    count, bad = find_unreadable_images(paths, mode)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f'{mode:>5} mode: {count:,} files in {wall:.2f} s wall, '
          f'{cpu:.2f} CPU s: {count / max(cpu, 1e-9):,.0f} files per CPU '
          f'second, {count / max(wall, 1e-9):,.0f} per second; '
          f'{len(bad)} unreadable')
    return {p for p, _ in bad}


def image_check_benchmark(args):
    from mmstvit.data.image_files import image_files
    with tempfile.TemporaryDirectory() as tmp:
        folder, truncated = args.image_dir, None
        if folder is None:
            folder = tmp
            _progress(f'writing {args.image_files:,} JPEGs to {tmp} ...')
            truncated = set(write_jpegs(tmp, args.image_files, args.seed))
        paths = list(image_files(folder))
        mib = sum(os.path.getsize(p) for p in paths) / 2**20
        print(f'{len(paths):,} images, {mib:.0f} MiB in {folder}; python '
              f'{sys.version.split()[0]}, {os.cpu_count()} CPUs')
        found = _time_check(paths, 'fast')
        _time_check(paths[:args.full_files], 'full')
    if truncated is not None and found != truncated:
        raise SystemExit(f'benchmark_data_check: the fast check found '
                         f'{len(found)} files, {len(truncated)} were cut')


def main(argv=None):
    args = parse_args(argv)
    if args.image_files or args.image_dir:
        return image_check_benchmark(args)
    if args.child:
        child(args.child, args.ann)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.ann
        if path is None:
            path = args.out or os.path.join(tmp, 'instances_bench.json')
            _progress(f'writing {args.images:,} images and '
                      f'{args.annotations:,} annotations to {path} ...')
            t0 = time.perf_counter()
            size = write_coco(path, args.images, args.annotations,
                              args.points, args.crowd, args.seed)
            _progress(f'  {size / 2**20:.1f} MiB in '
                      f'{time.perf_counter() - t0:.0f} s')
        size = os.path.getsize(path)
        results = {}
        for method in METHODS:
            runs = []
            for r in range(args.repeats):
                _progress(f'measuring {LABELS[method]} '
                          f'(child process {r + 1} of {args.repeats}) ...')
                runs.append(measure(method, path))
                _progress(f'  {runs[-1]["seconds"]:.2f} s, peak '
                          f'{runs[-1]["peak_kib"] / 1024:.0f} MiB')
            results[method] = runs
    print(f'\n{os.path.basename(path)}: {size / 2**20:.1f} MiB, '
          f'{results["pycocotools"][0]["images"]:,} images, '
          f'{results["pycocotools"][0]["annotations"]:,} annotations; '
          f'python {sys.version.split()[0]}, {os.cpu_count()} CPUs')
    summary = {m: _summary(runs) for m, runs in results.items()}
    header = (f'{"method":<38}{"time (s)":>10}{"peak (MiB)":>12}'
              f'{"added (MiB)":>13}')
    print(header)
    print('-' * len(header))
    for method, row in summary.items():
        print(f'{LABELS[method]:<38}{row["seconds"]:>10.2f}'
              f'{row["peak"]:>12.0f}{row["added"]:>13.0f}')
    ref, ours = summary['pycocotools'], summary['mmstvit']
    print(f'mmstvit / pycocotools: '
          f'{ours["seconds"] / max(ref["seconds"], 1e-9):.2f}x the time, '
          f'{ours["added"] / max(ref["added"], 1e-9):.2f}x the added memory '
          f'({ours["peak"] / ref["peak"]:.2f}x the peak)')
    ref, ours = results['pycocotools'], results['mmstvit']
    if ours[0]['annotations'] != ref[0]['annotations'] or \
            ours[0]['images'] != ref[0]['images']:
        raise SystemExit('benchmark_data_check: the two methods counted '
                         'different images or annotations')


if __name__ == '__main__':
    main()
