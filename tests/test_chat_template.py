"""Chat templates: the checkpoints' own jinja templates render what transformers renders, inside a sandbox that
stops templates reaching files or Python internals."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
from tokenizers import Tokenizer

from phikit.tokenizer.chat_template import ChatTemplateError, render_chat
from phikit.tokenizer.tokenization import AutoTokenizer, PhiTokenizer
from tests.tokenizer_cases import LLAMA_CPP, TOKENIZERS, phi_cases, require_fixtures

require_fixtures()
transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e .[test]")

PHI35 = (LLAMA_CPP / "microsoft-Phi-3.5-mini-instruct.jinja").read_text(encoding="utf-8")

CONVERSATIONS = {
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    "multi_turn": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "  and 3+3?\n"}],
    "empty_system": [{"role": "system", "content": ""}, {"role": "user", "content": "ünïcödé ✅"}],
    "ends_with_assistant": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi."}],
}


@lru_cache(maxsize=None)
def tokenizers_pair(name: str) -> tuple[PhiTokenizer, object]:
    return (AutoTokenizer.from_pretrained(TOKENIZERS / name),
            transformers.AutoTokenizer.from_pretrained(str(TOKENIZERS / name)))


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_phi35_template_renders_like_transformers(conversation: str, add_generation_prompt: bool) -> None:
    ours, ref = tokenizers_pair("phi-3-mini")
    msgs = CONVERSATIONS[conversation]
    want = ref.apply_chat_template(msgs, chat_template=PHI35, add_generation_prompt=add_generation_prompt,
                                   tokenize=False)
    got = ours.apply_chat_template(msgs, chat_template=PHI35, add_generation_prompt=add_generation_prompt,
                                   tokenize=False)
    assert got == want
    # batched conversations render each one the same way
    assert ours.apply_chat_template([msgs, msgs[:1]], chat_template=PHI35, tokenize=False,
                                    add_generation_prompt=add_generation_prompt) == \
        [want, ours.apply_chat_template(msgs[:1], chat_template=PHI35, tokenize=False,
                                        add_generation_prompt=add_generation_prompt)]


@pytest.mark.parametrize("name", ["phi-3-mini", "phi-3", "phi-3-medium", "phi-3-vision"])
def test_checkpoint_templates_render_like_transformers(name: str) -> None:
    ours, ref = tokenizers_pair(name)
    for msgs in CONVERSATIONS.values():
        for gen in (True, False):
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False) == \
                ref.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)


def test_apply_chat_template_return_types_follow_transformers() -> None:
    ours, ref = tokenizers_pair("phi-3-mini")
    raw = Tokenizer.from_file(str(TOKENIZERS / "phi-3-mini" / "tokenizer.json"))
    msgs = CONVERSATIONS["multi_turn"]
    got, want = ours.apply_chat_template(msgs), ref.apply_chat_template(msgs)  # return_dict=True by default in 5.x
    assert type(want).__name__ == type(got).__name__ == "BatchEncoding" and set(got) == set(want)
    # ids: the tokenizers library on the rendered text (transformers' Phi-3 tokenizer loses '▁' after <|user|>)
    text = ref.apply_chat_template(msgs, tokenize=False)
    assert got["input_ids"] == raw.encode(text, add_special_tokens=False).ids
    assert ours.apply_chat_template(msgs, return_dict=False) == got["input_ids"]
    cont = ours.apply_chat_template(CONVERSATIONS["ends_with_assistant"], tokenize=False, continue_final_message=True)
    assert cont == ref.apply_chat_template(CONVERSATIONS["ends_with_assistant"], tokenize=False,
                                           continue_final_message=True)


def test_batched_chat_with_padding_matches_transformers() -> None:
    # phi-2 has no chat tokens, so transformers tokenizes the rendered text correctly: compare ids and masks
    ours, ref = tokenizers_pair("phi-2")
    ours.pad_token, ref.pad_token = ours.eos_token, ref.eos_token
    batch = [CONVERSATIONS["multi_turn"], CONVERSATIONS["system_user"][1:]]
    for side in ("left", "right"):
        ours.padding_side = ref.padding_side = side
        got = ours.apply_chat_template(batch, chat_template=PHI35, padding=True, return_tensors="pt",
                                       add_generation_prompt=True)
        want = ref.apply_chat_template(batch, chat_template=PHI35, padding=True, return_tensors="pt",
                                       add_generation_prompt=True)
        assert got["input_ids"].tolist() == want["input_ids"].tolist()
        assert got["attention_mask"].tolist() == want["attention_mask"].tolist()
        got = ours.apply_chat_template(batch, chat_template=PHI35, truncation=True, max_length=6, return_dict=False)
        assert got == ref.apply_chat_template(batch, chat_template=PHI35, truncation=True, max_length=6,
                                              return_dict=False)


def _phi4_template(folder: str) -> str:
    path = TOKENIZERS / folder
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    return json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]


TOOLS = [{"type": "function", "function": {"name": "get_horoscope", "description": "Today's horoscope.",
                                           "parameters": {"type": "object", "properties": {"sign": {"type": "string"}}}}}]


@pytest.mark.parametrize("folder", ["phi-4-mini", "phi-4-mini-reasoning"])
def test_phi4_templates_render_recorded_prompts_and_tools(folder: str) -> None:
    template = _phi4_template(folder)
    cases = [c for c in phi_cases()["chat_template_and_ids"] + phi_cases()["chat_template_text_only"]
             if c["tokenizer"] == folder]
    assert cases, folder
    for case in cases:
        [text] = render_chat(template, [case["messages"]], add_generation_prompt=case["add_generation_prompt"],
                             eos_token="<|endoftext|>")
        assert text == case["expected_text"]
    # a tools conversation (tools string on the system message, and the tools= argument) renders without error
    msgs = [{"role": "system", "content": "Use tools.", "tools": json.dumps(TOOLS)},
            {"role": "user", "content": "My horoscope?"}]
    [text] = render_chat(template, [msgs], tools=TOOLS, add_generation_prompt=True, eos_token="<|endoftext|>")
    assert "<|tool|>" + json.dumps(TOOLS) + "<|/tool|>" in text and text.endswith("<|assistant|>")


def test_llama_cpp_recorded_renders() -> None:
    data = phi_cases()["llama_cpp_chat_template"]
    for case in data["cases"]:
        if "expected_jinja" not in case:
            continue
        [text] = render_chat(case["template"], [data["conversation"]], add_generation_prompt=True,
                             bos_token=data["bos_token"], eos_token=data["eos_token"])
        assert text == case["expected_jinja"], case["name"]


def test_template_helpers() -> None:
    template = ("{{ raise_exception is defined }}|{{ {'a': '<é>'} | tojson }}|{{ [1, 2] | tojson(indent=1) }}|"
                "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}|"
                "{{ strftime_now('%Y') | length }}|{% set ns = namespace(n=0) %}{% set ns.n = 3 %}{{ ns.n }}|"
                "{{ bos_token }}")
    [text] = render_chat(template, [[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]],
                         bos_token="<s>")
    assert text == 'True|{"a": "<é>"}|[\n 1,\n 2\n]|a|4|3|<s>'


# ----------------------------------------------------------------------------- errors and the sandbox

MSGS = [{"role": "user", "content": "hi"}]


def test_template_that_raises_surfaces_its_message() -> None:
    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini")
    bad = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('Conversations must start with system') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="Conversations must start with system"):
        tok.apply_chat_template(MSGS, chat_template=bad)


ESCAPES = {
    "include": "{% include 'etc/passwd' %}",
    "import": "{% import 'os' as os %}{{ os }}",
    "extends": "{% extends 'base.html' %}",
    "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "class_alone": "{{ ''.__class__ }}",
    "cycler_globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner_globals": "{{ joiner.__init__.__globals__ }}",
    "lipsum_globals": "{{ lipsum.__globals__['os'] }}",
    "namespace_dunder": "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "mutate_messages": "{{ messages.append({'role': 'x'}) }}",
    "private_attribute": "{{ self._TemplateReference__context }}",
    "format_escape": "{{ '{0.__class__}'.format(messages) }}",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_sandbox_escapes_raise_clear_errors_and_leave_no_state(name: str) -> None:
    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini")
    before = (tok.chat_template, len(tok), tok.special_tokens_map, tok.padding_side)
    msgs = [dict(m) for m in MSGS]
    with pytest.raises(ChatTemplateError, match="sandbox"):
        tok.apply_chat_template(msgs, chat_template=ESCAPES[name])
    assert msgs == MSGS  # the caller's messages are untouched
    assert (tok.chat_template, len(tok), tok.special_tokens_map, tok.padding_side) == before
    assert tok.apply_chat_template(MSGS, tokenize=False) == "<|user|>\nhi<|end|>\n<|endoftext|>"


def test_syntax_error_and_missing_template_are_clear() -> None:
    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        tok.apply_chat_template(MSGS, chat_template="{% for m in messages %}")
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template(MSGS)
    with pytest.raises(ValueError, match="empty conversation"):
        tok.apply_chat_template([], chat_template="x")
