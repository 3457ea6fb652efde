"""Math answer checking shared by evaluation and step-controlled DPO data: ToRA-style extraction, then equality."""
from __future__ import annotations

import math
import re

import sympy
from sympy.parsing.sympy_parser import implicit_multiplication, parse_expr, standard_transformations

_TRANSFORMS = standard_transformations + (implicit_multiplication,)
_NUM = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
_SYMBOLIC_MAX_CHARS = 200
_MAX_EXPONENT = 10_000


def _braced(s: str, i: int) -> int | None:
    """Index just past the brace that closes the one opening at s[i], or None if it never closes."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return j + 1
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...} (brace-balanced), or the token after `\\boxed `."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)", text))):
        if text.startswith("{", m.end()):
            end = _braced(text, m.end())
            if end is not None:
                return text[m.end() + 1:end - 1].strip()
        elif token := re.match(r" +([^\s$]+)", text[m.end():]):
            return token[1].rstrip(".")
    return None


def _after_last(text: str, marker: str) -> str | None:
    """The rest of the line after the last `marker`, without ':', a sentence end, '$' wrappers or a final '.'."""
    if marker not in text:
        return None
    line = text.rsplit(marker, 1)[1].lstrip(" \t\n:").split("\n")[0]
    answer = re.split(r"\.\s", line)[0].strip().rstrip(".").strip().strip("$").strip()
    return answer or None


def extract_answer(text: str) -> str | None:
    """The model's final answer (ToRA rules, first that matches wins), or None when there is none."""
    minerva = re.findall(r"final answer is \$([^$]*)\$\. I hope", text)
    if minerva:
        return minerva[-1].strip()
    for found in (_last_boxed(text), _after_last(text, "he answer is"), _after_last(text, "final answer is")):
        if found is not None:
            return found
    numbers = re.findall(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", text)
    return numbers[-1].replace(",", "") if numbers else None


def gsm8k_truth(solution: str) -> str:
    """The reference answer of a GSM8K solution: the text after the last '####', without commas."""
    if "####" not in solution:
        raise ValueError(f"GSM8K solution has no '####' answer line: {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def _rewrite(s: str, frac: str, sqrt: str, group: str) -> str:
    """Rewrite \\frac, \\sqrt (one-token or braced arguments) and {groups} with the given %-templates.

    Raises ValueError on an unclosed brace or a missing argument.
    """
    out, i = [], 0

    def argument(i: int) -> tuple[str, int]:
        while i < len(s) and s[i] == " ":
            i += 1
        if i >= len(s):
            raise ValueError(f"missing argument in {s!r}")
        if s[i] != "{":
            return s[i], i + 1
        end = _braced(s, i)
        if end is None:
            raise ValueError(f"unbalanced braces in {s!r}")
        return _rewrite(s[i + 1:end - 1], frac, sqrt, group), end

    while i < len(s):
        command = re.match(r"\\(frac|sqrt)(?![a-zA-Z\[])", s[i:])
        if command and command[1] == "frac":
            numerator, i = argument(i + command.end())
            denominator, i = argument(i)
            out.append(frac % (numerator, denominator))
        elif command:
            radicand, i = argument(i + command.end())
            out.append(sqrt % radicand)
        elif s[i] == "{":
            inner, i = argument(i)
            out.append(group % inner)
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def normalize_answer(s: str) -> str:
    """Canonical string form of an answer (MATH/ToRA-style stripping of LaTeX decoration)."""
    s = s.strip().replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\\[!,;]|\^\{?\\circ\}?|\\?%", "", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"(?<=[a-zA-Z])\s+(?=[a-zA-Z])", " ", s)
    s = re.sub(r"(?<![a-zA-Z])\s+|\s+(?![a-zA-Z])", "", s).rstrip(".")
    s = re.sub(r"^[a-zA-Z]=(?!=)", "", s)
    s = re.sub(r"^\(([A-Z])\)$", r"\1", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    try:
        return _rewrite(s, "\\frac{%s}{%s}", "\\sqrt{%s}", "{%s}")
    except ValueError:
        return s


def _number(s: str) -> float | None:
    """Value of a normalised integer, decimal, a/b or \\frac{a}{b}; None for anything else."""
    if re.fullmatch(_NUM, s):
        return float(s)
    parts = re.fullmatch(rf"({_NUM})/({_NUM})", s) or re.fullmatch(rf"(-?)\\frac\{{({_NUM})\}}\{{({_NUM})\}}", s)
    if not parts:
        return None
    *sign, numerator, denominator = parts.groups()
    if float(denominator) == 0:
        return None
    return (-1 if sign == ["-"] else 1) * float(numerator) / float(denominator)


def _bounded(expr: sympy.Basic, scale: float = 1.0) -> bool:
    """Whether no chain of constant exponents in an unevaluated expression multiplies past _MAX_EXPONENT."""
    if expr.is_Pow and not expr.exp.free_symbols:
        scale *= abs(float(expr.exp))
        if not scale <= _MAX_EXPONENT:
            return False
    return all(_bounded(arg, scale) for arg in expr.args)


def _to_sympy(s: str) -> sympy.Expr | None:
    """A sympy expression for a short normalised LaTeX answer built from numbers, letters, + - * / ^, sqrt and pi.

    Anything else (or anything too long or with huge powers) is None; the string reaching parse_expr is
    restricted to characters and names that cannot call or reach anything but sqrt, pi and symbols.
    """
    if len(s) > _SYMBOLIC_MAX_CHARS:
        return None
    s = re.sub(r"\\(?:cdot|times)(?![a-zA-Z])", "*", s).replace("\\pi", " pi ")
    s = _rewrite(s, "((%s)/(%s))", "sqrt(%s)", "(%s)").replace("^", "**")
    s = re.sub(r"[a-zA-Z]+", lambda m: m[0] if m[0] in ("sqrt", "pi") else " ".join(m[0]), s)
    if not re.fullmatch(r"[0-9a-z+\-*/(). ]+", s) or re.search(r"\.(?!\d)", s):
        return None
    if not _bounded(parse_expr(s, transformations=_TRANSFORMS, evaluate=False)):
        return None
    return parse_expr(s, transformations=_TRANSFORMS)


def _symbolic_equal(a: str, b: str) -> bool:
    """sympy.simplify(a - b) == 0 for two normalised answers; any failure counts as not equal."""
    try:
        x, y = _to_sympy(a), _to_sympy(b)
        return x is not None and y is not None and sympy.simplify(x - y) == 0
    except Exception:  # a model's answer may break sympy in any way; that is "not equal"
        return False


def answers_equal(pred: str | None, truth: str) -> bool:
    """Whether a predicted answer equals the reference: same normal form, same number (rel 1e-4), or same expression."""
    if pred is None:
        return False
    p, t = normalize_answer(pred), normalize_answer(truth)
    if p == t:
        return True
    x, y = _number(p), _number(t)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=1e-4)
    return _symbolic_equal(p, t)


def check(text: str, truth: str) -> tuple[str | None, bool]:
    """(extracted answer, whether it equals `truth`) for one model output."""
    extracted = extract_answer(text)
    return extracted, answers_equal(extracted, truth)
