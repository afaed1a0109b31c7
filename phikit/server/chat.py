"""Messages -> the rendered prompt -> token ids, with the checkpoint's chat template or the one `--chat-template FILE`
gave. The template renders in phikit's bounded sandbox; a template error (or one the template raises on purpose,
e.g. "roles must alternate") is a 400 with `param` "messages"."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import bad_request
from .protocol import ChatMessage


def read_chat_template(path: str | None) -> str | None:
    """The text of `--chat-template FILE` or of a template phikit ships (`phi4-mini-tools`); None: the checkpoint's."""
    if path is None:
        return None
    from ..tool_calls import BUILTIN_TEMPLATES, builtin_template
    if path in BUILTIN_TEMPLATES:
        return builtin_template(path)
    file = Path(path)
    if not file.is_file():
        raise OSError(f"--chat-template {path}: no such file; pass a jinja template file")
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"--chat-template {path} is empty; pass a jinja template file")
    return text


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages as the dicts a chat template reads: content parts of type "text" joined by newlines."""
    out = []
    for i, message in enumerate(messages):
        item = message.model_dump(exclude_none=True)
        content = message.content
        if isinstance(content, list):
            texts = []
            for k, part in enumerate(content):
                kind = part.get("type")
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(f"messages[{i}].content[{k}]",
                                      f"content part of type {kind!r} is not supported: phikit serves text models; "
                                      f"send {{\"type\": \"text\", \"text\": \"...\"}} parts or a string")
                texts.append(part["text"])
            item["content"] = "\n".join(texts)
        elif content is None:
            item["content"] = ""
        out.append(item)
    from .tools import tool_call_dicts
    return tool_call_dicts(out)


class ChatPrompts:
    """Renders and tokenizes prompts for one tokenizer (and an optional template override)."""

    def __init__(self, tokenizer: Any, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template

    @property
    def has_template(self) -> bool:
        return self.chat_template is not None or bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True,
               continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None,
               tools: list[dict[str, Any]] | None = None, template: str | None = None) -> str:
        """The prompt text the template (`template`, else the server's) renders for `messages` and `tools`."""
        template = template if template is not None else self.chat_template
        if template is None and not self.has_template:
            raise bad_request("messages", "this model has no chat template, so messages cannot be rendered; start "
                                          "the server with --chat-template FILE, or send a plain prompt to "
                                          "/v1/completions")
        if add_generation_prompt and continue_final_message:
            raise bad_request("continue_final_message", "continue_final_message=true and add_generation_prompt=true "
                                                        "exclude each other; set add_generation_prompt=false")
        reserved = {"messages", "add_generation_prompt", "tools", "documents"} & set(template_kwargs or {})
        if reserved:
            raise bad_request("chat_template_kwargs", f"chat_template_kwargs may not set {sorted(reserved)}")
        try:
            return self.tokenizer.apply_chat_template(
                message_dicts(messages), tools=tools, chat_template=template, tokenize=False,
                add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                **(template_kwargs or {}))
        except (ValueError, TypeError) as e:  # ChatTemplateError is a ValueError
            raise bad_request("messages", f"the chat template cannot render these messages: {e}") from None

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of a prompt text."""
        try:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        except ValueError as e:
            raise bad_request("prompt", f"the prompt cannot be tokenized: {e}") from None

    def prompt_ids(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True,
                   continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None,
                   tools: list[dict[str, Any]] | None = None, template: str | None = None) -> tuple[str, list[int]]:
        """(rendered text, ids) as `apply_chat_template(..., add_generation_prompt=True)` gives them: the rendered
        text carries its own special tokens, so none are added."""
        text = self.render(messages, add_generation_prompt, continue_final_message, template_kwargs, tools, template)
        return text, self.encode(text, add_special_tokens=False)
