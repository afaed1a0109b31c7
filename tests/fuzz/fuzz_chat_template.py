"""Fuzz target: bytes as chat-template source, rendered on a small conversation with a short time bound and a small
size bound. Only `ChatTemplateError` may escape (no hang past libFuzzer's timeout, no memory blow-up).

    python tests/fuzz/fuzz_chat_template.py -max_total_time=120 -timeout=10
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

REAL = pathlib.Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "tokenizers" / "llama.cpp"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "tool_calls": [{"name": "f", "arguments": {"x": 1}}]}]
SNIPPETS = [
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}{% if add_generation_prompt %}"
    "<|assistant|>\n{% endif %}",
    "{{ bos_token }}{% for m in messages %}{{ m.content|trim|tojson }}{% endfor %}",
    "{% set ns = namespace(s='') %}{% for i in range(3) %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.s * 2 }}",
    "{% macro f(x) %}{{ x|center(9) }}{% endmacro %}{{ f('a') }}{{ '%5d'|format(3) }}{{ '{:>4}'.format(1) }}",
    "{{ messages|map(attribute='role')|join(', ') }}{{ (messages|length) ** 2 }}{{ 'ab'|replace('a', 'xx') }}",
    "{% for m in messages recursive %}{{ loop.index }}{% endfor %}{{ raise_exception('no') if false }}",
]


def TestOneInput(data: bytes) -> None:
    from phikit.tokenizer.chat_template import ChatTemplateError, render_chat

    source = data.decode("utf-8", errors="replace")
    try:
        render_chat(source, [MESSAGES], add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
                    max_seconds=0.5, max_chars=200_000)
    except ChatTemplateError:
        return


if __name__ == "__main__":
    from fuzzing import fuzz

    SEEDS = [s.encode() for s in SNIPPETS]
    if (REAL / "microsoft-Phi-3.5-mini-instruct.jinja").is_file():
        SEEDS.append((REAL / "microsoft-Phi-3.5-mini-instruct.jinja").read_bytes())
    fuzz(TestOneInput, SEEDS, ["phikit.tokenizer.chat_template", "phikit.tokenizer.template_sandbox"])
