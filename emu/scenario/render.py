"""Scenario results on a terminal (rich): a table of steps, the checkpoints, the failure, and a
progress bar for runs that take more than a second.

Tables never wrap into unreadable cells: ``emit`` prints a table that is wider than the
terminal as one line per row (``table_lines``); on a pipe or file the console is wide
(``output_console``), so lines run long and ``grep`` finds whole rows.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from emu.nt.kernel import SyscallRecord, describe_warning
from emu.scenario.model import Step
from emu.scenario.result import ScenarioResult, StepResult, describe_value
from emu.scenario.run import Observer, ScenarioRun
from emu.win.ntdefs import MEM_COMMIT, MEM_DECOMMIT, MEM_RELEASE, MEM_RESERVE

MAX_SYSCALL_KINDS = 4  # per step; the JSON output has them all
PIPE_WIDTH = 4096  # a console on a pipe or file: lines run long instead of wrapping


def output_console(stderr: bool = False, file: TextIO | None = None) -> Console:
    """A console for heapemu's output: a terminal's own width, or PIPE_WIDTH columns when the
    output is a pipe or a file (rich would otherwise assume 80 and wrap every table)."""
    stream = file or (sys.stderr if stderr else sys.stdout)
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        return Console(file=stream, stderr=stderr)
    columns = os.environ.get("COLUMNS", "")
    width = max(PIPE_WIDTH, int(columns) if columns.isdigit() else 0)
    return Console(file=stream, stderr=stderr, width=width, force_terminal=False)


def _cell_text(cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def table_lines(table: Table) -> list[str]:
    """One line per row (the title first, cells separated by two spaces, multi-line cells
    joined with '; '): what a table becomes where it would not fit."""
    lines = [_cell_text(table.title)] if table.title else []
    columns = table.columns
    for i in range(table.row_count):
        cells = []
        for col in columns:
            text = _cell_text(list(col.cells)[i]).replace("\n", "; ").strip()
            cells.append(text)
        lines.append("  ".join(c for c in cells if c))
    return lines


def emit(console: Console, item: RenderableType) -> None:
    """Print ``item``; a table wider than the console becomes one line per row."""
    wide = console.options.update(max_width=PIPE_WIDTH * 4)
    if isinstance(item, Table) and console.measure(item, options=wide).maximum > console.width:
        for line in table_lines(item):
            console.print(line, soft_wrap=True, highlight=False, markup=False)
    else:
        console.print(item)


def syscall_summary(r: SyscallRecord) -> str:
    """``reserve+commit 0x101000``, ``release 0x100000`` or the call's name."""
    d = r.details
    if r.name == "NtAllocateVirtualMemory" and "type" in d:
        kinds = [
            k for bit, k in ((MEM_RESERVE, "reserve"), (MEM_COMMIT, "commit")) if d["type"] & bit
        ]
        text = "+".join(kinds) or r.name
        size = d.get("size", d.get("size_in"))
    elif r.name == "NtFreeVirtualMemory" and "type" in d:
        text = {MEM_DECOMMIT: "decommit", MEM_RELEASE: "release"}.get(d["type"], r.name)
        size = d.get("size", d.get("size_in"))
    elif r.name == "NtProtectVirtualMemory":
        text, size = "protect", d.get("size")
    else:
        text, size = r.name, None
    if isinstance(size, int):
        text += f" 0x{size:x}"
    return text


def syscalls_cell(records: Sequence[SyscallRecord]) -> Text:
    """Consecutive identical calls grouped (``commit 0x2000 x3``); failures in red."""
    groups: list[tuple[str, bool, int]] = []
    for r in records:
        if r.name == "__wine_dbg_write":
            continue  # shown as debug output
        label = syscall_summary(r) + ("" if r.status == 0 else f" {r.status_name}")
        if groups and groups[-1][0] == label:
            groups[-1] = (label, groups[-1][1], groups[-1][2] + 1)
        else:
            groups.append((label, r.status == 0, 1))
    out = Text()
    for i, (label, ok, n) in enumerate(groups[:MAX_SYSCALL_KINDS]):
        if i:
            out.append("\n")
        out.append(label + (f" x{n}" if n > 1 else ""), style="" if ok else "red")
    if len(groups) > MAX_SYSCALL_KINDS:
        out.append(f"\n+{len(groups) - MAX_SYSCALL_KINDS} more", style="dim")
    return out


NOTES_WIDTH = 140  # notes get their own column on consoles at least this wide


def _step_cell(step: Step) -> Text:
    if step.op == "checkpoint":
        return Text(f"checkpoint {step.args['name']}", style="bold cyan")
    return Text(step.label)


def _result_cell(r: StepResult) -> Text:
    if not r.ok:
        return Text(r.headline or "failed", style="red")
    value = describe_value(r.step, r.value)
    if r.step.name and value:
        value = f"{r.step.name} = {value}"
    return Text(value)


def steps_table(result: ScenarioResult, notes: bool = False) -> Table:
    title = f"{result.scenario} · {result.arch} · {result.allocator}"
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("line", justify="right", style="dim")
    table.add_column("step")
    table.add_column("result")
    table.add_column("system calls")
    table.add_column("", width=1)
    if notes:
        table.add_column("note", style="dim")
    for r in result.steps:
        mark = Text("✓", style="green") if r.ok else Text("✗", style="bold red")
        cells: list[Text | str] = [
            str(r.step.index),
            str(r.step.line or ""),
            _step_cell(r.step),
            _result_cell(r),
            syscalls_cell(r.syscalls),
            mark,
        ]
        table.add_row(*cells, *([r.step.note] if notes else []))
    return table


def checkpoints_table(result: ScenarioResult) -> Table | None:
    if not result.checkpoints:
        return None
    table = Table(title="checkpoints: RtlWalkHeap and process memory", title_justify="left")
    table.add_column("checkpoint", overflow="fold")
    table.add_column("heap", overflow="fold")
    for col in ("busy", "free", "busy bytes", "free bytes", "committed"):
        table.add_column(col, justify="right", no_wrap=True)
    for cp in result.checkpoints:
        committed = f"0x{sum(r.committed for r in cp.regions):x}"
        if not cp.heaps:
            table.add_row(cp.name, "-", "", "", "", "", committed)
        for i, h in enumerate(cp.heaps):
            first = i == 0
            c = h.counts()
            table.add_row(
                cp.name if first else "",
                h.name,
                str(c["busy"]),
                str(c["free"]),
                f"0x{c['busy_bytes']:x}",
                f"0x{c['free_bytes']:x}",
                committed if first else "",
            )
            if h.error:
                table.add_row("", Text(h.error.splitlines()[0], style="red"), *[""] * 5)
    return table


def status_line(result: ScenarioResult) -> Text:
    head = f"{result.scenario} {result.arch} {result.allocator}: "
    f = result.failure
    if f is None:
        return Text.assemble(
            ("✓ PASS ", "bold green"),
            head,
            f"{len(result.steps)} steps, {result.syscalls} system calls, {result.seconds:.2f} s",
        )
    where = f"step {f.step.index}" + (f" (line {f.step.line})" if f.step.line else "")
    n = result.not_run
    rest = f"; {n} step{'s' if n > 1 else ''} not run" if n else ""
    return Text.assemble(("✗ FAIL ", "bold red"), head, f"{where} {f.step.op} failed{rest}")


def render_result(console: Console, result: ScenarioResult) -> None:
    emit(console, steps_table(result, notes=console.width >= NOTES_WIDTH))
    cps = checkpoints_table(result)
    if cps is not None:
        emit(console, cps)
    f = result.failure
    if f is not None and f.error and "\n" in f.error:  # a fault's registers and context
        title = f"step {f.step.index}: {f.step.label}"
        console.print(
            Panel(Text(f.error), title=title, title_align="left", border_style="red", expand=False)
        )
    if result.debug_output:
        console.print(
            Panel(debug_lines(result), title="Wine debug output", title_align="left", expand=False)
        )
    if result.warnings:
        console.print(
            Panel(warning_lines(result), title="heapemu warnings", title_align="left", expand=False)
        )
    console.print(status_line(result))


def warning_lines(result: ScenarioResult) -> Text:
    """One line per warning of heapemu's kernel (apart from the program's own output)."""
    return Text("\n".join(describe_warning(w) for w in result.warnings), style="yellow")


def debug_lines(result: ScenarioResult) -> Group:
    """Debug output with the step that printed it (``load``: while the allocator loaded)."""
    in_steps = sum(len(r.debug_output) for r in result.steps)
    tagged = [("load", m) for m in result.debug_output[: len(result.debug_output) - in_steps]]
    tagged += [(str(r.step.index), m) for r in result.steps for m in r.debug_output]
    width = max(len(t) for t, _ in tagged)
    return Group(
        *(Text.assemble((f"{t:>{width}} ", "cyan"), (m.rstrip("\n"), "dim")) for t, m in tagged)
    )


def summary_table(results: Sequence[ScenarioResult]) -> Table:
    table = Table(title="runs", title_justify="left")
    for col in ("scenario", "arch", "allocator", "steps", "system calls", "seconds", "result"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.scenario,
            r.arch,
            r.allocator,
            str(len(r.steps)),
            str(r.syscalls),
            f"{r.seconds:.2f}",
            Text("pass", style="green") if r.ok else Text("FAIL", style="bold red"),
        )
    return table


class ProgressObserver(Observer):
    """A progress bar (on ``console``, usually stderr) that appears once a run has taken more
    than ``delay`` seconds, so quick runs print nothing extra. ``close()`` after the runs."""

    def __init__(self, console: Console, delay: float = 1.0):
        self.console = console
        self.delay = delay
        self._progress: Progress | None = None
        self._timer: threading.Timer | None = None
        self._task = TaskID(0)
        self._shown = False
        self._lock = threading.Lock()

    def process_created(self, run: ScenarioRun) -> None:
        self.close()
        self._progress = Progress(
            TextColumn(f"{run.scenario.name} {run.arch} {run.spec.label}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task("run", total=len(run.scenario.steps))
        if self.console.is_terminal:
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()

    def _show(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.start()
                self._shown = True

    def after_step(self, run: ScenarioRun, result: StepResult) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def finished(self, run: ScenarioRun, result: ScenarioResult) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._progress is not None and self._shown:
                self._progress.stop()  # (stopping one never shown prints a blank line)
            self._progress = None
            self._shown = False
