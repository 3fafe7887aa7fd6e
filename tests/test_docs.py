"""docs/config_keys.md is what tools/dump_config_keys.py generates from config.py; the README stays short and
its links and paths exist."""

from __future__ import annotations

import re
import shlex

from helpers.train_net_runner import REPO, load_script

PAGES = [REPO / "README.md", REPO / "tests" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_config_keys_page_is_up_to_date():
    tool = load_script("tools/dump_config_keys.py")
    assert tool.OUTPUT.read_text() == tool.render(tool.CONFIG_SOURCE.read_text()), (
        "docs/config_keys.md is stale: run python tools/dump_config_keys.py"
    )


def test_every_config_key_is_documented():
    from detectron2.config import get_cfg

    from d2_maskext.config import add_maskext_config

    def leaves(node, prefix=""):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]

    added = set(leaves(add_maskext_config(get_cfg()))) - set(leaves(get_cfg()))
    page = (REPO / "docs" / "config_keys.md").read_text()
    assert sorted(k for k in added if f"`{k}`" not in page) == []


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []


def test_repository_paths_in_readme_commands_exist():
    text = (REPO / "README.md").read_text()
    paths = set(re.findall(r"\b((?:tools|configs|benchmarks)/[\w./-]+\.(?:py|sh|yaml))\b", text))
    assert paths, "the README names no repository paths"
    assert sorted(p for p in paths if not (REPO / p).exists()) == []


def _readme_tool_commands() -> list[list[str]]:
    """Each ``.venv/bin/python tools/...`` command of the README's bash blocks, as an argument list."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == [".venv/bin/python"] and argv[1].startswith("tools/"):
                commands.append(argv[1:])
    return commands


def test_readme_tool_commands_parse_and_their_configs_load():
    """Every README tool command, dry-run: the tool's own parser accepts its flags, and its config loads
    with its overrides. (The tools themselves run with tiny settings in test_tools, test_predict,
    test_lazy_configs and the train_net tests.)"""
    from detectron2.engine import default_argument_parser

    from d2_maskext.cli.config_loading import load_config

    commands = _readme_tool_commands()
    assert {c[0] for c in commands} >= {"tools/train_net.py", "tools/lazyconfig_train_net.py", "tools/predict.py"}
    for tool, *args in commands:
        if tool in ("tools/train_net.py", "tools/lazyconfig_train_net.py"):
            parsed = default_argument_parser().parse_args(args)
            overrides = parsed.opts
        else:
            parsed = load_script(tool).parse_args(args)
            overrides = [*getattr(parsed, "opts", []), *getattr(parsed, "overrides", [])]
        load_config(REPO / parsed.config_file, overrides)
