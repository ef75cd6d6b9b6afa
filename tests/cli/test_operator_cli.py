"""The operator's CLI as a person or a script meets it: the real `qfserve` command in a subprocess,
on a real SQLite data dir (no server needed for these)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from conftest import QFSERVE, ROOT, cli, cli_json

from qfserve import __version__
from qfserve.store import apps as app_store
from qfserve.store import memories as memory_store
from qfserve.store.db import Store

LEXICON = ROOT / "examples" / "safety" / "lexicon.tsv"


def qf(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return cli(data_dir, *args, check=False)


def error_of(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return output


# ---- service update / show -----------------------------------------------------------------------

def test_update_changes_only_what_it_names(tmp_path):
    cli(tmp_path, "service", "publish", "svc", "--profile", "ERNIE-Lite-8K", "--rpm", "50", "--tpm", "5000",
        "--safety", "strict", "--top-k", "20", "--min-p", "0.1")
    before = cli_json(tmp_path, "service", "show", "svc")
    after = cli_json(tmp_path, "service", "update", "svc", "--rpm", "77")
    assert after == {**before, "rpm": 77}
    assert cli_json(tmp_path, "service", "show", "svc") == after
    # `default` hands top_k / min_p back to the engine; nothing else moves.
    reset = cli_json(tmp_path, "service", "update", "svc", "--top-k", "default", "--min-p", "0")
    assert reset == {**after, "top_k": None, "min_p": 0.0}
    shown = cli(tmp_path, "service", "show", "svc").stdout
    assert "engine default" in shown and "strict" in shown and "ERNIE-Lite-8K" in shown
    listed = cli_json(tmp_path, "service", "list")
    assert listed[0]["top_k"] is None and listed[0]["min_p"] == 0.0 and listed[0]["safety"] == "strict"


def test_update_refuses_nothing_unknown_and_bad_values(tmp_path):
    cli(tmp_path, "service", "publish", "svc")
    assert "nothing to change" in error_of(qf(tmp_path, "service", "update", "svc"))
    assert "no service at 'nosuch'" in error_of(qf(tmp_path, "service", "update", "nosuch", "--rpm", "5"))
    for flag, value, message in [("--top-k", "-1", "top_k"), ("--top-k", "lots", "--top-k"), ("--min-p", "1.5", "min_p"),
                                 ("--rpm", "0", "rpm"), ("--safety", "lax", "safety"), ("--profile", "ERNIE-9", "profile"),
                                 ("--model", "/nonexistent.gguf", "model file not found")]:
        assert message in error_of(qf(tmp_path, "service", "update", "svc", flag, value)), (flag, value)
    for flag, value in [("--top-k", "-3"), ("--min-p", "-0.5")]:
        error_of(qf(tmp_path, "service", "publish", "other", flag, value))
    assert cli_json(tmp_path, "service", "show", "svc")["rpm"] == 300  # unchanged by the refusals


def test_replace_is_gone_and_a_taken_address_points_to_update(tmp_path):
    cli(tmp_path, "service", "publish", "svc", "--rpm", "5")
    taken = error_of(qf(tmp_path, "service", "publish", "svc", "--rpm", "6"))
    assert "service update svc" in taken
    gone = error_of(qf(tmp_path, "service", "publish", "svc", "--rpm", "6", "--replace"))
    assert "service update" in gone and "service delete" in gone
    assert "--replace" not in cli(tmp_path, "service", "publish", "--help").stdout
    assert cli_json(tmp_path, "service", "show", "svc")["rpm"] == 5


def test_show_unknown_service(tmp_path):
    assert "no service at 'nosuch'" in error_of(qf(tmp_path, "service", "show", "nosuch"))


# ---- --for-model ---------------------------------------------------------------------------------

def test_for_model_publishes_at_the_sdk_endpoint_with_its_profile(tmp_path):
    speed = cli_json(tmp_path, "service", "publish", "--for-model", "ERNIE-Speed-8K")
    assert (speed["api_path"], speed["profile"]) == ("ernie_speed", "ERNIE-Speed-8K")
    # Qianfan's preset endpoints fit the 64-character rule of chosen addresses too.
    fiction = cli_json(tmp_path, "service", "publish", "--for-model", "ERNIE-Character-Fiction-8K")
    assert (fiction["api_path"], fiction["profile"]) == ("ernie-char-fiction-8k", "ERNIE-Character-Fiction-8K")
    assert "ernie-lite-8k" in error_of(qf(tmp_path, "service", "publish", "other", "--for-model", "ERNIE-Lite-8K"))
    no_endpoint = error_of(qf(tmp_path, "service", "publish", "--for-model", "ERNIE-Lite-128K"))
    assert "no endpoint for ERNIE-Lite-128K" in no_endpoint
    assert "unknown profile" in error_of(qf(tmp_path, "service", "publish", "--for-model", "GPT-4"))
    assert "api_path" in error_of(qf(tmp_path, "service", "publish", "a" * 65))


def test_for_model_table_is_the_installed_sdks():
    pytest.importorskip("qianfan")
    from qianfan.resources.llm.chat_completion import _ChatCompletionV1

    from qfserve.services.profiles import PROFILES, SDK_ENDPOINTS

    sdk_table = _ChatCompletionV1._local_models(_ChatCompletionV1.__new__(_ChatCompletionV1))
    assert set(SDK_ENDPOINTS) == set(PROFILES)
    for model, endpoint in SDK_ENDPOINTS.items():
        found = sdk_table.get(model)
        assert (found.endpoint if found else None) == (f"/chat/{endpoint}" if endpoint else None), model


# ---- grants --------------------------------------------------------------------------------------

def test_grant_of_a_missing_service_and_revoke_of_a_missing_grant_are_refused(tmp_path):
    cli(tmp_path, "app", "create", "team2")
    cli(tmp_path, "service", "publish", "svc")
    assert "no service at 'nosuch'" in error_of(qf(tmp_path, "app", "grant", "team2", "nosuch"))
    assert cli_json(tmp_path, "app", "list")[0]["services"] == "all"  # the typo cut nothing off
    assert "no grants" in error_of(qf(tmp_path, "app", "revoke", "team2", "svc"))
    granted = cli_json(tmp_path, "app", "grant", "team2", "svc")
    assert granted["services"] == ["svc"]
    assert "no grant for 'other'" in error_of(qf(tmp_path, "app", "revoke", "team2", "other"))
    assert cli_json(tmp_path, "app", "revoke", "team2", "svc")["services"] == []
    assert cli_json(tmp_path, "app", "allow-all", "team2")["services"] == "all"


# ---- no tracebacks -------------------------------------------------------------------------------

def _leaf_commands(command, path: tuple[str, ...] = ()):
    if hasattr(command, "commands"):  # a group (typer ships its own copy of click)
        for name, sub in command.commands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield path


def test_every_command_with_an_unknown_option_fails_cleanly(tmp_path):
    from qfserve.cli.main import app

    commands = list(_leaf_commands(typer.main.get_command(app)))
    assert len(commands) >= 19, commands  # serve, 7 app, 5 service, 2 safety, 2 memory, 2 sft
    for path in commands:
        result = qf(tmp_path, *path, "--no-such-option")
        assert result.returncode == 2, (path, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr, path
        assert "No such option" in result.stderr, (path, result.stderr)


@pytest.fixture
def bad_files(tmp_path):
    malformed = tmp_path / "malformed.tsv"
    malformed.write_text("just one column\n", encoding="utf-8")
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('[{"prompt": "a"\n', encoding="utf-8")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    return {"malformed": str(malformed), "bad_data": str(bad_data), "a_file": str(a_file)}


BAD_CALLS = [
    ("app", "delete", "nosuch", "--yes"),
    ("app", "rotate", "nosuch"),
    ("app", "rotate", "x", "--grace", "soon"),
    ("app", "grant", "nosuch", "svc"),
    ("app", "revoke", "nosuch", "svc"),
    ("app", "allow-all", "nosuch"),
    ("app", "create"),
    ("service", "publish", "BAD PATH"),
    ("service", "publish", "ok", "--model", "/nonexistent.gguf"),
    ("service", "publish", "ok", "--adapter", "/nonexistent-adapter"),
    ("service", "publish", "ok", "--rpm", "many"),
    ("service", "publish"),
    ("service", "update", "nosuch", "--rpm", "5"),
    ("service", "show", "nosuch"),
    ("service", "delete", "nosuch", "--yes"),
    ("memory", "list", "u", "--app", "nosuch"),
    ("memory", "delete", "u", "--id", "999"),
    ("safety", "check", "text"),
    ("safety", "check", "text", "--safety-lexicon", "/nonexistent.tsv"),
    ("safety", "check", "text", "--safety-lexicon", "{malformed}"),
    ("safety", "check", "text", "--safety-lexicon", str(LEXICON), "--safety", "bogus"),
    ("safety", "check", "text", "--safety-lexicon", str(LEXICON), "--safety-level", "ads=loud"),
    ("safety", "reload"),
    ("sft", "train", "--data", "{bad_data}", "--out", "{tmp}/out"),
    ("sft", "train", "--data", "/nonexistent.jsonl", "--out", "{tmp}/out"),
    ("sft", "eval", "/nonexistent", "--data", "{bad_data}"),
    ("serve", "--safety-lexicon", "/nonexistent.tsv"),
    ("serve", "--safety-lexicon", "{malformed}"),
    ("serve", "--parallel", "0"),
    ("serve", "--log-level", "loud"),
    ("app", "list", "--data-dir", "{a_file}"),
]


@pytest.mark.parametrize("call", BAD_CALLS, ids=lambda call: " ".join(call)[:60])
def test_bad_arguments_fail_in_a_line_without_traceback(tmp_path, bad_files, call):
    args = [part.format(tmp=tmp_path, **bad_files) for part in call]
    result = qf(tmp_path / "data", *args)
    output = error_of(result)
    if result.returncode == 1:  # our own refusals (2 is a usage error, printed by typer)
        assert "error:" in result.stderr, output
        assert result.stdout == "", output


def test_serve_with_a_missing_lexicon_fails_before_starting(tmp_path):
    result = qf(tmp_path, "serve", "--safety-lexicon", "/nonexistent.tsv", "--port", "1")
    output = error_of(result)
    assert "/nonexistent.tsv" in result.stderr
    assert "Application startup" not in output and "uvicorn" not in output


# ---- scripting -----------------------------------------------------------------------------------

def test_version():
    result = subprocess.run([*QFSERVE, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"qfserve {__version__}"


def test_help_shows_no_type_after_flags_and_an_env_var_for_every_setting(tmp_path):
    from qfserve.cli.main import app

    root = typer.main.get_command(app)
    for path in _leaf_commands(root):
        text = cli(tmp_path, *path, "--help").stdout
        assert "<bool>" not in text, path
        command = root
        for name in path:
            command = command.commands[name]
        names = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for shared in ("--data-dir", "--json", "--yes"):
            if shared in names:
                param = next(p for p in command.params if shared in p.opts)
                assert param.envvar and param.show_envvar, (path, shared)
    serve = root.commands["serve"]
    for param in serve.params:
        assert param.envvar and param.show_envvar, param.name
    check = root.commands["safety"].commands["check"]
    same = {p.opts[0]: p.envvar for p in check.params if p.opts[0].startswith("--safety-")}
    assert same == {p.opts[0]: p.envvar for p in serve.params if p.opts[0] in same}
    assert set(same) == {"--safety-lexicon", "--safety-allow", "--safety-level"}


def test_json_on_every_command_that_prints(tmp_path):
    cli(tmp_path, "app", "create", "a")
    cli(tmp_path, "service", "publish", "svc")
    assert cli_json(tmp_path, "app", "grant", "a", "svc")["granted"] == "svc"
    assert cli_json(tmp_path, "app", "revoke", "a", "svc")["revoked"] == "svc"
    assert cli_json(tmp_path, "app", "allow-all", "a")["services"] == "all"
    assert cli_json(tmp_path, "service", "delete", "svc") == {
        "deleted": "service", "api_path": "svc", "database": str((tmp_path / "qfserve.db").resolve())}
    assert cli_json(tmp_path, "app", "delete", "a")["deleted"] == "app"
    assert cli_json(tmp_path, "memory", "delete", "u")["deleted"] == 0
    assert cli_json(tmp_path, "safety", "check", "hi", "--safety-lexicon", str(LEXICON))["flag"] == 0
    assert isinstance(cli_json(tmp_path, "app", "list"), list)  # lists stay lists
    # --json is a flag: it takes no value.
    assert qf(tmp_path, "app", "list", "--json", "true").returncode == 2


# ---- the data directory --------------------------------------------------------------------------

def test_every_command_names_its_database_and_the_default_is_per_user(tmp_path):
    elsewhere = tmp_path / "some-project"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "QFSERVE_DATA_DIR"}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"), COLUMNS="200")

    def run(*args):
        return subprocess.run([*QFSERVE, *args], env=env, cwd=elsewhere, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    first = run("app", "create", "a", "--json")
    expected = tmp_path / "xdg" / "qfserve" / "qfserve.db"
    assert first.returncode == 0, first.stderr
    assert f"database: {expected} (new)" in first.stderr.splitlines()
    assert json.loads(first.stdout)["database"] == str(expected)
    assert not (elsewhere / "qfserve-data").exists()
    listed = run("app", "list")
    assert f"database: {expected}" in listed.stderr.splitlines() and "a" in listed.stdout
    # A database left by the old default (./qfserve-data) is pointed at, never silently used.
    (elsewhere / "qfserve-data").mkdir()
    Store(elsewhere / "qfserve-data").close()
    noted = run("app", "list")
    assert "--data-dir qfserve-data" in noted.stderr and f"database: {expected}" in noted.stderr


# ---- confirmations -------------------------------------------------------------------------------

def on_a_terminal(data_dir: Path, *args: str, answer: str) -> tuple[int, str]:
    """Run a command with a pseudo-terminal on stdin/stdout, typing `answer`."""
    leader, follower = pty.openpty()
    env = {**os.environ, "QFSERVE_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    process = subprocess.Popen([*QFSERVE, *args], stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    os.write(leader, answer.encode() + b"\n")
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=60), output.decode(errors="replace")


def test_destructive_commands_ask_on_a_terminal(tmp_path):
    cli(tmp_path, "app", "create", "a")
    cli(tmp_path, "service", "publish", "svc")
    store = Store(tmp_path)
    app_id = app_store.get_app(store, "a").id
    memory_store.save(store, app_id=app_id, api_path="svc", user_id="u1", request_id="as-0000000000", round=1,
                      facts=[memory_store.NewMemory("name", "用户名叫李雷", "rules")], max_per_user=10)
    store.close()

    for args in (("app", "delete", "a"), ("service", "delete", "svc"), ("memory", "delete", "u1")):
        code, output = on_a_terminal(tmp_path, *args, answer="n")
        assert code == 1 and "[y/N]" in output and "aborted" in output, (args, output)
        assert "Traceback" not in output
    assert cli_json(tmp_path, "app", "list")[0]["name"] == "a"
    assert cli_json(tmp_path, "service", "list")[0]["api_path"] == "svc"
    assert len(cli_json(tmp_path, "memory", "list", "u1")) == 1

    code, output = on_a_terminal(tmp_path, "memory", "delete", "u1", answer="y")
    assert code == 0 and "Deleted 1 memory" in output, output
    code, output = on_a_terminal(tmp_path, "service", "delete", "svc", "--yes", answer="")
    assert code == 0 and "[y/N]" not in output, output
    # No terminal (a script): no question.
    assert cli(tmp_path, "app", "delete", "a").returncode == 0
    assert cli_json(tmp_path, "app", "list") == [] and cli_json(tmp_path, "service", "list") == []


def test_deleting_one_memory_does_not_ask(tmp_path):
    cli(tmp_path, "app", "create", "a")
    store = Store(tmp_path)
    [saved] = memory_store.save(store, app_id=app_store.get_app(store, "a").id, api_path="svc", user_id="u1",
                                request_id="as-0000000000", round=1, max_per_user=10,
                                facts=[memory_store.NewMemory("name", "用户名叫李雷", "rules")])
    store.close()
    code, output = on_a_terminal(tmp_path, "memory", "delete", "u1", "--id", str(saved.id), answer="")
    assert code == 0 and "[y/N]" not in output, output


# ---- memory list without a user ------------------------------------------------------------------

def test_memory_list_without_a_user_lists_users_with_counts(tmp_path):
    for name in ("a", "b"):
        cli(tmp_path, "app", "create", name)
    store = Store(tmp_path)
    a, b = (app_store.get_app(store, n).id for n in ("a", "b"))

    def remember(app_id, user, slot, text, request):
        memory_store.save(store, app_id=app_id, api_path="svc", user_id=user, request_id=request, round=1,
                          facts=[memory_store.NewMemory(slot, text, "rules")], max_per_user=10)

    remember(a, "u1", "location", "用户住在杭州", "as-0000000001")
    remember(a, "u1", "location", "用户住在上海", "as-0000000002")  # supersedes the first
    remember(a, "u1", "name", "用户名叫李雷", "as-0000000003")
    remember(a, "u2", "name", "用户名叫韩梅梅", "as-0000000004")
    remember(b, "u1", "job", "用户是一名律师", "as-0000000005")
    store.close()

    users = cli_json(tmp_path, "memory", "list")
    assert [(u["app"], u["user_id"], u["current"], u["total"]) for u in users] == [
        ("a", "u1", 2, 3), ("a", "u2", 1, 1), ("b", "u1", 1, 1)]
    only_a = cli_json(tmp_path, "memory", "list", "--app", "a")
    assert [u["user_id"] for u in only_a] == ["u1", "u2"]
    table = cli(tmp_path, "memory", "list", "--app", "b").stdout
    assert "u1" in table and "u2" not in table
    assert "No user has memories" in cli(tmp_path, "memory", "list", "--service", "other").stdout


# ---- safety check --------------------------------------------------------------------------------

def test_safety_check_shows_each_term_where_level_and_category(tmp_path):
    text = "这是色情内容，还有廣告詞乙"
    found = cli_json(tmp_path, "safety", "check", text, "--safety-lexicon", str(LEXICON))
    assert (found["flag"], found["category"], found["need_clear_history"], found["ban_round"]) == (2, "sexual", True, -1)
    assert found["matches"] == [
        {"term": "色情", "matched": "色情", "start": 2, "end": 4, "level": 2, "category": "sexual"},
        {"term": "廣告詞乙", "matched": "廣告詞乙", "start": 9, "end": 13, "level": 1, "category": "ads"},
    ]
    shown = cli(tmp_path, "safety", "check", text, "--safety-lexicon", str(LEXICON)).stdout
    assert "term “色情” (sexual, level 2)" in shown and "characters 3-4" in shown
    # No verdict: no ban_round at all (not None); level 1 has no ban_round either.
    clean = cli_json(tmp_path, "safety", "check", "你好", "--safety-lexicon", str(LEXICON))
    assert clean["flag"] == 0 and "ban_round" not in clean and clean["matches"] == []
    masked = cli_json(tmp_path, "safety", "check", "廣告詞乙", "--safety-lexicon", str(LEXICON))
    assert masked["flag"] == 1 and "ban_round" not in masked
    assert "ban_round" not in cli(tmp_path, "safety", "check", "你好", "--safety-lexicon", str(LEXICON)).stdout
    # The same variables as `serve`, and the service's policy name.
    env_check = subprocess.run([*QFSERVE, "safety", "check", "色情", "--json", "--safety", "off"], capture_output=True,
                               text=True, env={**os.environ, "QFSERVE_SAFETY_LEXICON": str(LEXICON)}, timeout=60)
    assert json.loads(env_check.stdout)["flag"] == 0, env_check.stderr
    raised = cli_json(tmp_path, "safety", "check", "廣告詞乙", "--safety-lexicon", str(LEXICON), "--safety-level", "ads=3")
    assert raised["flag"] == 3


# ---- sft -----------------------------------------------------------------------------------------

def test_sft_train_refuses_bad_data_before_importing_torch(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('[{"prompt": "a", "response": [["b"]]}]\n[{"prompt": "a",\n', encoding="utf-8")
    probe = (
        "import sys\n"
        "from qfserve.cli.main import app\n"
        "try:\n"
        f"    app(['sft', 'train', '--data', {str(data)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code)\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "exit 1" in result.stdout and "torch not imported" in result.stdout, result.stdout + result.stderr
    # The line is parsed without its newline: the error is at the end of line 2, column 17.
    assert "line 2: not valid JSON" in result.stderr and "at column 17" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
