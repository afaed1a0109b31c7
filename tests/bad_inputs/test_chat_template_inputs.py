"""Bad input at the chat-template boundary: hostile templates (endless loops, recursion, huge values, escapes) and
messages of the wrong shape. Every failure is a `ChatTemplateError` naming the template (its file, or the setting
it came from) and what went wrong; templates that could hang run in a subprocess with a timeout, so a regression
cannot hang CI."""

from __future__ import annotations

import json
import shutil
import textwrap
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from phikit.tokenizer.chat_template import ChatTemplateError, render_chat
from phikit.tokenizer.tokenization import AutoTokenizer, PhiTokenizer
from tests.bad_inputs.harness import TOKENIZERS, Case, expect_clear_error, params, require_tokenizers, run_isolated

MSGS = [{"role": "user", "content": "hi"}]
ORIGIN = "the chat template"
TIME = "time limit"
SIZE = "MAX_OUTPUT_CHARS"


@lru_cache(maxsize=None)
def _phi3() -> PhiTokenizer:
    return AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini")


@pytest.fixture
def ctx() -> PhiTokenizer:
    require_tokenizers()
    return _phi3()


def tpl(source: str, seconds: float = 2.0):
    """Render `source` on a one-message chat with a short time bound."""
    return lambda tok: render_chat(source, [MSGS], max_seconds=seconds)


def chat(conversation: Any, **kwargs: Any):
    return lambda tok: tok.apply_chat_template(conversation, tokenize=False, **kwargs)


BIG = "{% set s = 'x' * 1000000 %}"
# one list held 100000 times: small in memory, but its text (and comparing it) is 10**10 items
SHARED = ("{% set l = range(100000)|list %}{% set l2 = range(100000)|list %}{% set a = [l] * 100000 %}"
          "{% set b = [l2] * 100000 %}")
TEMPLATE_CASES = [
    Case("mul-str-huge", tpl("{{ 'x' * 10**11 }}"), ChatTemplateError, (ORIGIN, SIZE, "100000000000")),
    Case("mul-str-chain", tpl("{{ 'x' * 100000 * 100000 }}"), ChatTemplateError, (SIZE,)),
    Case("mul-list", tpl("{{ ([1] * 100000) * 100000 }}"), ChatTemplateError, (SIZE, "list")),
    Case("mul-int-pow", tpl("{{ 7 ** 10000000 }}"), ChatTemplateError, ("MAX_INT_BITS",)),
    Case("mul-int-growth", tpl("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
                               "{% endfor %}{{ ns.n }}"), ChatTemplateError, ("MAX_INT_BITS",)),
    Case("plus-doubling", tpl("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                              "{% endfor %}"), ChatTemplateError, (SIZE,)),
    Case("concat-doubling", tpl("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                                "{% endfor %}"), ChatTemplateError, (SIZE,)),
    Case("range-over-cap", tpl("{{ range(10**9)|list|length }}"), ChatTemplateError, ("range()", "100000")),
    Case("range-bad-args", tpl("{{ range('a') }}"), ChatTemplateError, (ORIGIN, "TypeError")),
    Case("recursive-macro", tpl("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}"), ChatTemplateError,
         ("recursed too deeply",)),
    Case("recursive-loop", tpl("{% for m in messages recursive %}{{ loop([m]) }}{% endfor %}"), ChatTemplateError,
         ("recursed too deeply",)),
    Case("filter-center", tpl("{{ 'x'|center(10**10) }}"), ChatTemplateError, ("center", SIZE)),
    Case("method-center", tpl("{{ 'x'.center(10**10) }}"), ChatTemplateError, ("str.center()", SIZE)),
    Case("method-ljust", tpl("{{ 'x'.ljust(10**10) }}"), ChatTemplateError, ("str.ljust()",)),
    Case("method-zfill", tpl("{{ '1'.zfill(10**10) }}"), ChatTemplateError, ("str.zfill()",)),
    Case("method-expandtabs", tpl("{{ ('\\t' * 100000).expandtabs(100000) }}"), ChatTemplateError, ("expandtabs",)),
    Case("method-translate", tpl("{{ ('a' * 100000).translate({97: 'x' * 100000}) }}"), ChatTemplateError,
         ("translate",)),
    Case("filter-indent", tpl("{{ ('x\\n' * 1000000)|indent(1000) }}"), ChatTemplateError, ("indent",)),
    Case("filter-indent-str", tpl("{{ ('x\\n' * 1000000)|indent('y' * 1000) }}"), ChatTemplateError, ("indent",)),
    Case("filter-format-width", tpl("{{ '%1000000000d'|format(5) }}"), ChatTemplateError, ("%-formatted",)),
    Case("percent-star-width", tpl("{{ '%*d' % (1000000000, 5) }}"), ChatTemplateError, ("%-formatted",)),
    Case("percent-precision", tpl("{{ '%.1000000000f' % 1.5 }}"), ChatTemplateError, ("%-formatted",)),
    Case("str-format-width", tpl("{{ '{:>1000000000}'.format(5) }}"), ChatTemplateError, ("formatted",)),
    Case("str-format-nested", tpl("{{ '{:>{w}}'.format(5, w=1000000000) }}"), ChatTemplateError, ("formatted",)),
    Case("str-format-map", tpl("{{ '{a:>1000000000}'.format_map({'a': 1}) }}"), ChatTemplateError, ("formatted",)),
    Case("filter-join", tpl(BIG + "{{ ([s] * 100000)|join }}"), ChatTemplateError, ("join", SIZE)),
    Case("method-join", tpl(BIG + "{{ ''.join([s] * 100000) }}"), ChatTemplateError, ("joined", SIZE)),
    Case("filter-replace", tpl("{% set s = 'x' * 10000 %}{{ s|replace('x', s) }}"), ChatTemplateError, ("replaced",)),
    Case("method-replace", tpl("{% set s = 'x' * 10000 %}{{ s.replace('x', s) }}"), ChatTemplateError, ("replaced",)),
    Case("filter-wordwrap", tpl("{{ ('x ' * 1000000)|wordwrap(1, wrapstring='y' * 100000) }}"), ChatTemplateError,
         ("wordwrap",)),
    Case("filter-sum-lists", tpl("{% set l = [1] * 1000000 %}{{ ([l] * 1000)|sum(start=[])|length }}"),
         ChatTemplateError, ("sum",)),
    Case("tojson-indent", tpl("{{ messages|tojson(indent=1000000000) }}"), ChatTemplateError, ("tojson",)),
    Case("lipsum", tpl("{{ lipsum(1000000) }}"), ChatTemplateError, ("lipsum",)),
    Case("output-too-long", tpl(BIG + "{% for i in range(100000) %}{{ s }}{% endfor %}"), ChatTemplateError,
         ("an output", SIZE)),
    Case("macro-buffer", tpl("{% macro m() %}" + BIG + "{% for i in range(100000) %}{{ s }}{% endfor %}"
                             "{% endmacro %}{{ m()|length }}"), ChatTemplateError, (SIZE,)),
    Case("set-block", tpl("{% set x %}" + BIG + "{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}"),
         ChatTemplateError, (SIZE,)),
    Case("shared-output", tpl(SHARED + "{{ a }}"), ChatTemplateError, ("output value", SIZE)),
    Case("shared-string-filter", tpl(SHARED + "{{ a|string }}"), ChatTemplateError, ("string filter",)),
    Case("shared-tojson", tpl(SHARED + "{{ a|tojson }}"), ChatTemplateError, ("tojson filter",)),
    Case("shared-concat", tpl(SHARED + "{{ 'x' ~ a }}"), ChatTemplateError, ("joined string",)),
    Case("shared-percent", tpl(SHARED + "{{ '%s' % (a,) }}"), ChatTemplateError, ("%-formatted value",)),
    Case("shared-str-format", tpl(SHARED + "{{ '{}'.format(a) }}"), ChatTemplateError, (SIZE,)),
    Case("shared-compare", tpl(SHARED + "{{ a == b }}"), ChatTemplateError, ("compared value",)),
    Case("shared-in", tpl(SHARED + "{{ l in b }}"), ChatTemplateError, ("compared value",)),
    Case("shared-sort", tpl(SHARED + "{{ (a + b)|sort|length }}"), ChatTemplateError, ("sort filter",)),
    Case("shared-list-count", tpl(SHARED + "{{ b.count(l) }}"), ChatTemplateError, ("passed to a call",)),
    Case("shared-test-eq", tpl(SHARED + "{{ a is eq(b) }}"), ChatTemplateError, ("tested value",)),
    Case("shared-raise", tpl(SHARED + "{{ raise_exception(a) }}"), ChatTemplateError, (SIZE,)),
    Case("loop-over-string", tpl(BIG + "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", 0.5),
         ChatTemplateError, (TIME,)),
    Case("slice-generator", tpl("{{ []|slice(1000000000)|list|length }}", 0.5), ChatTemplateError, (TIME,)),
    Case("int-str-digits", tpl("{{ (10 ** 5000)|string }}"), ChatTemplateError, (ORIGIN, "ValueError")),
    Case("float-overflow", tpl("{{ 10.0 ** 1000 }}"), ChatTemplateError, ("OverflowError",)),
    Case("div-zero", tpl("{{ 1 / 0 }}"), ChatTemplateError, ("ZeroDivisionError",)),
    Case("undefined-call", tpl("{{ foo() }}"), ChatTemplateError, ("'foo' is undefined",)),
    Case("raise-exception", tpl("{{ raise_exception('no system role') }}"), ChatTemplateError, ("no system role",)),
    Case("escape-class", tpl("{{ ''.__class__.__mro__ }}"), ChatTemplateError, ("sandbox", "__class__")),
    Case("escape-namespace", tpl("{% set ns = namespace(_x=1) %}"), ChatTemplateError, ("sandbox", "_x")),
    Case("include", tpl("{% include '/etc/passwd' %}"), ChatTemplateError, ("sandbox", "/etc/passwd")),
    Case("mutate-list", tpl("{% set l = [1] %}{{ l.append(2) }}"), ChatTemplateError, ("sandbox",)),
    Case("syntax-error", tpl("{% for %}"), ChatTemplateError, ("does not compile", "line 1")),
    Case("deep-parens", tpl("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"), ChatTemplateError, ("does not compile",)),
    Case("deep-ifs", tpl("{% if 1 %}" * 300 + "x" + "{% endif %}" * 300), ChatTemplateError, ("does not compile",)),
    Case("source-too-long", tpl("x" * 1_000_001), ChatTemplateError, ("MAX_TEMPLATE_CHARS", "1000001")),
    Case("source-not-str", lambda tok: render_chat(5, [MSGS]), ChatTemplateError, ("string", "int")),
    Case("max-seconds-nan", lambda tok: render_chat("x", [MSGS], max_seconds=float("nan")), ValueError,
         ("max_seconds=nan",)),
    Case("max-chars-zero", lambda tok: render_chat("x", [MSGS], max_chars=0), ValueError, ("max_chars=0",)),
]

MESSAGE_CASES = [
    Case("conversation-str", chat("hello"), ChatTemplateError, ("conversation", "str")),
    Case("conversation-dict", chat({"role": "user", "content": "hi"}), ChatTemplateError, ("conversation", "dict")),
    Case("conversation-none", chat(None), ChatTemplateError, ("NoneType",)),
    Case("conversation-empty", chat([]), ChatTemplateError, ("empty conversation",)),
    Case("message-str", chat(["hi"]), ChatTemplateError, ("conversation[0]", "str")),
    Case("message-int", chat([{"role": "user", "content": "a"}, 5]), ChatTemplateError, ("conversation[1]", "int")),
    Case("message-no-role", chat([{"content": "hi"}]), ChatTemplateError, ("conversation[0]", "no 'role'")),
    Case("message-role-int", chat([{"role": 1, "content": "hi"}]), ChatTemplateError, ("conversation[0]", "role 1")),
    Case("content-int", chat([{"role": "user", "content": 5}]), ChatTemplateError, ("conversation[0]", "int")),
    Case("content-bytes", chat([{"role": "user", "content": b"hi"}]), ChatTemplateError, ("bytes",)),
    Case("content-dict", chat([{"role": "user", "content": {"text": "hi"}}]), ChatTemplateError, ("dict",)),
    Case("content-list-of-ints", chat([{"role": "user", "content": [1, 2]}]), ChatTemplateError, ("list",)),
    Case("batch-bad-message", chat([[{"role": "user", "content": "a"}], [{"role": "user"}, "x"]]),
         ChatTemplateError, ("conversation 1[1]",)),
    Case("tools-not-list", chat(MSGS, tools={"type": "function"}), ChatTemplateError, ("tools", "dict")),
    Case("tools-item-str", chat(MSGS, tools=["get_weather"]), ChatTemplateError, ("tools[0]", "str")),
    Case("documents-item-int", chat(MSGS, documents=[3]), ChatTemplateError, ("documents[0]", "int")),
    Case("chat-template-arg-int", chat(MSGS, chat_template=5), ChatTemplateError, ("chat_template=5",)),
    Case("chat-template-arg-bad", chat(MSGS, chat_template="{% for %}"), ChatTemplateError,
         ("the chat_template argument", "does not compile")),
    Case("continue-and-generate", chat(MSGS, continue_final_message=True, add_generation_prompt=True), ValueError,
         ("continue_final_message",)),
]


def _folder_template(tmp: Path, name: str, source: str) -> PhiTokenizer:
    folder = tmp / "tok"
    folder.mkdir(exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZERS / "phi-3-mini" / f, folder / f)
    if name == "tokenizer_config.json":
        config = json.loads((folder / name).read_text(encoding="utf-8"))
        (folder / name).write_text(json.dumps({**config, "chat_template": source}), encoding="utf-8")
    else:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(source, encoding="utf-8")
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("name", ["chat_template.jinja", "chat_templates/tool_use.jinja", "tokenizer_config.json"])
def test_errors_name_the_file_the_template_came_from(name: str, tmp_path: Path) -> None:
    require_tokenizers()
    tok = _folder_template(tmp_path, name, "{{ 'x' * 10**11 }}")
    template = "tool_use" if "tool_use" in name else None
    with pytest.raises(ChatTemplateError) as info:
        tok.apply_chat_template(MSGS, tokenize=False, chat_template=template)
    assert str(tmp_path / "tok" / name) in str(info.value) and SIZE in str(info.value)


CASES = TEMPLATE_CASES + MESSAGE_CASES


@pytest.mark.parametrize("case", params(CASES))
def test_bad_chat_template_input_is_a_clear_error(case: Case, ctx: PhiTokenizer) -> None:
    expect_clear_error(case, ctx)


# ----------------------------------------------------------------------------- templates that would hang

HANGS = {
    "nested-range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested-range-filtered": "{% for i in range(100000) if i is even %}{% for j in range(100000) if j %}"
                             "{% endfor %}{% endfor %}",
    "items-then-ranges": "{% for k, v in dict(a=1).items() %}{% for i in range(100000) %}{% for j in range(100000) %}"
                         "{% endfor %}{% endfor %}{% endfor %}",
    "recursive-loop-wide": "{% for i in range(100000) recursive %}{% for j in range(100000) %}{% endfor %}"
                           "{% endfor %}",
    "macro-in-loops": "{% macro m() %}{% for j in range(100000) %}{% endfor %}{% endmacro %}"
                      "{% for i in range(100000) %}{{ m() }}{% endfor %}",
}
EXTRA_CASES = [Case(f"hang-{name}", lambda tok: None, ChatTemplateError, ("time limit",)) for name in HANGS]


@pytest.mark.parametrize("name", sorted(HANGS))
def test_endless_templates_stop_at_the_deadline(name: str) -> None:
    code = textwrap.dedent(f"""
        import time
        from phikit.tokenizer.chat_template import ChatTemplateError, render_chat
        start = time.monotonic()
        try:
            render_chat({HANGS[name]!r}, [[{{"role": "user", "content": "hi"}}]], max_seconds=1.0)
            print("RENDERED")
        except ChatTemplateError as exc:
            print("ERR", round(time.monotonic() - start, 2), exc)
        """)
    proc = run_isolated(code, timeout=60)
    assert proc.stdout.startswith("ERR"), proc.stdout + proc.stderr
    seconds = float(proc.stdout.split()[1])
    assert seconds < 10 and "time limit of 1 s" in proc.stdout, proc.stdout


def test_default_deadline_applies_through_apply_chat_template() -> None:
    code = textwrap.dedent(f"""
        import time
        from phikit.tokenizer import template_sandbox
        from phikit.tokenizer.tokenization import AutoTokenizer
        template_sandbox.RENDER_SECONDS = 1.0  # the module constant is read at call time
        tok = AutoTokenizer.from_pretrained({str(TOKENIZERS / "phi-3-mini")!r})
        start = time.monotonic()
        try:
            tok.apply_chat_template([{{"role": "user", "content": "x"}}], chat_template={HANGS["nested-range"]!r})
        except ValueError as exc:
            print("ERR", round(time.monotonic() - start, 2), type(exc).__name__, exc)
        """)
    proc = run_isolated(code, timeout=60)
    assert proc.stdout.startswith("ERR") and "ChatTemplateError" in proc.stdout, proc.stdout + proc.stderr
    assert float(proc.stdout.split()[1]) < 10 and "the chat_template argument" in proc.stdout


def test_real_templates_render_under_the_bounds(ctx: PhiTokenizer) -> None:
    # the checkpoints' own templates: unchanged output with the limits on (their parity with transformers is in
    # tests/test_chat_template.py)
    long = [{"role": "user", "content": "word " * 200_000}, {"role": "assistant", "content": "ok"}]
    text = ctx.apply_chat_template(long, tokenize=False)
    assert text.count("word") == 200_000
