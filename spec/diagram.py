"""The state diagram of one of a spec's machines, drawn by ``transitions``' GraphMachine.

Read from the spec's relation (never a second table): Mermaid text by default, SVG with
graphviz (the ``dot`` program and the ``graphviz`` Python package, both optional).
"""

from __future__ import annotations

from typing import Literal

from .core import Spec


class DiagramError(Exception):
    """The diagram cannot be drawn here (graphviz missing or failing); one line of text."""


def diagram(spec: Spec, machine: str = "worker", fmt: str = "mermaid") -> str | bytes:
    """The machine's diagram (one of the spec's machines, e.g. ``worker``) as Mermaid text
    or SVG bytes."""
    from transitions.extensions import GraphMachine

    which = machine
    decl = spec.schema.machine(which)
    states = decl.states
    own = [t for t in spec.relation() if t.machine == which]
    loops: dict[str, set[str]] = {}
    for t in own:
        if t.source == t.dest:
            loops.setdefault(t.trigger, set()).add(t.source)
    # a self-loop the machine has in every state is ambient (e.g. the migration's guest
    # writes, link breaks): listed once in the title instead of drawn on every state
    ambient = sorted(k for k, v in loops.items() if v >= set(states))
    transitions = [
        {"trigger": t.trigger + ("" if not t.calls else f" / {', '.join(t.calls)}()"),
         "source": t.source, "dest": t.dest}
        for t in own if t.trigger not in ambient
    ]
    engine: Literal["mermaid", "graphviz"] = "mermaid" if fmt == "mermaid" else "graphviz"
    try:
        gm = GraphMachine(model=None, states=list(states), transitions=transitions,
                          initial=getattr(spec.initial, decl.var), auto_transitions=False,
                          graph_engine=engine,
                          title=f"{spec.name}: {which}"
                          + (f" (in every state: {', '.join(ambient)})" if ambient else ""),
                          show_conditions=False)
    except (ImportError, ModuleNotFoundError) as exc:
        raise DiagramError(
            "SVG output needs graphviz: pip install graphviz and the 'dot' program "
            f"(apt-get install graphviz) ({exc})"
        ) from None

    class _Model:
        pass

    model = _Model()
    gm.add_model(model)
    graph = model.get_graph()  # type: ignore[attr-defined]
    if fmt == "mermaid":
        return str(graph.draw(None))
    try:
        return bytes(graph.draw(None, format="svg", prog="dot"))
    except Exception as exc:
        raise DiagramError(
            f"SVG rendering failed (is graphviz's dot installed?): {exc}") from None
