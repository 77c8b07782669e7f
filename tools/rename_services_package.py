#!/usr/bin/env python3
"""One-off (issue 12, item 1): move the server package `services` to `asr_mesh.services`.

Run ONCE from a clean checkout of main, with the repository's venv in place (.venv, for ruff):

    python3 tools/rename_services_package.py          # moves, rewrites, formats, stages
    git diff --cached --stat && make lint && make test   # review (make re-installs: see below)
    git commit -m "Server package services -> asr_mesh.services"

It refuses to run when `services/` is already gone (or `asr_mesh/services` exists), so a second
run changes nothing. `asr_mesh` stays a PEP 420 namespace package shared with the client
distribution (clients/src/asr_mesh): the script never creates `asr_mesh/__init__.py`.

What it does, mechanically, on whatever the tree holds at that moment:
1. `git mv services asr_mesh/services`.
2. Rewrites every tracked text file (Python, Markdown, TOML, Makefile, Dockerfiles and their
   .dockerignore, Kubernetes manifests, shell), module paths only:
   - `services.<sub>` where <sub> is a real submodule of the package (read from the directory
     before the move), `services.{name}` (f-strings) and `services.<name>` (docs) ->
     `asr_mesh.services.…`; `from services import`, `import services`,
     `sys.modules['services']` -> the same with `asr_mesh.services`;
   - `services/<sub>…` paths at the repository root (not `x/services/`, not URLs) ->
     `asr_mesh/services/…`; `/ "services"` (pathlib) -> `/ "asr_mesh" / "services"`;
   - `!services` in .dockerignore files -> `!asr_mesh/services`; `ruff …`/`mypy …` command
     lines that name the `services` directory -> `asr_mesh`;
   - `.split(".")[0] == "services"` / `.partition(".")[0] != "services"` (a module's top-level
     package) -> `.split(".")[:2] == ["asr_mesh", "services"]`;
   - outside the package, `` `services` `` -> `` `asr_mesh.services` `` (inside it, `services`
     in backticks is the supervisor's parameter).
   Prose ("the five services", `mesh.services`, `--services`) is left alone: a word is only
   rewritten where it is followed by a real submodule, or is an import or a module string.
3. pyproject.toml: the wheel ships `asr_mesh` (hatch `packages`: asr_mesh/services only, no
   __init__.py), mypy `files`, isort `known-first-party`, pytest `pythonpath` gains "." (the
   checkout's asr_mesh/services beside clients/src/asr_mesh, whatever the editable install points
   at); the mypy module lists, the entry point and the per-file ignores follow from step 2.
4. `Path(__file__)….parents[N]` inside the moved package that reach above `services/` get N+1
   (the package is one directory deeper).
5. Targeted edits (each reported as MISSED if its text has changed): the client tests that check
   the server is not imported compare the distribution-level package (`asr_mesh.services`, not
   the top-level name); the fake broken server of test_client_without_server is
   `asr_mesh/services/`; benchmarks/bench_itn.py's `builtin@REV` still reads revisions from
   before the rename (docs/itn.md uses builtin@29fac50).
6. Lines the rewrite pushed past 100 characters: docstrings and comments are re-wrapped (the
   overflow joins the next line of the paragraph), a trailing comment moves above its code, a
   string literal alone on its line inside brackets becomes two adjacent literals; then
   `ruff check --fix --select I` (import order: `asr_mesh.services` now sorts before
   `benchmarks`), `ruff format` and `ruff check` on the Python files it changed.
7. Removes itself (`git rm`), stages the moved and rewritten files (`git add -u`), prints what
   changed by file and rule, and any line that still looks like the old package (none expected).
   Exit status 0; 2 when something needs a hand (MISSED/MANUAL in the summary), 1 when refused.

After it: `make setup` (make does it by itself: pyproject.toml changed) re-installs the project,
so the `asr-assemble-model` console script points at `asr_mesh.services.transcription.assemble`.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from collections import Counter
from pathlib import Path

OLD = "services"
NEW = "asr_mesh/services"
NEW_MOD = "asr_mesh.services"
SELF = "tools/rename_services_package.py"

# Tracked files never rewritten: recorded data (a frozen protobuf image, benchmark results).
SKIP_PREFIXES = ("protos/baseline/", "docs/benchmarks/", SELF)
SKIP_SUFFIXES = (".png", ".jpg", ".gif", ".ico", ".flac", ".wav", ".mp3", ".pdf", ".ipynb")


def git(root: Path, *args: str, capture: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=root, check=True, text=True, capture_output=capture)
    return done.stdout if capture else ""


def read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:  # line endings as they are
        return f.read()


def write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def submodules(package: Path) -> list[str]:
    """The names `services.<name>` can be followed by: subpackages and modules."""
    names = set()
    for child in package.iterdir():
        if child.is_dir() and (child / "__init__.py").exists():
            names.add(child.name)
        elif child.suffix == ".py" and child.stem != "__init__":
            names.add(child.stem)
    return sorted(names, key=lambda n: (-len(n), n))


class Rewriter:
    def __init__(self, subs: list[str]) -> None:
        alt = "|".join(re.escape(s) for s in subs)
        path_alt = "|".join(re.escape(s) for s in [*subs, "__init__", "__pycache__"])
        # Not after a word character, a dot, a dash or a slash: `mesh.services`, `--services`,
        # `asr_mesh.services`, `k8s/services/` and URLs stay as they are.
        lead = r"(?<![\w.\-/])"
        self.generic: list[tuple[str, re.Pattern[str], str]] = [
            (
                "sys.modules",
                re.compile(r"""sys\.modules\[(["'])services\1\]"""),
                rf"sys.modules[\g<1>{NEW_MOD}\g<1>]",
            ),
            ("from-import", re.compile(lead + r"from services import\b"), f"from {NEW_MOD} import"),
            ("import", re.compile(r"(?<![\w.])import services(?![\w.])"), f"import {NEW_MOD}"),
            (
                "top-level check",
                re.compile(
                    r"""\.(?:split|partition)\((["'])\.\1\)\[0\]\s*(==|!=)\s*(["'])services\3"""
                ),
                r""".split(".")[:2] \2 ["asr_mesh", "services"]""",
            ),
            (
                "module path",
                re.compile(lead + r"services\.(?=(?:" + alt + r")\b|\{|<|\*)"),
                f"{NEW_MOD}.",
            ),
            (
                "file path",
                re.compile(lead + r"services/(?=(?:" + path_alt + r")\b|<|\*|[^\w]|$)", re.M),
                f"{NEW}/",
            ),
        ]
        # Outside the package `services` in backticks names it ("no `services` package"); inside,
        # it is the `services` parameter of the supervisor and the template.
        self.outside_package = [
            ("`services`", re.compile(r"`services`"), f"`{NEW_MOD}`"),
        ]
        self.article = re.compile(r"\b([Aa]) (?=asr_mesh[./]services\b)")
        self.python_only = [
            (
                "pathlib",
                re.compile(r"""(/\s*)(["'])services\2"""),
                r"\1\2asr_mesh\2 / \2services\2",
            ),
        ]
        self.dockerignore = [
            ("dockerignore", re.compile(r"^!services/?$", re.M), f"!{NEW}"),
        ]
        # `ruff check services clients ...`, `mypy services`: the directory, whole word.
        self.tool_line = re.compile(r"^.*\b(?:ruff|mypy)\b.*$", re.M)
        self.tool_word = re.compile(r"(?<=\s)services(?=\s|$)")

    def rewrite(self, text: str, path: str, counts: Counter[str]) -> str:
        rules = list(self.generic)
        if path.endswith(".py"):
            rules += self.python_only
        if path.endswith(".dockerignore"):
            rules += self.dockerignore
        if not path.startswith(NEW + "/"):
            rules += self.outside_package
        for name, pattern, repl in rules:
            text, n = pattern.subn(repl, text)
            if n:
                counts[name] += n

        def tool(match: re.Match[str]) -> str:
            line, n = self.tool_word.subn("asr_mesh", match.group(0))
            if n:
                counts["tool command"] += n
            return line

        if path in ("Makefile", ".ci/run") or path.endswith((".md", ".sh")):
            text = self.tool_line.sub(tool, text)
        text, n = self.article.subn(r"\1n ", text)  # "a services.x" -> "an asr_mesh.services.x"
        if n:
            counts["a -> an"] += n
        return text


def deepen_file_parents(text: str, rel_in_package: Path, counts: Counter[str]) -> str:
    """`Path(__file__)[.resolve()].parents[N]`: N+1 where it reaches above the package."""
    depth = len(rel_in_package.parts) - 1  # parents[depth] is the package directory itself

    def bump(match: re.Match[str]) -> str:
        n = int(match.group(2))
        if n <= depth:
            return match.group(0)
        counts["__file__ parents"] += 1
        return f"{match.group(1)}[{n + 1}]"

    text = re.sub(
        r"(Path\(__file__\)(?:\.resolve\(\)|\.absolute\(\))?\.parents)\[(\d+)\]", bump, text
    )
    chain = r"Path\(__file__\)(?:\.resolve\(\))?(?:\.parent){" + str(depth + 2) + ",}"
    if re.search(chain, text):
        counts["MANUAL: __file__ .parent chain"] += 1
    return text


def realign(before: str, after: str, counts: Counter[str]) -> str:
    """Markdown: where a rewritten path grew a line, the padding after it (2+ spaces: aligned
    columns in code blocks) shrinks by as much, down to 2 spaces, so the columns stay put."""
    old_lines, new_lines = before.split("\n"), after.split("\n")
    if len(old_lines) != len(new_lines):
        return after
    out = []
    for old, new in zip(old_lines, new_lines):
        old_parts, new_parts = re.split(r"(?<=\S)( {2,})", old), re.split(r"(?<=\S)( {2,})", new)
        if old == new or len(old_parts) != len(new_parts) or len(old_parts) == 1:
            out.append(new)
            continue
        carry, parts = 0, []
        for k, (o, n) in enumerate(zip(old_parts, new_parts)):
            if k % 2 == 0:  # text
                carry += len(n) - len(o)
                parts.append(n)
            else:  # padding
                width = max(2, len(o) - carry) if carry > 0 else len(n)
                carry -= len(o) - width if carry > 0 else 0
                parts.append(" " * width)
        line = "".join(parts)
        if line != new:
            counts["realigned"] += 1
        out.append(line)
    return "\n".join(out)


LIMIT = 100  # [tool.ruff] line-length
LIST_ITEM = re.compile(r"(?:[-*] |\d+\. |\| )")
TRIPLE = ('"""', "'''")
PRAGMA = re.compile(r"#\s*(?:noqa|type:|pragma|fmt:|nosec|pyright:|mypy:)")


def _split(line: str, start: int) -> tuple[str, str] | None:
    """`line` cut at its last space within LIMIT (and after `start`): head, moved words."""
    cut = line.rfind(" ", start + 1, LIMIT + 1)
    if cut == -1:
        return None
    return line[:cut].rstrip(), line[cut + 1 :]


def _push_down(lines: list[str], i: int, prefix: str, last: int) -> None:
    """Moves the words of lines[i] past LIMIT to the start of the next line of the same
    paragraph (a line up to `last` with the same `prefix`), or onto a new line."""
    while len(lines[i]) > LIMIT:
        parts = _split(lines[i], len(prefix))
        if parts is None:
            return
        head, tail = parts
        j = i + 1
        nxt = lines[j] if j <= last else ""
        rest = nxt[len(prefix) :]
        joins = (
            nxt.startswith(prefix)
            and rest.strip()
            and not rest[0].isspace()
            and not rest.startswith(TRIPLE)
            and not LIST_ITEM.match(rest)
            and not lines[i].rstrip().endswith(TRIPLE)
        )
        lines[i] = head
        if joins:
            lines[j] = prefix + tail + " " + rest
        else:
            lines.insert(j, prefix + tail)
            last += 1
        i = j


def _docstrings_and_comments(text: str) -> tuple[dict[int, int], dict[int, int]]:
    """Line (0-based) -> last line of its docstring; line -> column of its comment."""
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    docs: dict[int, int] = {}
    comments = {t.start[0] - 1: t.start[1] for t in tokens if t.type == tokenize.COMMENT}
    significant = [t for t in tokens if t.type not in (tokenize.NL, tokenize.COMMENT)]
    opens = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING)
    for k, tok in enumerate(significant):
        if tok.type != tokenize.STRING or not tok.string.endswith(TRIPLE):
            continue
        before = significant[k - 1].type if k else tokenize.NEWLINE
        after = significant[k + 1].type if k + 1 < len(significant) else tokenize.ENDMARKER
        if before in opens and after in (tokenize.NEWLINE, tokenize.ENDMARKER):
            for row in range(tok.start[0] - 1, tok.end[0]):
                docs[row] = tok.end[0] - 1
    return docs, comments


def _bracketed_string_rows(text: str) -> set[int]:
    """Lines (0-based) holding one plain string literal inside brackets and nothing else but
    closing brackets or a comma: two adjacent literals there are the same value."""
    rows: dict[int, list[tokenize.TokenInfo]] = {}
    depth, depth_at = 0, {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            continue
        if tok.type == tokenize.STRING:
            depth_at[tok.start[0] - 1] = depth
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        for row in range(tok.start[0] - 1, tok.end[0]):
            rows.setdefault(row, []).append(tok)
    found = set()
    for row, toks in rows.items():
        first, rest = toks[0], toks[1:]
        if (
            first.type == tokenize.STRING
            and first.start[0] == first.end[0]
            and depth_at.get(row, 0) > 0
            and not first.string.endswith(TRIPLE)
            and "f" not in first.string[:2].lower()
            and all(t.type == tokenize.OP and t.string in ",)]}" for t in rest)
        ):
            found.add(row)
    return found


def _split_string_line(line: str) -> list[str] | None:
    """A line `"words words",` as two adjacent literals cut at a space, or None."""
    match = re.match(r"(\s*)([rRbBuU]?)([\"'])(.*)\3([,)\]}]*)$", line)
    if match is None:
        return None
    indent, prefix, quote, body, end = match.groups()
    opening = len(indent) + len(prefix) + 1
    cut = line.rfind(" ", opening, LIMIT - 1)  # the space stays on the first line
    if cut == -1 or line[cut - 1] == "\\":
        return None
    head = line[: cut + 1] + quote
    tail = indent + prefix + quote + line[cut + 1 :]
    try:
        same = ast.literal_eval(head.strip() + " " + tail.strip().rstrip(",)]}")) == (
            ast.literal_eval(quote.join(["", body, ""]).join([prefix, ""]))
        )
    except (SyntaxError, ValueError):
        return None
    return [head, tail] if same else None


def wrap_grown_lines(text: str, grown: set[int], counts: Counter[str]) -> str:
    """Wraps the docstring and comment lines the rewrite pushed past LIMIT (0-based `grown`):
    ruff format wraps code, never comments or docstrings. Other lines are left (reported)."""
    lines = text.split("\n")
    for i in sorted(grown, reverse=True):  # bottom up: an insertion never moves a pending line
        try:
            docs, comments = _docstrings_and_comments("\n".join(lines))
        except (tokenize.TokenError, SyntaxError):
            counts["MANUAL: lines over 100 (file not tokenizable)"] += 1
            continue
        line = lines[i]
        indent = line[: len(line) - len(line.lstrip())]
        if i in docs:
            body = line.lstrip()
            body = body[3:] if body.startswith(TRIPLE) else body
            item = LIST_ITEM.match(body) and body[:1] in "-*"
            _push_down(lines, i, indent + ("  " if item else ""), docs[i])
            counts["wrapped docstring line"] += 1
        elif i in comments:
            col = comments[i]
            if PRAGMA.match(line[col:]):  # must stay on its line: ruff format wraps the code
                continue
            if line[:col].strip():  # a trailing comment: onto its own line, above the code
                lines[i : i + 1] = [indent + line[col:], line[:col].rstrip()]
            prefix, last = indent + "# ", i
            while last + 1 < len(lines) and lines[last + 1].startswith(prefix):
                last += 1
            if lines[i].startswith(prefix):
                _push_down(lines, i, prefix, last)
                counts["wrapped comment line"] += 1
        elif i in _bracketed_string_rows("\n".join(lines)):
            while len(lines[i]) > LIMIT and (pieces := _split_string_line(lines[i])):
                lines[i : i + 1] = pieces
                i += 1
                counts["split string literal"] += 1
    return "\n".join(lines)


PYPROJECT_EDITS = [
    # (description, pattern, replacement)
    (
        "hatch packages",
        r'^packages = \["services"\]',
        "# `asr_mesh` is a namespace package (no __init__.py) shared with the client\n"
        "# distribution: this wheel ships asr_mesh/services, the client's asr_mesh/client.\n"
        'packages = ["asr_mesh"]',
    ),
    ("mypy files", r'^files = \["services",', 'files = ["asr_mesh/services",'),
    (
        "mypy namespace comment",
        r"(explicit_package_bases = true\s*#).*$",
        r"\1 asr_mesh is a namespace package (asr_mesh/ and clients/src/asr_mesh)",
    ),
    ("isort known-first-party", r'(known-first-party = \[[^\]]*?)"services",\s*', r"\1"),
    (
        "pytest pythonpath",
        r'^pythonpath = \["clients/src"\]',
        '# And ".": the checkout\'s asr_mesh/services (one namespace package, two dirs).\n'
        'pythonpath = [".", "clients/src"]',
    ),
]

TARGETED = [
    # (file, description, old, new): client tests that check the server is not imported.
    (
        "tests/clients/test_client_surface.py",
        "import check: distribution-level package",
        "def _imported_modules(path: Path) -> set[str]:\n",
        "def _package_of(module: str) -> str:\n"
        '    """The top-level name, or `asr_mesh.<x>` for the namespace the two distributions'
        ' share."""\n'
        '    parts = module.split(".")\n'
        '    return ".".join(parts[:2]) if parts[0] == "asr_mesh" else parts[0]\n'
        "\n\n"
        "def _imported_modules(path: Path) -> set[str]:\n",
    ),
    (
        "tests/clients/test_client_surface.py",
        "import check: `import a.b`",
        '{alias.name.split(".")[0] for alias in node.names}',
        "{_package_of(alias.name) for alias in node.names}",
    ),
    (
        "tests/clients/test_client_surface.py",
        "import check: `from a.b import c`",
        'names.add(node.module.split(".")[0])',
        "names.add(_package_of(node.module))\n"
        '            if node.module == "asr_mesh":  # from asr_mesh import services\n'
        '                names |= {f"asr_mesh.{alias.name}" for alias in node.names}',
    ),
    (
        "tests/clients/test_client_surface.py",
        "import check: the server",
        'assert "services" not in imported',
        f'assert "{NEW_MOD}" not in imported',
    ),
    (
        "tests/clients/test_client_surface.py",
        "import check: functions importing the server",
        '(node.module or "").split(".")[:2] == ["asr_mesh", "services"]',
        f'_package_of(node.module or "") == "{NEW_MOD}"',
    ),
    (
        "tests/clients/test_client_surface.py",
        "import check: no top-level server import",
        'm.split(".")[:2] == ["asr_mesh", "services"]',
        f'_package_of(m) == "{NEW_MOD}"',
    ),
    (
        "benchmarks/bench_itn.py",
        "builtin@REV: revisions before the rename (docs/itn.md's builtin@29fac50)",
        """    source = subprocess.run(
        ["git", "show", f"{rev}:asr_mesh/services/merge/itn.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
""",
        """    for package in ("asr_mesh/services", "services"):  # "services": before the rename
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
""",
    ),
    (
        "tests/clients/test_client_dist.py",
        "fresh venv: server not imported",
        "('services', ",
        f"('{NEW_MOD}', ",
    ),
    (
        "tests/clients/test_client_without_server.py",
        "fake broken server: nested directory",
        "fake.mkdir()",
        "fake.mkdir(parents=True)",
    ),
]


def leftover_pattern(subs: list[str]) -> re.Pattern[str]:
    """What still looks like the old package after the rewrite (printed for review)."""
    alt = "|".join(re.escape(s) for s in subs)
    return re.compile(
        rf"(?<![\w.\-/])(?:services\.(?:{alt}|\{{|<)|services/(?:{alt})\b|from services\b)"
        r"|(?<!asr_mesh )import services\b|sys\.modules\[.services.\]"
        r"|[=!]=\s*[\"']services[\"']|[\"']services[\"']\s+(?:not\s+)?in\b"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow-dirty", action="store_true", help="run on a dirty work tree")
    parser.add_argument("--keep-script", action="store_true", help="do not git rm this script")
    parser.add_argument("--no-format", action="store_true", help="skip ruff (import order, format)")
    args = parser.parse_args(argv)

    root = Path(git(Path.cwd(), "rev-parse", "--show-toplevel").strip())
    old_dir, new_dir = root / OLD, root / NEW
    if not (old_dir / "__init__.py").exists():
        print(f"refusing: {old_dir} is not a package (already renamed?); nothing done")
        return 1
    if new_dir.exists() or (root / "asr_mesh" / "__init__.py").exists():
        print(f"refusing: {new_dir} or asr_mesh/__init__.py exists; nothing done")
        return 1
    if not args.allow_dirty and git(root, "status", "--porcelain", "--untracked-files=no").strip():
        print("refusing: the work tree has uncommitted changes (commit them, or --allow-dirty)")
        return 1

    subs = submodules(old_dir)
    print(f"submodules of `{OLD}`: {', '.join(sorted(subs))}")
    rewriter = Rewriter(subs)

    (root / "asr_mesh").mkdir(exist_ok=True)
    git(root, "mv", OLD, NEW)
    # Untracked leftovers (__pycache__) stay behind in services/: remove them, the name must go.
    if old_dir.exists():
        shutil.rmtree(old_dir)
    print(f"git mv {OLD} {NEW}")

    tracked = git(root, "ls-files", "-z").split("\0")
    changed: dict[str, Counter[str]] = {}
    for rel in filter(None, tracked):
        if rel.startswith(SKIP_PREFIXES) or rel.endswith(SKIP_SUFFIXES):
            continue
        path = root / rel
        if not path.is_file() or path.is_symlink():
            continue
        try:
            text = read(path)
        except UnicodeDecodeError:
            continue
        counts: Counter[str] = Counter()
        new = rewriter.rewrite(text, rel, counts)
        if rel.startswith(NEW + "/") and rel.endswith(".py"):
            new = deepen_file_parents(new, Path(rel).relative_to(NEW), counts)
        if rel.endswith(".md") and new != text:
            new = realign(text, new, counts)
        if rel.endswith(".py") and new != text:
            before, after = text.split("\n"), new.split("\n")
            if len(before) == len(after):
                grown = {
                    i for i, (a, b) in enumerate(zip(before, after)) if len(b) > LIMIT >= len(a)
                }
                new = wrap_grown_lines(new, grown, counts)
        if rel == "pyproject.toml":
            for name, pattern, repl in PYPROJECT_EDITS:
                new, n = re.subn(pattern, repl, new, count=1, flags=re.M)
                counts[f"pyproject: {name}" if n else f"MISSED pyproject: {name}"] += 1
        if new != text:
            write(path, new)
            changed[rel] = counts
        elif any(k.startswith(("MISSED", "MANUAL")) for k in counts):
            changed[rel] = counts

    for rel, name, old, new in TARGETED:
        path = root / rel
        text = read(path) if path.exists() else ""
        counts = changed.setdefault(rel, Counter())
        if old in text:
            write(path, text.replace(old, new, 1))
            counts[name] += 1
        else:
            counts[f"MISSED {name}"] += 1

    py_files = [rel for rel in changed if rel.endswith(".py") and (root / rel).exists()]
    if not args.no_format and py_files:
        ruff = root / ".venv" / "bin" / "ruff"
        ruff_cmd = str(ruff) if ruff.exists() else shutil.which("ruff")
        if ruff_cmd is None:
            print(
                "WARNING: no ruff (.venv/bin/ruff or PATH): run `ruff check --fix --select I`"
                " and `ruff format` on the changed files yourself"
            )
        else:
            subprocess.run([ruff_cmd, "check", "-q", "--fix", "--select", "I", *py_files], cwd=root)
            subprocess.run([ruff_cmd, "format", "-q", *py_files], cwd=root, check=True)
            lint = subprocess.run(
                [ruff_cmd, "check", "--output-format", "concise", *py_files],
                cwd=root,
                capture_output=True,
                text=True,
            )
            if lint.returncode:
                print(lint.stdout + lint.stderr)
                changed.setdefault("(ruff check)", Counter())["MANUAL: ruff check findings"] += 1

    if not args.keep_script and (root / SELF).exists():
        git(root, "rm", "-q", SELF)
        tools = root / "tools"
        if tools.is_dir() and not any(tools.iterdir()):
            tools.rmdir()
    git(root, "add", "-u")  # the moved and rewritten files; nothing untracked

    total: Counter[str] = Counter()
    print(f"\n{len(changed)} files rewritten (plus {len(list(new_dir.rglob('*')))} paths moved):")
    for rel in sorted(changed):
        counts = changed[rel]
        total.update(counts)
        print(f"  {rel}: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    print("by rule: " + ", ".join(f"{k} x{v}" for k, v in sorted(total.items())))

    problems = [k for k in total if k.startswith(("MISSED", "MANUAL"))]
    leftovers, leftover = [], leftover_pattern(subs)
    for rel in filter(None, git(root, "ls-files", "-z").split("\0")):
        if rel.startswith(SKIP_PREFIXES) or rel.endswith(SKIP_SUFFIXES):
            continue
        path = root / rel
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        for i, line in enumerate(lines, 1):
            if leftover.search(line):
                leftovers.append(f"  {rel}:{i}: {line.strip()}")
    if leftovers:
        print("\nlines that still look like the old package (review them):")
        print("\n".join(leftovers))
    if problems:
        print("\nNOT APPLIED (do these by hand): " + ", ".join(problems))
    print(
        "\nstaged; next: review `git diff --cached --stat`, then `make lint` and `make test`"
        " (make re-installs the project first: pyproject.toml changed)"
    )
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
