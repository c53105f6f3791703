"""`calculator`: arithmetic on numbers, evaluated by walking the `ast` of the expression (never
`eval`): + - * / // % **, unary minus and plus, parentheses; nothing else parses."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from callisto.services.orchestration.tools.errors import ToolInputError
from callisto.services.orchestration.tools.registry import ToolContext, ToolResult, ToolSpec

MAX_EXPRESSION = 200
# Largest |exponent| of `**`, and largest magnitude of any value along the way: big enough for
# any money or unit sum, small enough that no step can take long or eat memory.
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "expression": {
            "type": "string",
            "description": (
                "An arithmetic expression of numbers only, e.g. '290 * 1450 * 0.85' or "
                "'(12 + 30) / 7'. Operators: + - * / // % ** and parentheses."
            ),
            "minLength": 1,
            "maxLength": MAX_EXPRESSION,
            # Digits, decimal points, exponents (1e6), operators, parentheses and spaces.
            "pattern": r"^[0-9eE.+\-*/%() ]+$",
        }
    },
    "required": ["expression"],
    "additionalProperties": False,
}


def evaluate(expression: str) -> Number:
    """The value of `expression`; ToolInputError saying why when it is not plain arithmetic or
    leaves the bounds."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):
        raise ToolInputError(f"not an arithmetic expression: {expression!r}") from None
    return _checked(_value(tree.body))


def _value(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolInputError("only numbers are allowed")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_value(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            result: Number = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolInputError("division by zero") from None
        except OverflowError:
            raise ToolInputError(f"result larger than {MAX_MAGNITUDE:g}") from None
        if isinstance(result, complex):
            raise ToolInputError("the result is not a real number")
        return _checked(result)
    raise ToolInputError("only numbers, + - * / // % ** and parentheses are allowed")


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolInputError(f"exponent larger than {MAX_EXPONENT}")
    # Refuse before computing: |base|**exponent past the bound would be slow for ints.
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > 100:
        raise ToolInputError(f"result larger than {MAX_MAGNITUDE:g}")
    if base == 0 and exponent < 0:
        raise ToolInputError("division by zero")


def _checked(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolInputError(f"result larger than {MAX_MAGNITUDE:g}")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolInputError(f"result larger than {MAX_MAGNITUDE:g}")
    return value


def _shown(value: Number) -> Number:
    """Floats rounded to 12 significant digits (0.1 + 0.2 is 0.3), whole ones as ints."""
    if isinstance(value, int):
        return value
    rounded = float(f"{value:.12g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded


async def calculate(arguments: dict[str, Any], _context: ToolContext) -> ToolResult:
    expression = str(arguments["expression"])
    result = _shown(evaluate(expression))
    return ToolResult(
        data={"expression": expression, "result": result}, summary=f"{expression} = {result}"
    )


SPEC = ToolSpec(
    name="calculator",
    description=(
        "Computes an arithmetic expression exactly. Use it for any sum, product, percentage, "
        "discount, unit count or price total instead of working numbers out yourself."
    ),
    parameters=PARAMETERS,
    handler=calculate,
    timeout_s=1.0,
)
