"""The README's `boxinst` table and every flag the README names, against the command's own parser
(built in process: `boxinst --help` and every `boxinst VERB --help` print what it holds).

- Every verb of `boxinst --help` has a row in the table, and every row's verb exists.
- A flag inside a `boxinst VERB ...` command (a table row's first cell, an inline code span, a line
  of a code block) or elsewhere in a table row must be a flag of that VERB.
- Any other flag the README names must be a flag of some verb (or of `boxinst` itself), unless it
  belongs to another tool (OTHER_TOOLS).
So the test fails when a verb or a documented flag disappears, or when the README names one that
does not exist."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from boxinst_serve.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
FLAG = re.compile(r"--[a-z][a-z0-9_-]*[a-z0-9]")
COMMAND = re.compile(r"\bboxinst ((?:-v )?)([a-z][a-z-]*)")
ROW = re.compile(r"^\| `boxinst ([a-z][a-z-]*)")
# Flags of other programs that the README names: torchrun's.
OTHER_TOOLS = {"--nproc_per_node"}


def _parsers() -> tuple[set[str], dict[str, set[str]]]:
    """(the top-level flags, {verb: its flags})."""
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    top = {o for a in parser._actions for o in a.option_strings}
    return top, {verb: {o for a in p._actions for o in a.option_strings} for verb, p in sub.choices.items()}


TOP, VERBS = _parsers()


def _lines() -> list[tuple[str, bool]]:
    """README lines (backslash continuations joined), each with whether it is inside a code block."""
    out, in_block, pending = [], False, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block and line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((pending + line, in_block))
        pending = ""
    return out


def _command_flags(text: str) -> list[tuple[str, str]]:
    """(verb, flag) for each flag after a `boxinst VERB` in `text` (up to the next command)."""
    found = []
    matches = list(COMMAND.finditer(text))
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        found += [(m.group(2), f) for f in FLAG.findall(text[m.end():end])]
    return found


def _claims() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """([(verb, flag, where)]: flags that must be the verb's, [(flag, where)]: flags that must be some verb's)."""
    of_verb, of_any = [], []
    for line, in_block in _lines():
        row = ROW.match(line)
        if in_block:
            if COMMAND.search(line):
                of_verb += [(v, f, line) for v, f in _command_flags(line)]
            elif not re.search(r"\b(python3?|torchrun|pip|docker|bash|ray|make)\b", line):
                of_any += [(f, line) for f in FLAG.findall(line)]
            continue
        spans = re.findall(r"`([^`]*)`", line)
        for span in spans:
            if COMMAND.search(span):
                of_verb += [(v, f, span) for v, f in _command_flags(span)]
            elif row:  # a flag in a row's description is the row's verb's
                of_verb += [(row.group(1), f, span) for f in FLAG.findall(span)]
            else:
                of_any += [(f, span) for f in FLAG.findall(span)]
        bare = re.sub(r"`[^`]*`", "", line)  # flags written outside code spans
        of_any += [(f, line) for f in FLAG.findall(bare)]
    return of_verb, of_any


def test_every_verb_has_a_row_and_every_row_is_a_verb():
    rows = {m.group(1) for line, _ in _lines() if (m := ROW.match(line))}
    assert rows, "the README has no `boxinst VERB` table any more"
    assert sorted(set(VERBS) - rows) == [], "verbs of `boxinst --help` missing from the README's table"
    assert sorted(rows - set(VERBS)) == [], "README rows for verbs that `boxinst` does not have"


def test_every_flag_the_readme_gives_a_verb_is_that_verbs():
    of_verb, _ = _claims()
    assert len(of_verb) > 100  # the table and the examples were read
    wrong = sorted({(v, f, where[:80]) for v, f, where in of_verb
                    if v in VERBS and f not in VERBS[v] | TOP and f not in OTHER_TOOLS})
    unknown = sorted({v for v, _, _ in of_verb} - set(VERBS))
    assert not wrong, f"README flags that their verb's parser does not have: {wrong}"
    assert not unknown, f"README commands of verbs that do not exist: {unknown}"


def test_every_other_flag_the_readme_names_exists():
    _, of_any = _claims()
    every = set().union(TOP, *VERBS.values())
    missing = sorted({(f, where[:80]) for f, where in of_any if f not in every and f not in OTHER_TOOLS})
    assert not missing, f"README flags that no verb has: {missing}"


@pytest.mark.parametrize("verb,flag", [("train", "--resume-if-exists"), ("train", "--device"),
                                       ("segment", "--score-thresh"), ("bench", "--soak"), ("export", "--max-batch"),
                                       ("export", "--calibration-image-dir"), ("video", "--threads")])
def test_the_flags_users_need_are_in_their_verbs_row(verb, flag):
    """The issue's list of flags missing from the table: each in its verb's row."""
    rows = [line for line, _ in _lines() if (m := ROW.match(line)) and m.group(1) == verb]
    assert any(flag in r for r in rows), f"{flag} is not in a `boxinst {verb}` row of the README"


def test_the_check_catches_a_flag_that_is_not_the_verbs():
    """The parsing itself: a flag of another verb after `boxinst VERB` is attributed to VERB."""
    assert _command_flags("boxinst segment x --soak 5 and `boxinst bench --soak 5`") == [("segment", "--soak"),
                                                                                       ("bench", "--soak")]
    assert "--soak" not in VERBS["segment"] and "--soak" in VERBS["bench"]
