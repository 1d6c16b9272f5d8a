"""Policy globs mean what fnmatch says they mean, case-folded, whatever their shape.

rules.py compiles a rule's globs by shape (exact names, "prefix*", "*suffix", a regex for the
rest) so that most matches are one C call; fnmatch over the case-folded pattern and model is
the reference those shortcuts must agree with. A suffix glob that matched every model, say,
would turn an Allow on "*-mini" into an Allow on everything.
"""

from __future__ import annotations

import fnmatch

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.policies import APP, allow, deny, index, policy

# Pieces of model-name globs, mixed case: plain characters and every glob construct.
PIECES = ["a", "B", "4", "-", ".", "*", "*", "?", "[ab]", "[!a]", "[A-B]"]
bodies = st.text(alphabet="aB4-.", min_size=1, max_size=4)
# Every shape rules.py compiles differently is drawn on purpose (a shape left to chance can be
# missed for a whole run), then free mixtures of the pieces.
patterns = st.one_of(
    st.just("*"),
    bodies,  # an exact name
    bodies.map(lambda b: b + "*"),  # a prefix
    bodies.map(lambda b: "*" + b),  # a suffix
    bodies.map(lambda b: "*" + b + "*"),  # stars on both sides: neither prefix nor suffix
    bodies.map(lambda b: b + "**"),
    bodies.map(lambda b: "**" + b),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join),
)
# Model names: the same letters, plus ones whose case-folding is not ASCII lower-casing
# ("ß" folds to "ss", the Kelvin sign to "k").
free_models = st.text(alphabet="aAbB4-.sS\u00df\u212ak", max_size=8)


@st.composite
def model_for(draw: st.DrawFn, glob: str) -> str:
    """A model name the glob matches (mostly): each construct replaced by what it stands for."""
    out = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append(draw(st.text(alphabet="aAbB4-.", max_size=4)))
        elif char == "?":
            out.append(draw(st.sampled_from("aAb4-")))
        elif char == "[":
            end = glob.index("]", i)
            out.append(draw(st.sampled_from("aAbB")))
            i = end
        else:
            out.append(draw(st.sampled_from([char, char.swapcase()])))
        i += 1
    return "".join(out)


@st.composite
def globs_and_models(draw: st.DrawFn) -> tuple[list[str], str]:
    globs = draw(st.lists(patterns, min_size=1, max_size=3))
    model = draw(free_models | st.sampled_from(globs).flatmap(model_for))
    return globs, model


def reference(model: str, globs: list[str]) -> list[str]:
    return [g for g in globs if fnmatch.fnmatchcase(model.casefold(), g.casefold())]


@settings(max_examples=600, deadline=None)
@given(globs_and_models())
@example((["*-mini"], "gpt-4o"))  # a suffix glob
@example((["gpt-4o*"], "GPT-4O-Mini"))  # a prefix glob, another case
@example((["*a*"], "ab"))  # stars on both sides
@example((["a**"], "ab"))
@example((["**a"], "ba"))
@example((["ss"], "\u00df"))  # case-folding: "ß" is "ss"
def test_a_rule_matches_exactly_what_fnmatch_matches(case: tuple[list[str], str]) -> None:
    globs, model = case
    expected = reference(model, globs)

    allowed = index(policy("p", rules=[allow(*globs)])).decide(APP, model, "chat", explain=True)
    assert allowed.allowed == bool(expected)
    # explain names the first glob of the rule that matches
    assert [m.pattern for m in allowed.matches] == expected[:1]

    denied = index(policy("p", rules=[allow("*"), deny(*globs)])).decide(APP, model, "chat")
    assert denied.allowed == (not expected)


def test_suffix_and_prefix_globs_do_not_match_everything() -> None:
    """The examples of the mutation report, spelled out (the property finds them as well)."""
    policies = index(policy("p", rules=[allow("*-mini", "*-preview", "claude-*")]))
    assert policies.decide(APP, "GPT-4o-Mini", "chat").allowed
    assert policies.decide(APP, "claude-3-opus", "chat").allowed
    for model in ("gpt-4o", "o1-previewer", "xclaude-3"):
        assert not policies.decide(APP, model, "chat").allowed, model
