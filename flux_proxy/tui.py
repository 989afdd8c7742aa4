"""``flux trace debug``: step through the spans of one execution in the terminal.

The span tree (as ``flux trace`` nests it) on the left; on the right, the
selected span's request, response, result rows and mutations, from
:mod:`.spanview`. Keyboard only, so it works over SSH; Textual draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Static, Tree
from textual.widgets.tree import TreeNode

from recorder.model import MUTATION, StoredEvent

from .render import describe
from .spanview import MUTATION_COLUMNS, SpanDetails, SpanIndex

_LABEL_WIDTH = 90


class SpanTree(Tree[StoredEvent]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "cursor_down", "move", key_display="↓↑/jk"),
        Binding("up,k", "cursor_up", "move", show=False),
        Binding("enter", "select_cursor", "expand", key_display="enter/space"),
        Binding("space", "toggle_node", "expand", show=False),
    ]


class DetailsPane(VerticalScroll):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", "scroll", show=False),
        Binding("k", "scroll_up", "scroll", show=False),
    ]


def span_label(span: StoredEvent) -> Text:
    e = span.event
    line = describe(span)
    if len(line) > _LABEL_WIDTH:
        line = line[: _LABEL_WIDTH - 1] + "…"
    label = Text()
    if e.error:
        label.append("✗ ", style="bold red")
    label.append(e.kind, style="bold red" if e.error else "bold")
    label.append(f" {line} ", style="red" if e.error else "")
    if e.kind != MUTATION:  # a row change has no duration of its own
        label.append(f"{e.duration_ns / 1e6:.1f}ms", style="dim")
    return label


class TraceDebugApp(App[None]):
    """One execution's spans; ``notes`` are shown under the title (keys missing...)."""

    TITLE = "flux trace debug"
    CSS = """
    #summary { height: auto; padding: 0 1; background: $boost; }
    #spans { width: 45%; border: round $primary 50%; }
    #spans:focus-within { border: round $accent; }
    #details { width: 1fr; border: round $primary 50%; padding: 0 1; overflow-x: auto; }
    #details:focus { border: round $accent; }
    #details Static { width: 100%; }
    #details .heading { text-style: bold; color: $accent; margin-top: 1; }
    #details DataTable { max-height: 1000; width: auto; }
    #results { height: auto; width: auto; min-width: 100%; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "switch_pane", "switch pane", priority=True),
        Binding("n", "next_error", "next error", key_display="n or /"),
        Binding("slash", "next_error", "next error", show=False),
        Binding("p", "previous_error", "previous error"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, trace_id: str, events: list[StoredEvent], notes: Sequence[str] = ()) -> None:
        super().__init__()
        self.trace_id = trace_id
        self.index = SpanIndex(events)
        self.notes = list(notes)
        self.nodes: list[TreeNode[StoredEvent]] = []  # in display order
        self.shown: StoredEvent | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._summary(), id="summary", markup=False)
        with Horizontal():
            yield SpanTree(Text(f"trace {self.trace_id}"), id="spans")
            with DetailsPane(id="details"):
                yield Static(id="title", markup=False)
                yield Static("request", classes="heading", markup=False)
                yield Static(id="request", markup=False)
                yield Static("response", classes="heading", markup=False)
                yield Static(id="response", markup=False)
                yield Vertical(id="results")
                yield Static("mutations", classes="heading", markup=False)
                yield Static(id="mutations-none", markup=False)
                mutations = DataTable[Text](id="mutations", show_cursor=False)
                mutations.can_focus = False
                yield mutations
        yield Footer()

    def _summary(self) -> Text:
        spans = [s for _, s in self.index.tree]
        errors = sum(1 for s in spans if s.event.error)
        text = Text(f"trace {self.trace_id}   {len(spans)} spans   ")
        text.append(f"{errors} error span(s)", style="bold red" if errors else "green")
        for note in self.notes:
            text.append(f"\n{note}", style="yellow")
        return text

    async def on_mount(self) -> None:
        tree = self.query_one(SpanTree)
        tree.show_root = False
        tree.guide_depth = 3
        parents: list[TreeNode[StoredEvent]] = [tree.root]
        for depth, span in self.index.tree:
            del parents[depth + 1 :]
            node = parents[-1].add(span_label(span), data=span, expand=True)
            parents.append(node)
            self.nodes.append(node)
        for node in self.nodes:
            node.allow_expand = bool(node.children)
        self.query_one("#mutations", DataTable).add_columns(*MUTATION_COLUMNS)
        tree.focus()
        if self.nodes:
            tree.move_cursor(self.nodes[0])
            await self.show_span(self.index.tree[0][1])
        else:
            self.query_one("#title", Static).update("no events recorded for this trace")

    async def on_tree_node_highlighted(self, message: Tree.NodeHighlighted[StoredEvent]) -> None:
        if message.node.data is not None and message.node.data is not self.shown:
            await self.show_span(message.node.data)

    async def show_span(self, span: StoredEvent) -> None:
        self.shown = span
        details = self.index.details(span)
        title = Text(details.title, style="bold red" if span.event.error else "bold")
        for section in details.sections[:1]:  # the span's own line: kind, ids, timing
            title.append("\n" + "\n".join(section.lines), style="dim")
        self.query_one("#title", Static).update(title)
        rest = {s.title: s.lines for s in details.sections[1:]}
        request, response = rest.pop("request", []), rest.pop("response", [])
        for name, lines in rest.items():  # other kinds' sections go where the request would
            request = [*request, f"{name}:", *lines]
        self.query_one("#request", Static).update(Text("\n".join(request) or "(none)"))
        self.query_one("#response", Static).update(Text("\n".join(response) or "(none)"))
        await self._show_results(details)
        self._show_mutations(details)
        self.query_one(DetailsPane).scroll_home(animate=False)

    async def _show_results(self, details: SpanDetails) -> None:
        results = self.query_one("#results", Vertical)
        await results.remove_children()
        widgets: list[Static | DataTable[Text]] = []
        for n, result in enumerate(details.results, 1):
            caption = f"rows (result {n} of {len(details.results)})"
            caption += f": {result.tag}" if result.tag else ""
            if result.hidden:
                caption += f", first {len(result.rows)} shown, {result.hidden} more"
            widgets.append(Static(caption, classes="heading", markup=False))
            table = DataTable[Text](classes="rows", show_cursor=False, zebra_stripes=True)
            table.can_focus = False
            widgets.append(table)
        await results.mount_all(widgets)
        tables = results.query(".rows").results(DataTable)
        for result, table in zip(details.results, tables, strict=True):
            table.add_columns(*(Text(c) for c in result.columns))
            table.add_rows([[Text(v) for v in row] for row in result.rows])

    def _show_mutations(self, details: SpanDetails) -> None:
        table = self.query_one("#mutations", DataTable)
        table.clear()
        for row in details.mutations:
            table.add_row(*(Text(v) for v in row))
        table.display = bool(details.mutations)
        none = self.query_one("#mutations-none", Static)
        none.update("" if details.mutations else "(none)")
        none.display = not details.mutations

    def action_switch_pane(self) -> None:
        tree = self.query_one(SpanTree)
        if tree.has_focus:
            self.query_one(DetailsPane).focus()
        else:
            tree.focus()

    def action_next_error(self) -> None:
        self._jump(+1)

    def action_previous_error(self) -> None:
        self._jump(-1)

    def _jump(self, step: int) -> None:
        errors = [n for n in self.nodes if n.data is not None and n.data.event.error]
        if not errors:
            self.notify("no error spans in this execution")
            return
        tree = self.query_one(SpanTree)
        here = self.nodes.index(tree.cursor_node) if tree.cursor_node in self.nodes else -1
        order = {id(n): i for i, n in enumerate(self.nodes)}
        ahead = [n for n in errors if (order[id(n)] - here) * step > 0]
        target = (ahead[0] if step > 0 else ahead[-1]) if ahead else errors[0 if step > 0 else -1]
        parent = target.parent
        while parent is not None:  # a collapsed ancestor hides it: open the way
            parent.expand()
            parent = parent.parent
        _ = tree.last_line  # expanding renumbers the lines; rebuild them now
        tree.move_cursor(target)
        tree.focus()
