"""The state diagrams of a spec's two machines, drawn by ``transitions``' GraphMachine.

Read from the spec's relation (never a second table): Mermaid text by default, SVG with
graphviz (the ``dot`` program and the ``graphviz`` Python package, both optional).
"""

from __future__ import annotations

from typing import Literal

from .lifecycle import CONTROLLER_STATES, WORKER_STATES, Spec


class DiagramError(Exception):
    """The diagram cannot be drawn here (graphviz missing or failing); one line of text."""


def diagram(spec: Spec, machine: str = "worker", fmt: str = "mermaid") -> str | bytes:
    """The machine's diagram (``worker`` or ``controller``) as Mermaid text or SVG bytes."""
    from transitions.extensions import GraphMachine

    which = "controller" if machine == "controller" else "worker"
    states = CONTROLLER_STATES if which == "controller" else WORKER_STATES
    transitions = [
        {"trigger": t.trigger + ("" if not t.calls else f" / {', '.join(t.calls)}()"),
         "source": t.source, "dest": t.dest}
        for t in spec.relation() if t.machine == which
    ]
    engine: Literal["mermaid", "graphviz"] = "mermaid" if fmt == "mermaid" else "graphviz"
    try:
        gm = GraphMachine(model=None, states=list(states), transitions=transitions,
                          initial=states[0], auto_transitions=False, graph_engine=engine,
                          title=f"{spec.name}: {which}", show_conditions=False)
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
