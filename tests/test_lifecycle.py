"""The lifecycle table and its decisions, as properties over arbitrary histories.

Histories are drawn by hypothesis (``tests.lifecycle_worlds.drive``): results of
every role, lost leases, checks placed and abandoned, verdicts of every fault,
cancels and deadlines, in any order the state allows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deai.core.lifecycle import (
    ASSIGNMENT_MOVES,
    JOB_MOVES,
    TASK_MOVES,
    AssignmentStatus,
    IllegalTransition,
    JobStatus,
    Role,
    TaskStatus,
    move,
    states,
)
from deai.core.lifecycle import effects as E
from tests.lifecycle_worlds import ESCROW, DbWorld, MachineWorld, drive

ROOT = Path(__file__).resolve().parent.parent
COORDINATOR = ROOT / "src" / "deai" / "coordinator"


def _draw(data: st.DataObject):  # type: ignore[no-untyped-def]
    return lambda options: data.draw(st.sampled_from(options))


# --- the table --------------------------------------------------------------------------------

@pytest.mark.parametrize("table,initial", [(JOB_MOVES, states.JOB_INITIAL),
                                           (TASK_MOVES, states.TASK_INITIAL),
                                           (ASSIGNMENT_MOVES, states.ASSIGNMENT_INITIAL)])
def test_every_state_is_reachable_and_terminal_states_stay(table, initial) -> None:  # type: ignore[no-untyped-def]
    seen, todo = set(initial), list(initial)
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(table)
    assert any(not table[s] for s in table), "something must be final"


def test_move_refuses_what_the_table_does_not_list() -> None:
    assert move(TASK_MOVES, "queued", TaskStatus.ASSIGNED) == TaskStatus.ASSIGNED
    with pytest.raises(IllegalTransition):
        move(TASK_MOVES, "done", TaskStatus.QUEUED)
    with pytest.raises(IllegalTransition):
        move(JOB_MOVES, "completed", JobStatus.RUNNING)
    with pytest.raises(IllegalTransition):
        move(ASSIGNMENT_MOVES, "rejected", AssignmentStatus.ACCEPTED)


def test_the_architecture_page_shows_the_table() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    for name in ("job", "task", "assignment"):
        assert states.mermaid(name) in page, f"docs/architecture.md: {name} diagram is stale"


# --- properties of every history ----------------------------------------------------------------

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), canary=st.booleans())
def test_any_history_keeps_the_invariants(data: st.DataObject, canary: bool) -> None:
    w = MachineWorld(canary=canary)
    total = w.m.total()
    drive(w, _draw(data), steps=14)
    m = w.m
    assert m.total() == total, "money is conserved"
    assert m.client_payments() <= 1, "the client pays for a task at most once"
    if m.task_status == TaskStatus.DONE and m.output is not None:
        assert len(m.accepts) == 1, "exactly one output is accepted per done task"
        # A replica's may stand: a referee that re-ran the task convicted the subject and
        # agreed with the replica (``decide.on_verdict``).
        standing = [a for a, s in m.seats.items() if s.status == AssignmentStatus.ACCEPTED
                    and a == m.output]
        assert standing == [m.output], "the output that stands is an accepted assignment's"
        if m.seats[m.output].role == Role.REPLICA:
            assert any(s.role == Role.REFEREE and s.status == AssignmentStatus.ACCEPTED
                       for s in m.seats.values()), "a replica's output stands by a verdict"
    if canary:
        assert m.client_payments() == 0 and m.money.get("client", 0) == 0
    for _, _, verdicts_before in m.slashes:
        assert verdicts_before >= 1, "a slash only follows a verdict"
    assert len(m.slashes) <= 2 * m.verdicts
    if m.job_status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
        assert m.money.get("escrow", 0) == 0, "an ended job keeps nothing in escrow"
        assert not any(s.status == AssignmentStatus.LEASED for s in m.seats.values())
    paid = sum(p.amount + p.fee for p in m.payouts if p.from_escrow and not p.forfeited)
    assert paid <= ESCROW


def test_decisions_never_slash_outside_a_verdict() -> None:
    """Only a trusted decision (a referee's verdict, whole or on inherited checkpoints, a
    verifier's audit, a forced error the network planted itself) may return a Slash: read
    from the source, not sampled."""
    tree = ast.parse((ROOT / "src/deai/core/lifecycle/decide.py").read_text())
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        slashes = [n for n in ast.walk(fn) if isinstance(n, ast.Call)
                   and getattr(n.func, "id", None) == "Slash"]
        assert not slashes or fn.name in ("on_verdict", "on_inherited", "on_audit",
                                                  "on_forced"), fn.name


# --- the coordinator and the simulator agree -----------------------------------------------------

@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), canary=st.booleans())
def test_coordinator_and_simulator_agree_on_any_history(tmp_path_factory: pytest.TempPathFactory,
                                                        data: st.DataObject,
                                                        canary: bool) -> None:
    """One history, two appliers: the coordinator's (real SQLite, settlement port) and
    core's in-memory machine (the simulator's). Same statuses, same money."""
    choices: list[Any] = []

    def record(options: list[Any]) -> Any:
        pick = data.draw(st.sampled_from(options))
        choices.append(options.index(pick))
        return pick

    machine = MachineWorld(canary=canary)
    drive(machine, record)
    replay = iter(choices)
    db = DbWorld(tmp_path_factory.mktemp("db"), canary=canary)
    drive(db, lambda options: options[next(replay)])
    assert db.snapshot() == machine.snapshot()


# --- nothing outside core decides a transition ---------------------------------------------------

FIELDS = {"status", "role", "pending_role"}
VALUES = ({m.value for m in JobStatus} | {m.value for m in TaskStatus}
          | {m.value for m in AssignmentStatus} | {m.value for m in Role})


def _lifecycle_literals(path: Path) -> list[str]:
    """String literals of lifecycle values written to, compared with or filtered on a
    status or role field (``x.status = "done"``, ``Task.status == "queued"``,
    ``.in_(("leased",))``, ``Assignment(role="primary")``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []

    def literals(node: ast.AST) -> list[str]:
        return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
                and isinstance(n.value, str) and n.value in VALUES]

    def is_field(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr in FIELDS

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(is_field(t) for t in node.targets):
            found += literals(node.value)
        elif isinstance(node, ast.Compare) and (is_field(node.left)
                                                or any(is_field(c) for c in node.comparators)):
            found += literals(node)
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in ("in_", "not_in") and is_field(f.value):
                found += literals(node)
            found += [v for k in node.keywords if k.arg in FIELDS for v in literals(k.value)]
    return [f"{path.relative_to(ROOT)}:{v}" for v in found]


def test_no_status_or_role_literal_outside_core() -> None:
    bad = [hit for p in sorted(COORDINATOR.rglob("*.py")) for hit in _lifecycle_literals(p)]
    assert not bad, f"lifecycle values spelled outside core.lifecycle: {bad}"


def test_no_import_cycle_among_coordinator_modules() -> None:
    graph: dict[str, set[str]] = {}
    for p in COORDINATOR.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT / "src").with_suffix("").parts)
        name = re.sub(r"\.__init__$", "", name)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("deai.coordinator"):
                    deps.add(node.module)
                    deps |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("deai.coordinator")}
        graph[name] = deps
    graph = {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}
    # a package's __init__ re-exporting its modules is not a cycle of design
    packages = {k for k in graph if (COORDINATOR.parent.parent / k.replace(".", "/")).is_dir()}

    def visit(n: str, path: list[str]) -> None:
        for d in graph[n] - packages:
            assert d not in path, f"import cycle: {' -> '.join([*path, d])}"
            visit(d, [*path, d])

    for start in graph:
        visit(start, [start])


def test_effects_are_plain_records() -> None:
    """Every effect type is frozen data, so decisions can be compared and replayed."""
    for cls in E.Effect.__args__:  # type: ignore[attr-defined]
        assert cls.__dataclass_params__.frozen, cls
