"""The console in a real browser (Debian's headless Chromium, driven by Playwright), against the real
server and model: one server, one browser page, one flow per feature, in the order a person would go.

A tiny fine-tuning job starts early and trains in the background while the other flows run; the
last flows wait for it, publish it and evaluate it. Screenshots of every page go to a temporary
folder (its path is printed); QFSERVE_DOCS_SCREENSHOT=1 also refreshes docs/console-playground.png.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import requests

from .conftest import signin_link

ROOT = Path(__file__).parents[2]
PERSONA = ROOT / "examples" / "sft" / "persona.jsonl"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TRAIN_TIMEOUT_MS = 420_000  # a shared 2-core machine; the job usually ends in well under a minute

# Every visible form control must have a name a screen reader can read.
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.closest('label'))
    .map(el => el.id || el.name || el.outerHTML.slice(0, 60))"""


@pytest.fixture(scope="module")
def page(browser, console_server):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    page.set_default_timeout(60_000)
    yield page
    context.close()


def url(server, path: str) -> str:
    return f"{server.base_url}/console{path}"


def shoot(page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def check_page(page) -> None:
    assert page.evaluate(UNLABELLED) == [], "unlabelled controls"
    assert page.js_errors == [], page.js_errors


def test_sign_in_with_the_printed_link(page, console_server, artifacts):
    page.goto(url(console_server, "/services"))
    assert "Sign in" in page.inner_text("h1")  # refused before signing in
    page.goto(signin_link(console_server))
    page.wait_for_url("**/console/")
    assert page.inner_text("h1") == "Overview"
    check_page(page)
    shoot(page, artifacts, "overview")
    # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"


def test_upload_data_then_start_a_tiny_training_job(page, console_server, artifacts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("upload")
    bad = folder / "bad.jsonl"
    bad.write_text('[{"prompt": "hi", "response": [["hello"]]}]\n{"prompt": "not an array"}\n', encoding="utf-8")
    page.goto(url(console_server, "/finetune"))
    page.set_input_files("#file", str(bad))
    page.click("text=Upload and check")
    problems = page.inner_text(".problems")
    assert "line 2" in problems and "expected a JSON array" in problems
    shoot(page, artifacts, "finetune-errors")

    tiny = folder / "tiny.jsonl"
    tiny.write_text("".join(PERSONA.read_text(encoding="utf-8").splitlines(keepends=True)[:5]), encoding="utf-8")
    page.set_input_files("#file", str(tiny))
    page.click("text=Upload and check")
    assert "uploaded tiny.jsonl: 5 conversations" in page.inner_text("[role=status]")
    page.fill("#name", "tiny")
    for field, value in {"epochs": "1", "max_length": "48", "batch_size": "4", "eval_split": "0.2",
                         "learning_rate": "0.002"}.items():
        page.fill(f"#t-{field}", value)
    check_page(page)
    page.click("text=Start training")
    page.wait_for_url("**/console/finetune/jobs/*")
    assert page.inner_text("#status-badge") in ("running", "succeeded")


def test_create_an_app_and_publish_a_service(page, console_server, artifacts):
    page.goto(url(console_server, "/apps"))
    page.fill("#name", "webapp")
    page.click("button:has-text('Create')")
    secret = page.inner_text("#secret_key")
    assert re.fullmatch(r"[0-9a-f]{32}", secret)
    shoot(page, artifacts, "app-created")
    page.click("text=Continue to app webapp")
    assert secret not in page.content()  # shown once only

    page.goto(url(console_server, "/services"))
    page.fill("#api_path", "websvc")
    page.fill("#rpm", "5000")
    page.click("button:has-text('Publish')")
    assert "published websvc" in page.inner_text("[role=status]")
    row = page.locator("#service-websvc")
    assert "5000" in row.inner_text()
    # Change its limits and policy.
    row.locator("summary:has-text('Change')").click()
    row.locator("#tpm-websvc").fill("123456")
    row.locator("#safety-websvc").select_option("strict")
    row.locator("button:has-text('Save websvc')").click()
    assert "123456" in page.locator("#service-websvc").inner_text()
    assert "strict" in page.locator("#service-websvc").inner_text()
    service = json.loads(console_server.cli("service", "list", "--json").stdout)
    assert {s["api_path"]: s["tpm"] for s in service}["websvc"] == 123456  # the CLI sees the same store
    check_page(page)
    shoot(page, artifacts, "services")

    # Grants: the first grant restricts webapp to granted services; a revoke takes one back.
    page.goto(url(console_server, "/apps/webapp"))
    assert page.locator("button:has-text('Revoke')").count() == 0  # it may call every service
    page.click("button:has-text('Grant websvc')")
    assert "granted websvc" in page.inner_text("[role=status]")
    apps = {a["name"]: a for a in json.loads(console_server.cli("app", "list", "--json").stdout)}
    assert apps["webapp"]["services"] == ["websvc"]
    assert page.locator("button:has-text('Grant svc')").count() == 1
    page.click("button:has-text('Grant svc')")
    page.click("button:has-text('Revoke svc')")
    assert "revoked svc" in page.inner_text("[role=status]")
    apps = {a["name"]: a for a in json.loads(console_server.cli("app", "list", "--json").stdout)}
    assert apps["webapp"]["services"] == ["websvc"]
    check_page(page)
    shoot(page, artifacts, "app")


def _send(page, text: str, done: int) -> None:
    page.fill("#pg-input", text)
    page.click("#pg-submit")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant[data-done=true]').length >= {done}",
                           timeout=120_000)


def test_playground_streams_chunks_as_they_arrive(page, console_server, artifacts):
    page.goto(url(console_server, "/playground"))
    page.select_option("#pg-service", "websvc")
    page.select_option("#pg-app", "webapp")
    page.fill("#p-max_output_tokens", "60")
    page.fill("#p-temperature", "0.01")
    page.check("#p-logprobs")
    page.fill("#p-top_logprobs", "3")
    # Record when each chunk lands in the page and when the answer is complete.
    page.evaluate("""() => { window.chunkTimes = []; new MutationObserver(ms => ms.forEach(m => m.addedNodes.forEach(n => {
        if (n.classList && n.classList.contains('chunk')) window.chunkTimes.push(performance.now()); })))
        .observe(document.getElementById('pg-log'), {childList: true, subtree: true}); }""")
    _send(page, "Tell me a short story about a cat. Use several sentences.", 1)
    times = page.evaluate("window.chunkTimes")
    assert len(times) >= 2, "a streamed answer arrives in several sentence chunks"
    assert times[0] < times[-1]  # the first chunk was on screen before the last one arrived
    answer = page.locator(".msg.assistant .text").last
    assert answer.locator(".chunk").count() == len(times)
    badges = page.inner_text("#pg-badges")
    assert "flag 0" in badges and f"{len(times)} chunks" in badges
    usage = page.inner_text("#pg-usage")
    assert "completion_tokens" in usage and "X-Ratelimit-Limit-Requests" in usage and "5000" in usage
    # logprobs: every token coloured, alternatives on hover; as many tokens as completion_tokens.
    completion = int(re.search(r"completion_tokens\s+(\d+)", usage).group(1))
    assert page.locator(".msg.assistant").last.locator(".tok").count() == completion
    message = page.locator(".msg.assistant").last
    token = message.locator(".tokens .tok").first
    assert "background: rgb(" in token.get_attribute("style")
    colours = message.locator(".tok").evaluate_all("els => els.map(e => [Number(e.dataset.p), e.style.background])")
    by_p = dict(colours)
    assert len(set(by_p.values())) > 1 and len(by_p) > 1  # different probabilities, different colours
    token.hover()
    assert "p=" in token.get_attribute("data-tip") and len(token.get_attribute("data-tip").splitlines()) >= 2
    message.locator(".tok").nth(min(6, message.locator(".tok").count() - 1)).hover()
    page.screenshot(path=str(artifacts / "playground-logprobs.png"))
    if os.environ.get("QFSERVE_DOCS_SCREENSHOT") == "1":
        page.screenshot(path=str(ROOT / "docs" / "console-playground.png"))
    # Multi-turn: the second request carries the first answer.
    _send(page, "And what was the cat's name?", 2)
    page.click("summary:has-text('Copy as')")
    page.click("[data-copy=requests]")
    snippet = page.input_value("#pg-snippet")
    assert '"role": "assistant"' in snippet and "websvc" in snippet and "requests.post" in snippet
    page.click("[data-copy=sdk]")
    assert 'qianfan.ChatCompletion(endpoint="websvc")' in page.input_value("#pg-snippet")
    page.click("[data-copy=curl]")
    assert "curl -X POST" in page.input_value("#pg-snippet")
    check_page(page)
    page.screenshot(path=str(artifacts / "playground.png"), full_page=True)


def test_a_lexicon_term_shows_a_flag_badge(page, console_server, artifacts):
    page.click("#pg-clear")
    page.uncheck("#p-logprobs")
    page.fill("#p-top_logprobs", "")
    page.fill("#p-max_output_tokens", "8")
    _send(page, "What does badword mean?", 1)
    # websvc's policy was set to strict above: a level-1 term counts as level 2, which closes the chat.
    badges = page.inner_text("#pg-badges")
    assert "flag 2" in badges and "need_clear_history" in badges and "ban_round -1" in badges, badges
    assert page.locator(".badge.flag").count() >= 3
    shoot(page, artifacts, "playground-flag")


def test_delete_a_memory_entry(page, console_server, artifacts):
    page.click("#pg-clear")
    page.fill("#p-user_id", "alice")
    page.check("#p-enable_user_memory")
    page.fill("#p-user_memory_extract_level", "1")
    _send(page, "My name is Alice and I live in Hangzhou.", 1)
    _send(page, "I moved to Shanghai.", 2)
    page.goto(url(console_server, "/memory"))
    page.select_option("#m-app", "webapp")
    page.fill("#m-user", "alice")
    # Extraction runs after the answer is sent: look until it has landed.
    for _ in range(40):
        page.click("button:has-text('Look up')")
        if page.locator("#memories tbody tr").count() >= 3:
            break
        page.wait_for_timeout(500)
    rows = page.locator("#memories tbody tr")
    assert rows.count() == 3, page.inner_text("main")
    assert page.locator("#memories tr.superseded").count() == 1  # Hangzhou, superseded by Shanghai
    check_page(page)
    shoot(page, artifacts, "memory")
    first_id = rows.first.get_attribute("id")
    rows.first.locator("button:has-text('Delete')").click()
    assert "deleted 1 memory" in page.inner_text("[role=status]")
    assert page.locator(f"#{first_id}").count() == 0
    assert page.locator("#memories tbody tr").count() == 2


def test_a_metric_chart_updates(page, console_server, artifacts):
    page.goto(url(console_server, "/metrics"))
    page.wait_for_function("Number(document.getElementById('metrics-updated').dataset.points || 0) >= 1",
                           timeout=30_000)
    before = int(page.get_attribute("#metrics-updated", "data-requests"))
    points = int(page.get_attribute("#metrics-updated", "data-points"))
    token = console_server.token()
    requests.post(console_server.chat_url("svc"), params={"access_token": token},
                  json={"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 4}, timeout=120)
    page.wait_for_function(f"Number(document.getElementById('metrics-updated').dataset.requests) > {before}",
                           timeout=30_000)
    assert int(page.get_attribute("#metrics-updated", "data-points")) > points
    assert page.locator("#chart-rps canvas").count() == 1
    assert "ready" in page.inner_text("#engines")
    check_page(page)
    shoot(page, artifacts, "metrics")


def test_the_training_job_finishes_then_is_evaluated_and_published(page, console_server, artifacts):
    page.goto(url(console_server, "/finetune"))
    page.click("a:has-text('tiny')")
    page.wait_for_function("document.getElementById('status-badge').textContent === 'succeeded'",
                           timeout=TRAIN_TIMEOUT_MS)
    page.wait_for_selector("#result")  # the page reloads itself when the job ends
    assert page.locator("#loss-chart canvas").count() == 1
    assert page.get_attribute("#job-progress", "value") == page.get_attribute("#job-progress", "max")
    shoot(page, artifacts, "job")
    # The job survives a reload, with its stored state.
    page.reload()
    assert page.inner_text("#status-badge") == "succeeded"

    page.click("button:has-text('Evaluate')")
    page.wait_for_selector("#eval-result", timeout=TRAIN_TIMEOUT_MS)
    assert "perplexity" in page.inner_text("#eval-result")

    page.fill("#pub-path", "tiny")
    page.click("button:has-text('Publish as a service')")
    assert "published at tiny" in page.inner_text("[role=status]")
    services = {s["api_path"]: s for s in json.loads(console_server.cli("service", "list", "--json").stdout)}
    assert services["tiny"]["adapter"].endswith("/adapters/tiny")
    check_page(page)
    shoot(page, artifacts, "job-published")
    # The published adapter answers through the chat API.
    answer = requests.post(console_server.chat_url("tiny"), params={"access_token": console_server.token()},
                           json={"messages": [{"role": "user", "content": "你是谁"}], "max_output_tokens": 8},
                           timeout=120).json()
    assert answer.get("result"), answer


def test_phone_width_has_no_sideways_scroll(page, console_server, artifacts):
    page.set_viewport_size(PHONE)
    try:
        for path in ("/", "/playground", "/services", "/finetune"):
            page.goto(url(console_server, path))
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (path, overflow)
        shoot(page, artifacts, "phone-playground")
    finally:
        page.set_viewport_size(DESKTOP)

