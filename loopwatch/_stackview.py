"""Which frames of a block's stack a person is shown, and which are folded away.

The console report and the HTML page lay a stack out the same way; this
decides it once, and each renders the result its own way. From the callback
the loop was running down to the block: frames outside that callback
(``asyncio.run``, the loop's machinery) are ``outer``; runs of library frames
above the user's line fold into one item; below it (what the line called) at
most ``inner`` library frames are kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loopwatch._format import short_path
from loopwatch.model import Block, Frame

_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True)
class Shown:
    """A frame shown on its own line."""

    frame: Frame
    user: bool
    site: bool
    """The block's line."""


@dataclass(frozen=True)
class Folded:
    """Library frames shown as one line: how many, and of which modules."""

    frames: tuple[Frame, ...]

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(module_of(f) for f in self.frames))


@dataclass(frozen=True)
class StackView:
    outer: tuple[Frame, ...]
    """The frames that started the loop, above the callback it was running."""
    items: tuple[Shown | Folded, ...]
    """From the callback down to the block, innermost last."""

    @property
    def just_the_site(self) -> bool:
        """Nothing to show beyond the block's own line."""
        return len(self.items) == 1 and isinstance(self.items[0], Shown) and self.items[0].site


def stack_view(block: Block, is_user: Callable[[str], bool], inner: int = 3) -> StackView | None:
    """How ``block``'s stack is shown, or None when it has no frames to show."""
    start = callback_start(block.frames)
    shown = list(block.frames[start:])
    while shown and is_own(shown[-1]) and shown[-1].location != block.site:
        shown.pop()  # loopwatch's own hooks (its gc callback) caught mid-sample
    if not shown:
        return None
    site_index = next(
        (i for i in range(len(shown) - 1, -1, -1) if shown[i].location == block.site), None
    )
    items: list[Shown | Folded] = []
    pending: list[Frame] = []
    for index, frame in enumerate(shown):
        user = is_user(frame.file)
        depth = index - site_index if site_index is not None else 0
        if (depth <= 0 and not user and index != site_index) or depth > inner:
            pending.append(frame)
            continue
        if pending:
            items.append(Folded(tuple(pending)))
            pending = []
        items.append(Shown(frame, user, index == site_index))
    if pending:
        items.append(Folded(tuple(pending)))
    return StackView(tuple(block.frames[:start]), tuple(items))


def is_own(frame: Frame) -> bool:
    """A frame of loopwatch itself (its demo excepted: that is the user's code there)."""
    return frame.file.startswith(_OWN_DIR) and os.path.basename(frame.file) != "demo.py"


def callback_start(frames: Sequence[Frame]) -> int:
    """Index of the first frame of the callback the loop was running (0 if not found)."""
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        name = os.path.basename(frame.file)
        if frame.function == "_run" and name == "events.py":
            return index + 1
        if frame.function == "_run_once" and name == "base_events.py":
            return index + 1
    return 0


def module_of(frame: Frame) -> str:
    """The top-level module (or package) a frame's file belongs to, as a person names it."""
    path = short_path(frame.file)
    if path.startswith("<frozen "):
        return path[len("<frozen "):-1]
    head, _, _ = path.partition(os.sep)
    return head.removesuffix(".py") if head else path
