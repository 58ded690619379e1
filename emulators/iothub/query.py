"""The IoT Hub query language for device and module twins, as the emulator answers it.

Source: Microsoft's "IoT Hub query language for device and module twins, jobs, and message routing"
(https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-query-language) and "Queries for IoT Hub device and
module twins" (https://learn.microsoft.com/azure/iot-hub/query-twins). The grammar below is the docs' grammar::

    SELECT [TOP <n>] <projection_list> FROM <devices | devices.modules> [WHERE <condition>] [GROUP BY <path>, ...]
    <projection_list> ::= '*' | <projection_element> [AS alias] [, <projection_element> [AS alias]]*
    <projection_element> ::= attribute_name ['.' attribute_name]* | COUNT() | AVG(p) | SUM(p) | MIN(p) | MAX(p)
    <expression> ::= constant | attribute path | function_call | expr binary_operator expr | array | '(' expr ')'
    operators: arithmetic + - * / %, logical AND OR NOT, comparison = != <> < > <= >=, IN / NIN [array constant]
    constants: 'string' or "string" (escapes \\' \\" \\\\ \\uXXXX), decimal or 0x hexadecimal numbers, true, false,
               null, undefined, [constant, ...]
    functions: IS_DEFINED(p), STARTSWITH(x, s), ENDSWITH(x, s) (also spelled STARTS_WITH / ENDS_WITH)

Semantics follow the docs: a condition selects a twin only when it evaluates to Boolean ``true`` (``undefined``,
``null``, strings... are false); comparisons are between primitive values of one type (anything else is
undefined, as the docs' "comparisons are supported only between primitive types"); a missing property is
undefined; ``GROUP BY`` yields one row per group, e.g. ``[{"numberOfDevices": 3, "status": "Success"}]``.
Inferred where the docs are silent: the first segment of a path names a twin property case-insensitively (the docs
write ``SELECT DeviceID, LastActivityTime``), deeper segments (tags and properties) are case-sensitive; a projected
path is named by its last segment unless aliased; an undefined projected value is left out of the row; rows of a
``GROUP BY`` come in one page, ordered by group value.

Refusals (a malformed query, an unknown function, ``FROM devices.jobs``, GROUP BY on modules...) are
400 / 400004 ``ArgumentInvalid`` with a message that says what is wrong. Unverified: the service's exact error code
for a query it refuses is not published; 400004 is the closest documented code (DOC-ERR) and what the emulator
answered before, so clients reading the HTTP status (400) behave the same.

Besides evaluating, this module derives ``Filter`` trees from the WHERE clause: conditions the store can answer
from its index (``store.py``), so that a page costs the page, not the registry. The filter is always a superset of
the condition: every row it lets through is checked again here with the full semantics.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lark import Lark, Token, Transformer, Tree, UnexpectedEOF, UnexpectedInput, UnexpectedToken, v_args
from lark.exceptions import VisitError

from .errors import ApiError

_GRAMMAR = r"""
?start: query
query: "SELECT"i top? select_list "FROM"i collection where? group_by?
top: "TOP"i NUMBER
select_list: "*"                                   -> select_all
           | projection ("," projection)*          -> select_items
projection: expr ("AS"i NAME)?
collection: NAME ("." NAME)?
where: "WHERE"i expr
group_by: "GROUP"i "BY"i path ("," path)*

?expr: or_expr
?or_expr: and_expr
        | or_expr "OR"i and_expr                   -> or_
?and_expr: not_expr
         | and_expr "AND"i not_expr                -> and_
?not_expr: "NOT"i not_expr                         -> not_
         | comparison
?comparison: sum
           | sum COMP_OP sum                       -> compare
           | sum "IN"i array                       -> in_
           | sum "NIN"i array                      -> nin
?sum: product
    | sum ADD_OP product                           -> arith
?product: unary
        | product MUL_OP unary                     -> arith
?unary: "-" unary                                  -> neg
      | atom
?atom: constant
     | path
     | NAME "(" [expr ("," expr)*] ")"             -> call
     | "(" expr ")"
     | array
array: "[" [item ("," item)*] "]"
?item: constant
     | "-" NUMBER                                  -> negative
path: NAME ("." NAME)*
constant: STRING                                   -> string
        | HEX                                      -> hex
        | NUMBER                                   -> number
        | "true"i                                  -> true
        | "false"i                                 -> false
        | "null"i                                  -> null
        | "undefined"i                             -> undefined

COMP_OP: "<=" | ">=" | "!=" | "<>" | "=" | "<" | ">"
ADD_OP: "+" | "-"
MUL_OP: "*" | "/" | "%"
HEX.2: /0x[0-9a-fA-F]+/
NUMBER: /\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?/
STRING: /'(\\.|[^'\\])*'|"(\\.|[^"\\])*"/
NAME: /[A-Za-z_$][A-Za-z0-9_$]*/
%import common.WS
%ignore WS
"""

_PARSER = Lark(_GRAMMAR, parser="lalr", maybe_placeholders=False)
# Request threads share the parser; lark does not document a parser instance as thread-safe, and a parse takes
# well under a millisecond, so one at a time.
_PARSE_LOCK = threading.Lock()


class _Undefined:
    """The query language's ``undefined``: a missing property, or an operation on mismatched types."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()

# Twin properties by lower-cased name: the first segment of a path is matched case-insensitively (inferred).
_TOP_LEVEL = {
    n.lower(): n
    for n in (
        "deviceId",
        "moduleId",
        "etag",
        "deviceEtag",
        "status",
        "statusReason",
        "statusUpdateTime",
        "connectionState",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "authenticationType",
        "x509Thumbprint",
        "version",
        "tags",
        "properties",
        "capabilities",
        "deviceScope",
        "parentScopes",
    )
}
_FUNCTIONS = {
    "is_defined": "is_defined",
    "startswith": "startswith",
    "starts_with": "startswith",
    "endswith": "endswith",
    "ends_with": "endswith",
}
AGGREGATES = ("count", "avg", "sum", "min", "max")


def _refuse(message: str) -> ApiError:
    return ApiError(400004, message)


# --- the syntax tree ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const:
    value: Any


@dataclass(frozen=True, slots=True)
class Path:
    parts: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # a key of _FUNCTIONS' values, or an aggregate
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Op:
    op: str  # = != < > <= >= + - * / % and or not in nin neg
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Projection:
    expr: Path | Call
    alias: str


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query. ``select`` is None for ``SELECT *``."""

    collection: str  # "devices" or "devices.modules"
    select: tuple[Projection, ...] | None
    where: Any | None
    group_by: tuple[Path, ...] = ()
    top: int | None = None
    aggregate: bool = field(default=False)

    def matches(self, doc: dict[str, Any]) -> bool:
        return self.where is None or evaluate(self.where, doc) is True

    def project(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self.select is None:
            return doc
        out: dict[str, Any] = {}
        for p in self.select:
            value = evaluate(p.expr, doc)
            if value is not UNDEFINED:
                out[p.alias] = value
        return out

    def aggregate_rows(self, docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per group (one row in all without GROUP BY) of the matching ``docs``."""
        assert self.select is not None
        groups: dict[str, tuple[tuple[Any, ...], list[_Acc]]] = {}
        for doc in docs:
            key_values = tuple(evaluate(g, doc) for g in self.group_by)
            key = json.dumps([None if v is UNDEFINED else v for v in key_values], sort_keys=True) + "".join(
                "u" if v is UNDEFINED else "d" for v in key_values
            )
            entry = groups.get(key)
            if entry is None:
                entry = groups[key] = (key_values, [_Acc(p.expr) for p in self.select if isinstance(p.expr, Call)])
            for acc in entry[1]:
                acc.add(doc)
        if not groups and not self.group_by:
            groups[""] = ((), [_Acc(p.expr) for p in self.select if isinstance(p.expr, Call)])
        rows = []
        for _, (key_values, accs) in sorted(groups.items()):
            by_group = dict(zip(self.group_by, key_values, strict=True))
            it = iter(accs)
            row: dict[str, Any] = {}
            for p in self.select:
                value = next(it).result() if isinstance(p.expr, Call) else by_group[p.expr]
                if value is not UNDEFINED:
                    row[p.alias] = value
            rows.append(row)
        return rows

    def filter(self) -> Filter | None:
        """What the store's index can answer of WHERE (a superset of it), or None to read every twin."""
        return None if self.where is None else _filter(self.where)


class _Acc:
    """One aggregate over a group: COUNT() counts twins; AVG/SUM/MIN/MAX take the numbers (MIN/MAX also
    strings) among the values, ignoring the rest (as Cosmos DB's aggregates do; inferred)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.count = 0
        self.values: list[Any] = []

    def add(self, doc: dict[str, Any]) -> None:
        self.count += 1
        if self.call.args:
            v = evaluate(self.call.args[0], doc)
            if _kind(v) in ("number", "string"):
                self.values.append(v)

    def result(self) -> Any:
        name = self.call.name
        if name == "count":
            return self.count
        numbers = [v for v in self.values if _kind(v) == "number"]
        if name == "sum":
            return sum(numbers) if numbers else UNDEFINED
        if name == "avg":
            return sum(numbers) / len(numbers) if numbers else UNDEFINED
        pool = numbers or [v for v in self.values if isinstance(v, str)]
        if not pool:
            return UNDEFINED
        return min(pool) if name == "min" else max(pool)


# --- parsing --------------------------------------------------------------------------------------------


def _unescape(text: str) -> str:
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in "'\"\\/":
            out.append(nxt)
            i += 2
        elif nxt == "u" and all(h in "0123456789abcdefABCDEF" for h in body[i + 2 : i + 6]) and len(body) >= i + 6:
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise _refuse(f"Invalid escape sequence '\\{nxt}' in string literal {text}.")
    return "".join(out)


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and not any(c in text for c in ".eE") else value


@v_args(inline=True)
class _Build(Transformer[Token, Any]):
    def string(self, tok: Token) -> Const:
        return Const(_unescape(str(tok)))

    def hex(self, tok: Token) -> Const:
        return Const(int(str(tok), 16))

    def number(self, tok: Token) -> Const:
        return Const(_number(str(tok)))

    def negative(self, tok: Token) -> Const:
        return Const(-_number(str(tok)))

    def true(self) -> Const:
        return Const(True)

    def false(self) -> Const:
        return Const(False)

    def null(self) -> Const:
        return Const(None)

    def undefined(self) -> Const:
        return Const(UNDEFINED)

    def array(self, *items: Const | None) -> Const:
        return Const([i.value for i in items if i is not None])

    def path(self, *names: Token) -> Path:
        return Path(tuple(str(n) for n in names))

    def call(self, name: Token, *args: Any) -> Call:
        return Call(str(name).lower(), tuple(a for a in args if a is not None))

    def compare(self, left: Any, op: Token, right: Any) -> Op:
        return Op("!=" if str(op) == "<>" else str(op), (left, right))

    def arith(self, left: Any, op: Token, right: Any) -> Op:
        return Op(str(op), (left, right))

    def neg(self, x: Any) -> Op:
        return Op("neg", (x,))

    def in_(self, x: Any, values: Const) -> Op:
        return Op("in", (x, values))

    def nin(self, x: Any, values: Const) -> Op:
        return Op("nin", (x, values))

    def not_(self, x: Any) -> Op:
        return Op("not", (x,))

    def and_(self, *xs: Any) -> Op:
        return Op("and", xs)

    def or_(self, *xs: Any) -> Op:
        return Op("or", xs)


def _canonical(path: Path, collection: str) -> Path:
    """Drop the collection prefix the docs allow (``devices.modules.moduleId``) and fix the case of the twin
    property the path starts with."""
    parts = path.parts
    prefix = tuple(collection.split("."))
    if parts[: len(prefix)] == prefix and len(parts) > len(prefix):
        parts = parts[len(prefix) :]
    first = _TOP_LEVEL.get(parts[0].lower(), parts[0])
    if first == "properties" and len(parts) > 1 and parts[1].lower() in ("desired", "reported"):
        parts = (first, parts[1].lower(), *parts[2:])
    else:
        parts = (first, *parts[1:])
    return Path(parts)


def _check(node: Any, collection: str, *, aggregates: bool = False) -> Any:
    """Validate functions and canonicalize paths, bottom up."""
    if isinstance(node, Path):
        return _canonical(node, collection)
    if isinstance(node, Const):
        return node
    if isinstance(node, Call):
        if node.name in AGGREGATES:
            if not aggregates:
                raise _refuse(f"Aggregate {node.name.upper()}() is only allowed in the SELECT list.")
            if node.name == "count":
                if node.args:
                    raise _refuse("COUNT() takes no argument.")
            elif len(node.args) != 1 or not isinstance(node.args[0], Path):
                raise _refuse(f"{node.name.upper()}() takes one property path.")
            return Call(node.name, tuple(_check(a, collection) for a in node.args))
        fn = _FUNCTIONS.get(node.name)
        if fn is None:
            raise _refuse(
                f"Function '{node.name.upper()}' is not supported in twin queries "
                "(supported: IS_DEFINED, STARTSWITH, ENDSWITH)."
            )
        want = 1 if fn == "is_defined" else 2
        if len(node.args) != want:
            raise _refuse(f"{node.name.upper()} takes {want} argument{'s' if want > 1 else ''}.")
        if fn == "is_defined" and not isinstance(node.args[0], Path):
            raise _refuse("IS_DEFINED takes a property path.")
        return Call(fn, tuple(_check(a, collection) for a in node.args))
    assert isinstance(node, Op)
    return Op(node.op, tuple(_check(a, collection) for a in node.args))


def _syntax_error(text: str, exc: UnexpectedInput) -> str:
    near = text[exc.pos_in_stream : exc.pos_in_stream + 20] if exc.pos_in_stream is not None else ""
    return f"Syntax error in the query at line {exc.line}, column {exc.column}" + (f" near '{near}'." if near else ".")


def parse(text: Any) -> Query:
    """Parse a query string.

    Raises:
        ApiError: 400004 for a malformed query or one the hub refuses; the message says what and where.
    """
    if not isinstance(text, str) or not text.strip():
        raise _refuse('The request body must be {"query": "SELECT ... FROM devices ..."}.')
    try:
        with _PARSE_LOCK:
            tree = _PARSER.parse(text)
    except (UnexpectedEOF, UnexpectedToken) as exc:
        if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
            raise _refuse(_syntax_error(text, exc)) from None
        raise _refuse("Syntax error: the query ends too early (SELECT <list> FROM devices [WHERE ...]).") from None
    except UnexpectedInput as exc:
        near = text[exc.pos_in_stream : exc.pos_in_stream + 20] if exc.pos_in_stream is not None else ""
        at = f"line {exc.line}, column {exc.column}" if exc.line and exc.line > 0 else "the end"
        raise _refuse(f"Syntax error in the query at {at}" + (f" near '{near}'" if near else "") + ".") from None
    except ApiError:
        raise
    sections: dict[str, Tree[Token]] = {str(t.data): t for t in tree.children if isinstance(t, Tree)}
    top_node = sections.get("top")
    select_node = sections.get("select_items")
    coll_node = sections["collection"]
    where_node = sections.get("where")
    group_node = sections.get("group_by")
    build = _Build()

    def transform(node: Tree[Token] | Token) -> Any:
        try:
            return build.transform(node) if isinstance(node, Tree) else node
        except VisitError as exc:  # a refusal raised while building (a bad escape in a string)
            if isinstance(exc.orig_exc, ApiError):
                raise exc.orig_exc from None
            raise

    collection = ".".join(str(t) for t in coll_node.children).lower()
    if collection == "devices.jobs":
        raise _refuse("FROM devices.jobs is not available in this emulator (it runs no device jobs).")
    if collection not in ("devices", "devices.modules"):
        raise _refuse(f"Unknown collection '{collection}': use FROM devices or FROM devices.modules.")

    top: int | None = None
    if top_node is not None:
        top_value = _number(str(top_node.children[0]))
        if not isinstance(top_value, int) or top_value < 1:
            raise _refuse("TOP takes a positive whole number.")
        top = top_value
    where = _check(transform(where_node.children[0]), collection) if where_node is not None else None
    group_by = tuple(_canonical(transform(p), collection) for p in group_node.children) if group_node else ()

    select: tuple[Projection, ...] | None = None
    aggregate = False
    if select_node is not None:
        items = []
        for proj in select_node.children:
            assert isinstance(proj, Tree)
            expr = _check(transform(proj.children[0]), collection, aggregates=True)
            if not isinstance(expr, Path | Call) or (isinstance(expr, Call) and expr.name not in AGGREGATES):
                raise _refuse("SELECT takes '*', property paths or aggregates (COUNT(), AVG(p)...), each AS alias.")
            alias = str(proj.children[1]) if len(proj.children) > 1 else None
            if alias is None:
                if isinstance(expr, Call):
                    raise _refuse(f"Name the aggregate with AS: SELECT {expr.name.upper()}() AS name.")
                alias = expr.parts[-1]
            items.append(Projection(expr, alias))
        select = tuple(items)
        aggregate = any(isinstance(p.expr, Call) for p in select)
    if group_by and not aggregate:
        raise _refuse("GROUP BY needs an aggregate in SELECT, e.g. SELECT status, COUNT() AS n ... GROUP BY status.")
    if aggregate:
        assert select is not None
        if collection != "devices":
            raise _refuse("Aggregates and GROUP BY are supported only on device twins (FROM devices).")
        for p in select:
            if isinstance(p.expr, Path) and p.expr not in group_by:
                raise _refuse(f"'{p.expr.dotted}' must appear in GROUP BY to be selected with an aggregate.")
    return Query(collection, select, where, group_by, top, aggregate)


# --- evaluation -----------------------------------------------------------------------------------------


def _kind(v: Any) -> str:
    if v is UNDEFINED:
        return "undefined"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "object" if isinstance(v, dict) else "array"


def resolve(doc: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if not isinstance(doc, dict) or part not in doc:
            return UNDEFINED
        doc = doc[part]
    return doc


_PRIMITIVE = ("null", "bool", "number", "string")


def _equal(a: Any, b: Any) -> Any:
    ka, kb = _kind(a), _kind(b)
    if ka not in _PRIMITIVE or kb not in _PRIMITIVE or ka != kb:
        return UNDEFINED
    return a == b


def _order(op: str, a: Any, b: Any) -> Any:
    ka, kb = _kind(a), _kind(b)
    if ka != kb or ka not in ("number", "string"):
        return UNDEFINED
    if op == "<":
        return a < b
    if op == ">":
        return a > b
    if op == "<=":
        return a <= b
    return a >= b


def _arith(op: str, a: Any, b: Any) -> Any:
    if _kind(a) != "number" or _kind(b) != "number":
        return UNDEFINED
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        return math.fmod(a, b)
    except ZeroDivisionError:
        return UNDEFINED


def evaluate(node: Any, doc: dict[str, Any]) -> Any:
    """The value of an expression for one twin: a JSON value, or UNDEFINED."""
    if isinstance(node, Path):
        return resolve(doc, node.parts)
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Call):
        if node.name == "is_defined":
            return resolve(doc, node.args[0].parts) is not UNDEFINED
        x, s = (evaluate(a, doc) for a in node.args)
        if not isinstance(x, str) or not isinstance(s, str):
            return UNDEFINED
        return x.startswith(s) if node.name == "startswith" else x.endswith(s)
    op = node.op
    if op == "and":
        result: Any = True
        for a in node.args:
            v = evaluate(a, doc)
            if v is False:
                return False
            if v is not True:
                result = UNDEFINED
        return result
    if op == "or":
        result = False
        for a in node.args:
            v = evaluate(a, doc)
            if v is True:
                return True
            if v is not False:
                result = UNDEFINED
        return result
    if op == "not":
        v = evaluate(node.args[0], doc)
        return (not v) if isinstance(v, bool) else UNDEFINED
    if op == "neg":
        v = evaluate(node.args[0], doc)
        return -v if _kind(v) == "number" else UNDEFINED
    if op in ("in", "nin"):
        x = evaluate(node.args[0], doc)
        if _kind(x) not in _PRIMITIVE:
            return UNDEFINED
        found = any(_equal(x, c) is True for c in node.args[1].value)
        return found if op == "in" else not found
    a, b = evaluate(node.args[0], doc), evaluate(node.args[1], doc)
    if op == "=":
        return _equal(a, b)
    if op == "!=":
        eq = _equal(a, b)
        return (not eq) if isinstance(eq, bool) else UNDEFINED
    if op in ("<", ">", "<=", ">="):
        return _order(op, a, b)
    return _arith(op, a, b)


# --- what the store's index can answer ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cmp:
    """``path op value`` on an indexed path (``deviceId``, see ``indexed``); op is = != < <= > >=, prefix
    (STARTSWITH) or suffix (ENDSWITH). Only = is sought in the index; the others are checked on each row read."""

    path: str
    op: str
    value: str | int | float | bool


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Filter, ...]


Filter = Cmp | AllOf | AnyOf
INDEXED_FIELDS = ("status", "connectionState")
INDEXED_SECTIONS = ("tags.", "properties.desired.", "properties.reported.")


def indexed(path: str) -> bool:
    """Paths the store indexes for device twins: the id, status, connection state, and the leaves of tags and
    desired and reported properties (not the ``$metadata``/``$version`` the twin shows)."""
    if path == "deviceId" or path in INDEXED_FIELDS:
        return True
    return path.startswith(INDEXED_SECTIONS) and "$" not in path


_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!="}


def _indexable_value(v: Any) -> bool:
    return _kind(v) in ("bool", "number", "string") and not (isinstance(v, float) and not math.isfinite(v))


def _filter(node: Any) -> Filter | None:
    if isinstance(node, Op):
        if node.op == "and":
            parts = tuple(f for f in (_filter(a) for a in node.args) if f is not None)
            return None if not parts else parts[0] if len(parts) == 1 else AllOf(parts)
        if node.op == "or":
            subs = [_filter(a) for a in node.args]
            if any(f is None for f in subs):
                return None
            return AnyOf(tuple(f for f in subs if f is not None))
        if node.op in _FLIP:
            left, right = node.args
            op = node.op
            if isinstance(left, Const) and isinstance(right, Path):
                left, right, op = right, left, _FLIP[op]
            if (
                isinstance(left, Path)
                and isinstance(right, Const)
                and indexed(left.dotted)
                and _indexable_value(right.value)
                and (op in ("=", "!=") or _kind(right.value) in ("number", "string"))
            ):
                return Cmp(left.dotted, op, right.value)
            return None
        if node.op == "in":
            x, values = node.args
            # Every value must be one the index holds (`IN [null]` selects twins whose value is null).
            if isinstance(x, Path) and indexed(x.dotted) and all(_indexable_value(v) for v in values.value):
                return AnyOf(tuple(Cmp(x.dotted, "=", v) for v in values.value))
        return None
    if isinstance(node, Call) and node.name in ("startswith", "endswith"):
        x, s = node.args
        if isinstance(x, Path) and isinstance(s, Const) and isinstance(s.value, str) and indexed(x.dotted):
            return Cmp(x.dotted, "prefix" if node.name == "startswith" else "suffix", s.value)
    return None


def _equalities(f: Filter) -> list[Cmp] | None:
    """The equality terms whose union contains ``f``'s matches (to seek in the index), or None."""
    if isinstance(f, Cmp):
        return [f] if f.op == "=" else None
    if isinstance(f, AnyOf):
        out: list[Cmp] = []
        for p in f.parts:
            sub = _equalities(p)
            if sub is None:
                return None
            out.extend(sub)
        return out
    best: list[Cmp] | None = None
    for p in f.parts:
        sub = _equalities(p)
        if sub is not None and (best is None or len(sub) < len(best)):
            best = sub
    return best


def seek_terms(f: Filter | None) -> list[Cmp] | None:
    """Equalities to read from the index, in id order, instead of walking every twin (None: walk)."""
    return None if f is None else _equalities(f)


Evaluator = Callable[[dict[str, Any]], bool]
