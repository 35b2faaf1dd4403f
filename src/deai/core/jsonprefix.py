"""Which byte strings keep a text a valid prefix of one JSON object (``response_format``
``json_object``): a pushdown automaton over UTF-8 bytes, pure and deterministic.

A state is an immutable tuple, so a decoder can try a candidate token from the
same state as often as it likes::

    s = START
    s = feed(s, b'{"a": ')     # None once the bytes can no longer become JSON
    complete(s)                # True once one whole object has been read

The grammar is RFC 8259 with two limits that keep a constrained decoder from
wandering: the top-level value must be an object, and at most ``MAX_SPACE``
whitespace bytes may follow one another. Nothing may follow the closing brace
(not even whitespace), so a decoder stops as soon as the object is complete.
Bytes of 0x80 and above are accepted inside strings only, so a multi-byte
character may be split across tokens.
"""

from __future__ import annotations

# modes
VALUE, OBJ_FIRST, OBJ_KEY, COLON, AFTER, ARR_FIRST, STRING, ESCAPE, UNICODE = range(9)
MINUS, ZERO, INT, FRAC0, FRAC, EXP0, EXPSIGN, EXP, LITERAL, DONE = range(9, 19)

MAX_SPACE = 16
WS = frozenset(b" \t\n\r")
DIGITS = frozenset(b"0123456789")
HEX = frozenset(b"0123456789abcdefABCDEF")
ESCAPES = frozenset(b'"\\/bfnrtu')
LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}

# (mode, stack of open containers as a str of "{" and "[", aux, whitespace run, key flag)
State = tuple[int, str, object, int, bool]

START: State = (VALUE, "", None, 0, False)


def _after_value(stack: str) -> State:
    return (AFTER, stack, None, 0, False) if stack else (DONE, "", None, 0, False)


def _value_start(stack: str, b: int, top: bool) -> State | None:
    if b == ord("{"):
        return (OBJ_FIRST, stack + "{", None, 0, False)
    if top:
        return None  # json_object: the top-level value is an object
    if b == ord("["):
        return (ARR_FIRST, stack + "[", None, 0, False)
    if b == ord('"'):
        return (STRING, stack, None, 0, False)
    if b == ord("-"):
        return (MINUS, stack, None, 0, False)
    if b == ord("0"):
        return (ZERO, stack, None, 0, False)
    if b in DIGITS:
        return (INT, stack, None, 0, False)
    rest = LITERALS.get(b)
    if rest is not None:
        return (LITERAL, stack, rest, 0, False)
    return None


def _number_end(stack: str, b: int) -> State | None:
    """A byte that ends a number: whatever may follow a value."""
    return step(_after_value(stack), b) if stack else None


def step(s: State, b: int) -> State | None:  # noqa: C901 - one case per grammar state
    """The state after byte ``b``, or None when no JSON object can start this way."""
    mode, stack, aux, space, key = s
    if b in WS and mode in (VALUE, OBJ_FIRST, OBJ_KEY, COLON, AFTER, ARR_FIRST):
        return (mode, stack, aux, space + 1, key) if space < MAX_SPACE else None
    if mode == VALUE:
        return _value_start(stack, b, top=not stack)
    if mode == ARR_FIRST:
        if b == ord("]"):
            return _after_value(stack[:-1])
        return _value_start(stack, b, top=False)
    if mode in (OBJ_FIRST, OBJ_KEY):
        if b == ord('"'):
            return (STRING, stack, None, 0, True)
        if b == ord("}") and mode == OBJ_FIRST:
            return _after_value(stack[:-1])
        return None
    if mode == COLON:
        return (VALUE, stack, None, 0, False) if b == ord(":") else None
    if mode == AFTER:
        top = stack[-1]
        if b == ord(","):
            return (OBJ_KEY, stack, None, 0, False) if top == "{" else (
                VALUE, stack, None, 0, False)
        if (b == ord("}") and top == "{") or (b == ord("]") and top == "["):
            return _after_value(stack[:-1])
        return None
    if mode == STRING:
        if b == ord('"'):
            return (COLON, stack, None, 0, False) if key else _after_value(stack)
        if b == ord("\\"):
            return (ESCAPE, stack, None, 0, key)
        return None if b < 0x20 else s
    if mode == ESCAPE:
        if b not in ESCAPES:
            return None
        return (UNICODE, stack, 4, 0, key) if b == ord("u") else (STRING, stack, None, 0, key)
    if mode == UNICODE:
        if b not in HEX:
            return None
        left = int(aux) - 1  # type: ignore[call-overload]
        return (STRING, stack, None, 0, key) if left == 0 else (UNICODE, stack, left, 0, key)
    if mode == MINUS:
        return (ZERO if b == ord("0") else INT, stack, None, 0, False) if b in DIGITS else None
    if mode in (ZERO, INT, FRAC, EXP):
        if b in DIGITS and mode != ZERO:
            return s
        if b == ord(".") and mode in (ZERO, INT):
            return (FRAC0, stack, None, 0, False)
        if b in (ord("e"), ord("E")) and mode != EXP:
            return (EXP0, stack, None, 0, False)
        return _number_end(stack, b)
    if mode == FRAC0:
        return (FRAC, stack, None, 0, False) if b in DIGITS else None
    if mode == EXP0:
        if b in (ord("+"), ord("-")):
            return (EXPSIGN, stack, None, 0, False)
        return (EXP, stack, None, 0, False) if b in DIGITS else None
    if mode == EXPSIGN:
        return (EXP, stack, None, 0, False) if b in DIGITS else None
    if mode == LITERAL:
        rest = aux if isinstance(aux, bytes) else b""
        if not rest or b != rest[0]:
            return None
        return (LITERAL, stack, rest[1:], 0, False) if len(rest) > 1 else _after_value(stack)
    return None  # DONE: nothing may follow the object


def feed(s: State | None, data: bytes) -> State | None:
    for b in data:
        if s is None:
            return None
        s = step(s, b)
    return s


def complete(s: State | None) -> bool:
    """Whether the bytes fed so far are exactly one whole JSON object."""
    return s is not None and s[0] == DONE
