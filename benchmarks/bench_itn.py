"""PT-BR ITN: the built-in parser vs NeMo's Portuguese grammars on the labelled set.

    .venv/bin/python benchmarks/bench_itn.py                      # held-out part, all backends
    .venv/bin/python benchmarks/bench_itn.py --split tune --errors  # tune part, with every miss

Set: `benchmarks/itn/ptbr_itn.tsv` (convention in docs/itn.md). Backends:
- `builtin`: `asr_mesh.services.merge.itn` (the merge service's default);
- `nemo`: `benchmarks/itn_nemo.py` (NeMo + alignment to the words + Brazilian-style rewrite,
  fitted on the tune part): NeMo as the merge service would have to run it to keep timings;
- `combined`: the built-in parser, plus NeMo's rewrites where it wrote nothing;
- `builtin@REV`: the built-in parser as it was at git revision REV (e.g. before the tune fixes);
- `nemo-raw`: NeMo's own string output, no style and no word alignment (the library by itself).
Each sentence goes through the backend as one segment's words (`normalize_text`), exactly as
the merge service applies it. Scores: sentence exact match (Wilson 95% interval) and token error
rate (word edit distance / reference words, sentence-bootstrap 95% interval), overall and per
category. Writes `build/bench-itn/results_SPLIT.json` and a PNG (`--png`).
NeMo needs the `itn-bench` extra (pynini, nemo-text-processing); `--backends builtin` runs without.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr_mesh.services.merge import itn  # noqa: E402

SET = ROOT / "benchmarks" / "itn" / "ptbr_itn.tsv"


def load_set(path: Path, split: str) -> list[dict]:
    rows = []
    lines = [
        ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")
    ]
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        if split in ("all", row["split"]):
            rows.append(row)
    return rows


def edits(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def bootstrap_ter(
    errs: list[int], refs: list[int], runs: int = 2000, seed: int = 0
) -> tuple[float, float]:
    rng = random.Random(seed)
    n, stats = len(errs), []
    for _ in range(runs):
        idx = [rng.randrange(n) for _ in range(n)]
        stats.append(sum(errs[i] for i in idx) / max(1, sum(refs[i] for i in idx)))
    stats.sort()
    return stats[int(0.025 * runs)], stats[int(0.975 * runs) - 1]


def backends(names: list[str], cache_dir: str) -> dict:
    out = {}
    for name in names:
        if name == "builtin":
            out[name] = lambda text: itn.normalize_text(text)
        elif name == "nemo":
            from benchmarks import itn_nemo

            rw = itn_nemo.make_rewriter(cache_dir)
            out[name] = lambda text, rw=rw: itn.normalize_text(text, rw)
        elif name == "combined":
            from benchmarks import itn_nemo

            rw = itn_nemo.make_combined_rewriter(cache_dir)
            out[name] = lambda text, rw=rw: itn.normalize_text(text, rw)
        elif name == "nemo-raw":
            from benchmarks import itn_nemo

            out[name] = lambda text: itn_nemo.raw(text, cache_dir)
        elif name.startswith("builtin@"):  # the built-in parser as it was at a git revision
            out[name] = _builtin_at(name.split("@", 1)[1]).normalize_text
        else:
            raise SystemExit(
                f"unknown backend {name!r} (builtin, builtin@REV, nemo, combined, nemo-raw)"
            )
    return out


def paired_diff(ok: list[bool], base: list[bool], runs: int = 2000, seed: int = 0):
    """Exact-match rate of `ok` minus `base` over the same sentences, with a bootstrap 95% CI."""
    rng = random.Random(seed)
    n = len(ok)
    d = [int(a) - int(b) for a, b in zip(ok, base)]
    stats = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(runs))
    return sum(d) / n, stats[int(0.025 * runs)], stats[int(0.975 * runs) - 1]


def _builtin_at(rev: str):
    """asr_mesh/services/merge/itn.py at git revision `rev`, imported under its own module name."""
    import importlib.util
    import subprocess

    for package in ("asr_mesh/services", "services"):  # "services": before the rename
        shown = subprocess.run(
            ["git", "show", f"{rev}:{package}/merge/itn.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if shown.returncode == 0:
            break
    shown.check_returncode()
    # A revision from before the rename imports the package by its old name: the same modules.
    source = shown.stdout.replace(f"from {package}.common.", "from asr_mesh.services.common.")
    path = ROOT / "build" / "bench-itn" / f"itn_{rev.replace('/', '_')}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    name = f"_itn_at_{abs(hash(rev))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def score(rows: list[dict], outputs: list[str]) -> dict:
    ok = [o == r["written"] for o, r in zip(outputs, rows)]
    errs = [edits(r["written"].split(), o.split()) for o, r in zip(outputs, rows)]
    refs = [max(1, len(r["written"].split())) for r in rows]
    k, n = sum(ok), len(rows)
    lo, hi = wilson(k, n)
    tlo, thi = bootstrap_ter(errs, refs) if n else (math.nan, math.nan)
    return {
        "n": n,
        "exact": k / n if n else math.nan,
        "exact_ci": [lo, hi],
        "ter": sum(errs) / max(1, sum(refs)),
        "ter_ci": [tlo, thi],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="heldout", choices=["tune", "heldout", "all"])
    ap.add_argument("--backends", default="builtin,nemo,combined,nemo-raw")
    ap.add_argument("--set", type=Path, default=SET)
    ap.add_argument(
        "--cache-dir",
        default=str(ROOT / "build" / "itn-nemo"),
        help="where NeMo's compiled grammar (FAR) is cached",
    )
    ap.add_argument(
        "--errors", action="store_true", help="print every sentence a backend gets wrong"
    )
    ap.add_argument(
        "--unlabelled-diff",
        action="store_true",
        help="instead: run the first two backends on the 250 unlabelled sentences of "
        "benchmarks/sentences_validate.py and print where they differ",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench-itn")
    ap.add_argument("--png", type=Path, default=None, help="figure (default OUT/itn_SPLIT.png)")
    args = ap.parse_args(argv)

    if args.unlabelled_diff:
        return unlabelled_diff(
            [n.strip() for n in args.backends.split(",") if n.strip()][:2], args.cache_dir
        )
    rows = load_set(args.set, args.split)
    if not rows:
        raise SystemExit(f"no rows for split {args.split!r} in {args.set}")
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    t0 = time.perf_counter()
    fns = backends(names, args.cache_dir)
    print(
        f"{len(rows)} sentences ({args.split}); backends loaded in {time.perf_counter() - t0:.1f} s"
    )

    cats = sorted({r["category"] for r in rows})
    results: dict = {"split": args.split, "n": len(rows), "backends": {}}
    outputs_of: dict[str, list[str]] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        outputs = outputs_of[name] = [fn(r["spoken"]) for r in rows]
        per_s = (time.perf_counter() - t0) / len(rows)
        entry = {"all": score(rows, outputs), "ms_per_sentence": 1000 * per_s, "categories": {}}
        for cat in cats:
            sel = [i for i, r in enumerate(rows) if r["category"] == cat]
            entry["categories"][cat] = score([rows[i] for i in sel], [outputs[i] for i in sel])
        entry["misses"] = [
            {"category": r["category"], "spoken": r["spoken"], "expected": r["written"], "got": o}
            for r, o in zip(rows, outputs)
            if o != r["written"]
        ]
        results["backends"][name] = entry

    print(
        f"\nOverall ({args.split}, n={len(rows)}): exact match with Wilson 95% CI; token error rate "
        "with bootstrap 95% CI"
    )
    print(f"{'backend':16} {'exact':>7} {'95% CI':>15} {'TER':>7} {'95% CI':>15} {'ms/sent':>8}")
    for name, e in results["backends"].items():
        a = e["all"]
        print(
            f"{name:16} {a['exact']:7.1%} {a['exact_ci'][0]:7.1%}–{a['exact_ci'][1]:6.1%} "
            f"{a['ter']:7.1%} {a['ter_ci'][0]:7.1%}–{a['ter_ci'][1]:6.1%} {e['ms_per_sentence']:8.2f}"
        )
    base = names[0]
    base_ok = [o == r["written"] for o, r in zip(outputs_of[base], rows)]
    print(f"\nPaired difference in exact match vs {base} (sentence bootstrap 95% CI):")
    for name in names[1:]:
        ok = [o == r["written"] for o, r in zip(outputs_of[name], rows)]
        diff, lo, hi = paired_diff(ok, base_ok)
        results["backends"][name]["exact_minus_" + base] = [diff, lo, hi]
        print(f"  {name:16} {diff:+7.1%}  [{lo:+.1%}, {hi:+.1%}]")
    print("\nPer category: exact match (n) and token error rate")
    print(f"{'category':10} {'n':>3} " + " ".join(f"{n + ' exact':>16} {'TER':>6}" for n in names))
    for cat in cats:
        cells = []
        for name in names:
            c = results["backends"][name]["categories"][cat]
            cells.append(f"{c['exact']:16.0%} {c['ter']:6.0%}")
        n = results["backends"][names[0]]["categories"][cat]["n"]
        print(f"{cat:10} {n:3d} " + " ".join(cells))
    if args.errors:
        for name in names:
            print(f"\nMisses of {name}:")
            for m in results["backends"][name]["misses"]:
                print(
                    f"  [{m['category']}] {m['spoken']!r}\n      expected {m['expected']!r}\n      got      {m['got']!r}"
                )

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{args.split}.json").write_text(
        json.dumps(results, ensure_ascii=False, indent=1)
    )
    png = args.png or args.out / f"itn_{args.split}.png"
    plot(results, cats, names, png)
    print(f"\nwrote {args.out / f'results_{args.split}.json'} and {png}")
    return 0


def unlabelled_diff(names: list[str], cache_dir: str) -> int:
    """Two backends on natural sentences nobody labelled for ITN: a look at what changes."""
    from benchmarks.sentences_validate import DOMAINS

    texts = [t for group in DOMAINS.values() for t in group]
    fns = backends(names, cache_dir)
    a, b = (fns[n] for n in names)
    differ = 0
    for text in texts:
        x, y = a(text), b(text)
        if x != y:
            differ += 1
            print(f"{names[0]}: {x}\n{names[1]}: {y}\n")
    print(f"{len(texts)} sentences, {differ} differ between {names[0]} and {names[1]}")
    return 0


def plot(results: dict, cats: list[str], names: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = cats + ["ALL"]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        e = results["backends"][name]
        stats = [e["categories"][c] for c in cats] + [e["all"]]
        vals = [s["exact"] for s in stats]
        err = [
            [max(0.0, v - s["exact_ci"][0]) for v, s in zip(vals, stats)],
            [max(0.0, s["exact_ci"][1] - v) for v, s in zip(vals, stats)],
        ]
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, vals, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(
        range(len(labels)),
        [f"{c}\n(n={results['backends'][names[0]]['categories'][c]['n']})" for c in cats]
        + [f"ALL\n(n={results['n']})"],
        fontsize=8,
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("sentence exact match (Wilson 95%)")
    ax.set_title(f"PT-BR ITN, {results['split']} part of benchmarks/itn/ptbr_itn.tsv")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(names), fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
