"""What every screen reaches through the app: state, feed, clock, fire-time cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, cast

from textual.dom import DOMNode

from console.clock import Clock
from console.feed import Feed
from console.schedule import FireCache
from console.state import ConsoleState


@dataclass
class Context:
    state: ConsoleState
    feed: Feed
    clock: Clock
    fires: FireCache = field(default_factory=FireCache)


class _HasContext(Protocol):
    ctx: Context


def context_of(node: DOMNode) -> Context:
    return cast(_HasContext, node.app).ctx
