"""Read traces back from the local file exporter and show where the time went.

The mesh's default exporter writes one JSON object per span to `<state dir>/traces/*.jsonl`
(`asr_mesh.services.common.telemetry`). This module groups them into traces, rebuilds the span tree
across services, finds the critical path, and renders a terminal waterfall or a PNG.

Critical path: starting at the root, the child that finished last is what the parent waited
for; walking back from it, each earlier child that finished before the chosen one started was
waited for too. Children running in parallel with a chosen one (diarization beside a longer
transcription) are off the path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from asr_mesh.client.errors import InvalidInput

__all__ = [
    "Span",
    "Trace",
    "build_trace",
    "find_trace",
    "group_traces",
    "load_spans",
    "match_traces",
    "print_waterfall",
    "recent_traces",
    "save_png",
    "trace_json",
]

SERVICE_COLORS = {
    "gateway": "tab:orange",
    "preprocess": "tab:green",
    "transcription": "tab:purple",
    "diarization": "tab:blue",
    "merge": "tab:brown",
}  # red is kept for failed spans
SLACK_NS = 2_000_000  # 2 ms: spans from different processes are timed by different clocks


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    status: str = "UNSET"
    kind: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)
    children: list[Span] = field(default_factory=list, repr=False)
    depth: int = 0

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "name": self.name,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "start": self.start_ns / 1e9,
            "end": self.end_ns / 1e9,
            "status": self.status,
            "kind": self.kind,
            "attributes": self.attributes,
            "events": self.events,
        }


@dataclass
class Trace:
    trace_id: str
    spans: list[Span]
    roots: list[Span]

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def services(self) -> list[str]:
        return sorted({s.service for s in self.spans})

    @property
    def failed(self) -> bool:
        return any(s.status == "ERROR" for s in self.spans)

    def ordered(self) -> list[Span]:
        """Depth-first, children by start time: the waterfall's row order."""
        rows: list[Span] = []

        def visit(span: Span, depth: int) -> None:
            span.depth = depth
            rows.append(span)
            for child in sorted(span.children, key=lambda s: s.start_ns):
                visit(child, depth + 1)

        for root in sorted(self.roots, key=lambda s: s.start_ns):
            visit(root, 0)
        return rows

    def critical_path(self) -> set[str]:
        """Span ids on the critical path of the longest root."""
        if not self.roots:
            return set()
        path: set[str] = set()

        def walk(span: Span) -> None:
            path.add(span.span_id)
            cursor = span.end_ns
            for child in sorted(span.children, key=lambda s: s.end_ns, reverse=True):
                if child.end_ns <= cursor + SLACK_NS:
                    walk(child)
                    cursor = child.start_ns

        walk(max(self.roots, key=lambda s: s.end_ns - s.start_ns))
        return path


def load_spans(state_dir: Path) -> list[Span]:
    """Every span in the state directory's trace files (unreadable lines are skipped)."""
    spans = []
    folder = Path(state_dir) / "traces"
    for path in sorted([*folder.glob("*.jsonl.1"), *folder.glob("*.jsonl")]):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue  # rotated away between the listing and the read
        for line in lines:
            try:
                raw = json.loads(line)
                spans.append(
                    Span(
                        service=raw["service"],
                        name=raw["name"],
                        trace_id=raw["trace_id"],
                        span_id=raw["span_id"],
                        parent_span_id=raw.get("parent_span_id", ""),
                        start_ns=int(raw["start_ns"]),
                        end_ns=int(raw["end_ns"]),
                        status=raw.get("status", "UNSET"),
                        kind=raw.get("kind", ""),
                        attributes=raw.get("attributes", {}),
                        events=raw.get("events", []),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash must not hide the rest
    return spans


def group_traces(spans: list[Span]) -> dict[str, Trace]:
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return {trace_id: build_trace(trace_id, members) for trace_id, members in by_trace.items()}


def build_trace(trace_id: str, spans: list[Span]) -> Trace:
    by_id = {s.span_id: s for s in spans}
    roots = []
    for span in spans:
        span.children = []
    for span in spans:
        parent = by_id.get(span.parent_span_id)
        if parent is None:
            roots.append(span)  # a true root, or an orphan whose parent was not exported
        else:
            parent.children.append(span)
    return Trace(trace_id, spans, roots)


def match_traces(state_dir: Path, trace_id: str) -> list[Trace]:
    """Traces whose id is `trace_id`, or else starts with it."""
    traces = group_traces(load_spans(state_dir))
    if trace_id in traces:
        return [traces[trace_id]]
    return [t for tid, t in traces.items() if tid.startswith(trace_id.lower())]


def find_trace(state_dir: Path, trace_id: str) -> Trace | None:
    """The one trace whose id is, or starts with, `trace_id` (None if none or ambiguous)."""
    matches = match_traces(state_dir, trace_id)
    return matches[0] if len(matches) == 1 else None


def recent_traces(state_dir: Path, limit: int = 20) -> list[Trace]:
    traces = sorted(
        group_traces(load_spans(state_dir)).values(), key=lambda t: t.start_ns, reverse=True
    )
    return traces[:limit]


def _label(span: Span) -> str:
    return span.name.rsplit("/", 1)[-1] if span.name.startswith("/") else span.name


def print_waterfall(trace: Trace, console: Console, bar_width: int = 48) -> None:
    """Per-span rows: service, name (indented), offset, duration, a bar.

    ★ marks the critical path.
    """
    critical = trace.critical_path()
    total = max(trace.end_ns - trace.start_ns, 1)
    table = Table(
        title=f"trace {trace.trace_id}  {trace.duration_s:.3f} s  "
        f"{len(trace.spans)} spans  {', '.join(trace.services)}",
        expand=False,
    )
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("", "left"),
        ("service", "left"),
        ("span", "left"),
        ("start ms", "right"),
        ("ms", "right"),
        ("waterfall", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=True)
    for span in trace.ordered():
        offset = (span.start_ns - trace.start_ns) / total
        width = max((span.end_ns - span.start_ns) / total, 0)
        lead = int(round(offset * bar_width))
        fill = max(1, int(round(width * bar_width)))
        on_path = span.span_id in critical
        style = "red" if span.status == "ERROR" else ("bold yellow" if on_path else "cyan")
        bar = Text(" " * lead) + Text("█" * min(fill, bar_width - lead or 1), style=style)
        table.add_row(
            "★" if on_path else "",
            span.service,
            "  " * span.depth + _label(span),
            f"{(span.start_ns - trace.start_ns) / 1e6:,.1f}",
            f"{(span.end_ns - span.start_ns) / 1e6:,.1f}",
            bar,
        )
    console.print(table)
    console.print("★ critical path (what the request waited for); red: failed spans")


def trace_json(trace: Trace) -> str:
    return json.dumps([s.to_dict() for s in trace.ordered()], ensure_ascii=False, indent=2)


def save_png(trace: Trace, path: Path) -> None:
    """Draw the waterfall as a picture (matplotlib, headless; not a dependency of the client:
    `pip install matplotlib` or the client's `png` extra)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise InvalidInput(
            "--png needs matplotlib, which is not installed "
            "(pip install 'asr-mesh-client[png]' or pip install matplotlib)"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = trace.ordered()
    critical = trace.critical_path()
    spare = iter(["tab:olive", "tab:cyan", "tab:pink", "tab:gray"])
    colors = {name: SERVICE_COLORS.get(name) or next(spare, "tab:gray") for name in trace.services}
    fig, ax = plt.subplots(figsize=(12, 0.35 * len(rows) + 1.8))
    for index, span in enumerate(rows):
        start = (span.start_ns - trace.start_ns) / 1e9
        color = "tab:red" if span.status == "ERROR" else colors[span.service]
        ax.barh(
            index,
            span.duration_s,
            left=start,
            color=color,
            edgecolor="black" if span.span_id in critical else "none",
            linewidth=1.5,
        )
        ax.text(
            start + span.duration_s,
            index,
            f" {span.duration_s * 1000:.0f} ms",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{'  ' * s.depth}{s.service}: {_label(s)}" for s in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the request started")
    ax.set_title(f"trace {trace.trace_id} — {trace.duration_s:.2f} s (outlined: critical path)")
    handles = [Patch(color=c, label=name) for name, c in colors.items()]
    if trace.failed:
        handles.append(Patch(color="tab:red", label="failed"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
