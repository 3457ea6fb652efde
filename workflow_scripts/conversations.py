"""Chat columns checked as conversations when a mapping picks a turn out of one (`chosen[1].content`).

A mapped turn is taken by position, so a row whose roles are out of order would silently swap prompt and
answer, and a `rejected` conversation of another prompt would be paired with this one's `chosen`. So:
- the conversation's roles come from ROLES, in a valid order: an optional system message, then user and
  assistant turns alternating from the user;
- the turn a mapping takes is the assistant's for `chosen` / `rejected` / the negatives, the user's for
  `prompt`;
- the turns before the mapped responses are the same conversation, and its last user message is the
  record's prompt.
Each error names the path of the offending value (`chosen[2].role`).
"""
from __future__ import annotations

import re

ROLES = ("system", "user", "assistant")
TURN_PATH = re.compile(r"^([^\[.]+)\[(-?\d+)\]\.content$")


class ConversationError(ValueError):
    """A chat column that is not a valid conversation for its mapping; `field` is the offending path."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def mapped_turn(row: dict, path: str) -> tuple[str, list, int] | None:
    """(column, messages, index of the mapped turn) when `path` takes a message's content from a chat column."""
    m = TURN_PATH.match(path)
    messages = row.get(m[1]) if m else None
    if not isinstance(messages, list) or not messages or not all(isinstance(x, dict) and "role" in x for x in messages):
        return None
    index = int(m[2])
    return m[1], messages, index + len(messages) if index < 0 else index


def check_order(column: str, messages: list[dict]) -> None:
    """Known roles, an optional system message first, then user / assistant alternating from the user."""
    start = 1 if messages[0].get("role") == "system" else 0
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise ConversationError(f"unknown role {role!r} (known: {', '.join(ROLES)})", f"{column}[{i}].role")
        expected = "system" if i < start else ("user", "assistant")[(i - start) % 2]
        if role != expected:
            raise ConversationError(f"role {role!r} where the conversation needs {expected!r} (an optional system "
                                    "message, then user and assistant turns alternating)", f"{column}[{i}].role")
        if not isinstance(message.get("content"), str):
            raise ConversationError("message content must be a string", f"{column}[{i}].content")


def check_mapped_turns(row: dict, paths: dict[str, str], prompt) -> None:
    """Check every mapped chat turn of a row (see the module docstring): `paths` maps a record field (prompt,
    chosen, rejected, negatives[k]) to its column path; `prompt` is the record's prompt."""
    contexts = {}
    for field, path in paths.items():
        turn = mapped_turn(row, path)
        if turn is None:
            continue
        column, messages, index = turn
        check_order(column, messages)
        role = "user" if field == "prompt" else "assistant"
        if messages[index]["role"] != role:
            kind = field.split("[")[0]
            raise ConversationError(f"mapping.{kind} takes a message of role {messages[index]['role']!r}; {kind} "
                                    f"must be one of role {role!r}", f"{column}[{index}].role")
        if field != "prompt":
            contexts[field] = (column, messages[:index])
    first = next(iter(contexts.values()), None)
    for field, (column, context) in contexts.items():
        if context != first[1]:
            raise ConversationError(f"the conversation before the {field.split('[')[0]} turn differs from the one "
                                    f"before the {next(iter(contexts)).split('[')[0]} turn: not a response to the same "
                                    "prompt", column)
    for column, context in contexts.values():
        users = [m["content"] for m in context if m["role"] == "user"]
        last = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        if not users or users[-1].strip() != str(last).strip():
            raise ConversationError("the last user message before the mapped turn is not the record's prompt "
                                    "(mapping.prompt)", column)
