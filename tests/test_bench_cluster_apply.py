"""
bench/cluster_apply.py: its in-process log stands in for the node's real
L{EventLog}, so it has every method of that interface (mypy checks the
bench too: C{state.events = log}), and a tiny run delivers each lobby
message once to each of the node's own users.
"""

from __future__ import annotations

import inspect

from bench import cluster_apply
from twisted_chat.server.cluster.node import EventLog


def test_its_log_has_every_method_of_the_event_log_it_stands_in_for() -> None:
    """(It had no command_waits nor withdraw: a node that called them, a
    command waiting while Redis is out of reach, would have failed.)"""
    wanted = {name: inspect.signature(f) for name, f in vars(EventLog).items()
              if inspect.isfunction(f) and not name.startswith("_")}
    assert {"append", "withdraw", "command_waits"} <= set(wanted)
    for name, signature in wanted.items():
        method = getattr(cluster_apply.Log, name, None)
        assert method is not None, name
        assert list(inspect.signature(method).parameters) == list(signature.parameters), name


def test_a_tiny_run_delivers_each_message_to_each_own_user() -> None:
    _cpu, deliveries = cluster_apply.per_message(3, 2, 5)
    assert deliveries == 3
