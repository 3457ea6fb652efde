"""A model's configured chat template: resolved by the config check, passed by the rules to every stage that
renders its prompts, set by those stages on the tokenizer (generation, lm-eval) and saved with every model trained
from it (tests/test_trainer.py)."""
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from test_evaluate import PARAMS, tasks_dir  # noqa: F401 (the toy lm-eval tasks, a fixture)

from workflow_scripts import chat_templates, config as config_module, evaluate, generate
from workflow_scripts.encoding import render_prompt
from workflow_scripts.io import InputError
from workflow_scripts.tiny_world import CHAT_TEMPLATE

# alignment-handbook recipes/zephyr-7b-beta/sft/config_full.yaml (and PenGuln/DFT's recipes), the line as written
RECIPE_LINE = (r'''chat_template: "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + '''
               r'''message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + '''
               r'''message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  '''
               r'''+ message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n'''
               r'''{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"''')


def without_template(model: str, folder: Path) -> str:
    """A copy of a model folder whose tokenizer has no chat template (a base model such as Mistral-7B-v0.1)."""
    shutil.copytree(model, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def base_model(tiny_world, tmp_path_factory):
    return without_template(tiny_world[0], tmp_path_factory.mktemp("base") / "model")


def test_the_named_zephyr_template_is_the_recipes():
    assert chat_templates.resolve("zephyr", "x") == yaml.safe_load(RECIPE_LINE)["chat_template"]


def test_a_jinja_string_is_kept_and_anything_else_refused_by_field():
    assert chat_templates.resolve(CHAT_TEMPLATE, "x") == CHAT_TEMPLATE
    config = {"models": {"m": {"chat_template": "zephir"}}}
    with pytest.raises(config_module.ConfigError, match=r"models\.m\.chat_template: 'zephir' is neither a named "
                                                         r"template \(zephyr\) nor a Jinja string"):
        config_module.resolve_chat_templates(config)
    config = {"models": {"m": {"chat_template": "{% for m in messages %}{{ m }}"}}}
    with pytest.raises(config_module.ConfigError, match=r"models\.m\.chat_template: the Jinja template does not parse"):
        config_module.resolve_chat_templates(config)


def test_a_chat_prompt_without_any_template_is_refused_naming_the_model(base_model):
    from workflow_scripts.models import load_tokenizer

    messages = [{"role": "user", "content": "2 + 3 = ?"}]
    with pytest.raises(InputError, match="ships no chat template: give its config entry a chat_template"):
        render_prompt(load_tokenizer(base_model), messages)
    assert render_prompt(load_tokenizer(base_model, chat_template="zephyr-free {{ messages[0]['content'] }}"),
                         messages) == "zephyr-free 2 + 3 = ?"


def test_generation_renders_through_the_configured_template(tiny_world, base_model, tmp_path):
    """The template-less copy with the original's template set answers exactly as the original does."""
    model, data = tiny_world
    params = json.dumps({"backend": "hf", "dtype": "float32", "batch_size": 16, "shard_size": 16, "max_model_len": None,
                         "gpu_memory_utilization": 0.9, "attn_implementation": None, "over_long_prompts": "truncate",
                         "system_prompt": None, "prompt_format": None,
                         "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 8, "stop": [], "limit": 12})
    for name, model_args in (("original", [model]), ("set", [base_model, "--chat-template", CHAT_TEMPLATE])):
        generate.main(["--params", params, "--data", data, "--model", *model_args, "--seed", "1",
                       "--output", str(tmp_path / f"{name}.jsonl")])
    assert (tmp_path / "original.jsonl").read_text() == (tmp_path / "set.jsonl").read_text()


def test_lm_eval_applies_the_configured_template(tiny_world, base_model, tasks_dir, tmp_path):
    params = json.dumps({**PARAMS, "tasks": PARAMS["tasks"][:1]})  # the generative task
    for name, model_args in (("original", [tiny_world[0]]), ("set", [base_model, "--chat-template", CHAT_TEMPLATE])):
        evaluate.main(["--params", params, "--model", *model_args, "--tasks-dir", tasks_dir,
                       "--output", str(tmp_path / f"{name}.json")])
    original, set_ = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("original", "set"))
    assert original["scores"] == set_["scores"]
    prompts = [json.loads(line)["arguments"] for line in (tmp_path / "set.samples.jsonl").read_text().splitlines()]
    assert all("<|user|>" in json.dumps(p) for p in prompts)  # rendered through the chat template


def test_the_rules_pass_the_template_to_every_stage_rendering_the_models_prompts(tmp_path):
    from test_workflow import MINI, snakemake, write_config

    mini = yaml.safe_load(MINI.read_text())
    mini["models"]["mini"]["chat_template"] = "zephyr"
    result = snakemake(tmp_path, "-n", "-p", "--forceall", "--configfile", write_config(tmp_path / "c.yaml", mini))
    assert result.returncode == 0, result.stdout + result.stderr
    commands = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            commands.setdefault(rule[1], []).append(block)
    loading = {"generate", "spin_generate", "step_controlled_generate", "refcache", "train", "answers", "evaluate"}
    assert loading <= set(commands)
    flag = "--chat-template " + shlex.quote(chat_templates.ZEPHYR)
    for rule, blocks in commands.items():
        assert all((flag in b) == (rule in loading) for b in blocks), rule
