"""The web page in a real headless Chromium (Playwright), against a real server process.

Set GIRAFFE_SCREENSHOTS=DIR to keep the screenshots (docs/ holds the committed ones).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_process import running_server

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def url(smollm2_gguf, tmp_path_factory):
    kb = tmp_path_factory.mktemp("kb") / "browser.sqlite"  # the Documents tab's knowledge base
    with running_server(MODEL, "--ctx", "2048", "--kb", str(kb)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test does it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                  "--disable-component-update", "--no-first-run"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    outside = []
    page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    assert not outside, f"the page fetched from outside the server: {outside}"
    assert not errors, f"JavaScript errors: {errors}"
    context.close()


def shot(page, name, tmp_path) -> Path:
    folder = Path(os.environ.get("GIRAFFE_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000  # a real picture, not a blank page
    return path


def test_chat_streams_an_answer_and_keeps_the_conversation(page, tmp_path):
    page.click("#system-box summary")
    page.fill("#system", "You are a helpful assistant.")
    page.locator("#tab-chat input[name=temperature]").fill("0")
    page.fill("#chat-input", "What is the capital of Japan?")
    page.click("#send")
    answer = page.locator(".message.assistant").last
    page.wait_for_selector(".message.assistant[data-state=done]", timeout=60_000)
    assert "Tokyo" in answer.inner_text()
    assert int(answer.get_attribute("data-chunks")) > 3  # arrived in pieces, not at once
    assert answer.get_attribute("data-finish") in ("stop", "length")
    shot(page, "chat.png", tmp_path)
    page.reload()  # the conversation is kept in the browser
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator(".message").count() == 2
    page.click("#clear")
    assert page.locator(".message").count() == 0


def test_stop_ends_an_answer_early(page):
    page.fill("#chat-input", "Write a long story about a giraffe.")
    page.locator("#tab-chat input[name=max_tokens]").fill("1000")
    page.click("#send")
    page.wait_for_function(
        "document.querySelector('.message.assistant')?.dataset.chunks > 5", timeout=60_000
    )
    page.click("#stop")
    page.wait_for_selector(".message.assistant[data-state=done]")
    assert page.locator(".message.assistant").get_attribute("data-finish") == "stopped"
    page.click("#clear")


def test_playground_shows_token_probabilities_and_alternatives(page, tmp_path):
    page.click("#tabbtn-playground")
    page.locator("#tab-playground input[name=temperature]").fill("0")
    page.locator("#tab-playground input[name=max_tokens]").fill("24")
    page.click("#complete")
    page.wait_for_selector("#completion[data-state=done]", timeout=60_000)
    tokens = page.locator("#completion .tok")
    assert tokens.count() >= 5
    tokens.nth(2).click()
    detail = page.locator("#token-detail")
    assert "% probability" in detail.inner_text()
    rows = detail.locator("table.alternatives tr")
    assert rows.count() == 5
    assert detail.locator("tr.chosen").count() == 1  # greedy: the chosen one is among the top 5
    shot(page, "playground.png", tmp_path)


def test_tokenizer_view_colours_tokens_as_you_type(page, tmp_path):
    page.click("#tabbtn-tokenizer")
    from giraffe.lm import load_tokenizer

    text = "Giraffes are tall."
    ids = load_tokenizer(MODEL).encode(text)
    page.fill("#tok-input", text)
    page.wait_for_function(f"document.querySelector('#tok-output').dataset.count === '{len(ids)}'")
    chips = page.locator("#tok-output .chip")
    assert [int(chips.nth(i).locator(".id").inner_text()) for i in range(len(ids))] == ids
    shot(page, "tokenizer.png", tmp_path)


def test_inside_tab_shows_attention_next_tokens_and_the_logit_lens(page, tmp_path):
    from giraffe.lm import load_tokenizer

    text = "The giraffe ate the leaves because it was hungry."
    n_tokens = len(load_tokenizer(MODEL).encode(text))
    page.click("#tabbtn-inside")
    page.fill("#inside-text", text)
    page.click("#inside-buttons [data-view=next]")
    page.wait_for_selector("#inside-output[data-state=done][data-view=next]", timeout=60_000)
    assert page.locator("table.next tbody tr").count() == n_tokens
    assert page.locator("table.next .cand").count() == 5 * n_tokens
    shot(page, "inside-next.png", tmp_path)
    page.click("#inside-buttons [data-view=lens]")
    page.wait_for_selector("#inside-output[data-state=done][data-view=lens]", timeout=60_000)
    assert page.locator("table.lens tbody tr").count() == 31  # embeddings + 30 layers
    page.click("#inside-buttons [data-view=attention]")
    page.wait_for_selector("#inside-output[data-state=done][data-view=attention]", timeout=60_000)
    frame = page.frame_locator("iframe.attention-frame")
    frame.locator("canvas").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1500)  # the model view draws one layer per frame
    shot(page, "inside-attention.png", tmp_path)


GERALD = """# Gerald the giraffe

Gerald is a giraffe who lives at the Riverside Zoo. He is 5.8 metres tall, the tallest
animal in the zoo, and he was born there in 2015.

His favourite food is acacia leaves. The keepers feed him at nine o'clock every
morning and again at four in the afternoon.
"""
ZOO = """# Visiting the Riverside Zoo

The zoo opens at ten in the morning and closes at six in the evening. Tickets cost
twelve euros for adults and six euros for children.
"""


def test_documents_tab_uploads_lists_and_answers_with_its_sources(page, tmp_path):
    files = [tmp_path / "gerald.md", tmp_path / "zoo.md"]
    for file, text in zip(files, (GERALD, ZOO), strict=True):
        file.write_text(text, encoding="utf-8")
    page.click("#tabbtn-documents")
    page.wait_for_selector("#tab-documents[data-kb=ready]")
    page.set_input_files("#doc-files", [str(f) for f in files])  # two at once
    page.wait_for_selector("#doc-list[data-count='2']", timeout=60_000)
    assert page.locator("#upload-log li[data-status=added]").count() == 2
    page.fill("#question", "How tall is Gerald the giraffe?")
    page.click("#ask")
    answer = page.locator("#doc-answer")
    page.wait_for_selector("#doc-answer[data-state=done]", timeout=120_000)
    assert int(answer.get_attribute("data-chunks")) > 3  # arrived in pieces, not at once
    assert answer.get_attribute("data-finish") in ("stop", "length")
    passages = page.locator("#passages .passage")
    assert passages.count() >= 1
    assert (
        "gerald.md" in passages.first.inner_text() and "5.8 metres" in passages.first.inner_text()
    )
    cited = answer.get_attribute("data-cited")
    assert cited and page.locator(f"#passage-{cited.split(',')[0]}.cited").count() == 1
    links = answer.locator("a.cite")
    if links.count():  # the answer cites [n] itself: the link shows that passage
        n = links.first.get_attribute("data-n")
        links.first.click()
        assert "shown" in page.locator(f"#passage-{n}").get_attribute("class")
    else:  # it did not: the model was asked afterwards, and the page says so
        assert "asked afterwards" in page.locator("#cite-note").inner_text()
    shot(page, "documents-tab.png", tmp_path)
    page.click("#doc-list .doc[data-name='zoo.md'] .remove")
    page.wait_for_selector("#doc-list[data-count='1']")
    assert page.locator("#doc-list .doc").get_attribute("data-name") == "gerald.md"
