"""A model's `chat_template` config field: a named recipe template or a Jinja string, resolved to the Jinja text
that every stage rendering prompts for that model sets on its tokenizer (and the trainer saves with the model).

Torch-free: the config check resolves the field before any job runs.
"""
from __future__ import annotations

# The alignment-handbook's zephyr template, as the zephyr-7b-beta recipes and PenGuln/DFT's recipes
# (recipes/dft/mistral_base_dft{,2}.yaml) set it for Mistral-7B-v0.1, which ships none.
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

NAMED = {"zephyr": ZEPHYR}


def resolve(value: str, where: str) -> str:
    """The Jinja text of a `chat_template` value: a name of `NAMED`, or a Jinja string (it has a `{{` or `{%`),
    parsed as transformers parses it; anything else is a ValueError that names `where`."""
    import jinja2

    if value in NAMED:
        return NAMED[value]
    if "{{" not in value and "{%" not in value:
        raise ValueError(f"{where}: '{value}' is neither a named template ({', '.join(sorted(NAMED))}) nor a Jinja "
                         "string")
    try:
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(value)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{where}: the Jinja template does not parse (its line {e.lineno}: {e.message})") from None
    return value


def add_argument(parser) -> None:
    """`--chat-template`: the command-line option of a stage that renders a configured model's prompts."""
    parser.add_argument("--chat-template", default=None,
                        help="Jinja text set on the tokenizer (the model's config entry); absent: the model's own")
