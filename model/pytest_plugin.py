"""The pytest plugin (entry point ``pytest11``): the conformance kit as a fixture.

A CI user's whole test file::

    from mybackend import make_backend
    def test_backend_conforms(autoconverge_conformance):
        autoconverge_conformance(make_backend)

``autoconverge_conformance(factory, **options)`` runs the kit (:mod:`.conformance`) on the
factory (a zero-argument callable, or a ``"MODULE:FACTORY"`` string) and fails the test with
the report - one row per property, then for each failing one where it was found, the
shortest failing API program and the seed - or returns the :class:`~.conformance.Report`
when every property holds. Options: ``examples``, ``seed``, ``stages``, ``fail_fast``,
``config`` (a :class:`~.conformance_run.KitConfig`); on the command line
``--autoconverge-examples N``, ``--autoconverge-seed S`` and ``--autoconverge-call-timeout
SECONDS`` set the defaults (a red CI run replays with its printed seed).

This module is imported by every pytest run in an environment where autoconverge is
installed, so it imports nothing heavy until the fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .conformance import Report
    from .conformance_run import KitConfig


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("autoconverge", "autoconverge conformance kit")
    group.addoption("--autoconverge-examples", type=int, default=None, metavar="N",
                    help="Hypothesis programs per autoconverge_conformance run (default 20)")
    group.addoption("--autoconverge-seed", type=int, default=None, metavar="S",
                    help="Hypothesis seed of autoconverge_conformance runs (default random)")
    group.addoption("--autoconverge-call-timeout", type=float, default=None, metavar="SECONDS",
                    help="bound on each backend pause()/resume() call (default 2)")


ConformanceRunner = Callable[..., "Report"]


@pytest.fixture
def autoconverge_conformance(request: pytest.FixtureRequest) -> ConformanceRunner:
    """Run the conformance kit on a backend factory; fail the test if a property fails."""
    examples_option = request.config.getoption("--autoconverge-examples")
    seed_option = request.config.getoption("--autoconverge-seed")
    timeout_option = request.config.getoption("--autoconverge-call-timeout")

    def run(factory: Callable[[], Any] | str, *, examples: int | None = None,
            seed: int | None = None, stages: Sequence[str] | None = None,
            fail_fast: bool = False, config: KitConfig | None = None) -> Report:
        from .conformance import STAGES, KitConfig, load_factory, run_conformance

        name = factory if isinstance(factory, str) else None
        make = load_factory(factory) if isinstance(factory, str) else factory
        cfg = config or KitConfig()
        n = examples if examples is not None else examples_option
        s = seed if seed is not None else seed_option
        cfg = replace(cfg, examples=cfg.examples if n is None else n,
                      seed=cfg.seed if s is None else s)
        if config is None and timeout_option is not None:
            cfg = replace(cfg, call_timeout_s=timeout_option)
        report = run_conformance(make, name=name, config=cfg,
                                 stages=STAGES if stages is None else stages,
                                 fail_fast=fail_fast)
        if not report.ok:
            pytest.fail(report.table(), pytrace=False)
        return report

    return run
