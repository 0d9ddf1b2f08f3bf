"""The knowledge base over HTTP (/documents): uploads, listing, removal, cited answers.

The server tests run the real `giraffe serve --kb` in a subprocess (SmolLM2 answers,
MiniLM embeds) and talk to it with httpx. The rag pieces they stand on - ingesting
bytes under a name, sliced embedding - are tested first, quickly, with a fake embedder.
"""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from rag_fakes import HashEmbedder
from serve_process import running_server, wait_until

from giraffe.rag.chunk import ChunkSpec
from giraffe.rag.ingest import add_bytes, upload_key
from giraffe.rag.knowledge import KnowledgeBase
from giraffe.rag.read import SkipFile, pages_from_bytes, read_pages
from giraffe.rag.store import Store

GIRAFFES = """# Gerald the giraffe

Gerald is a giraffe who lives at the Riverside Zoo. He is 5.8 metres tall, the tallest
animal in the zoo, and he was born there in 2015.

His favourite food is acacia leaves. The keepers feed him at nine o'clock every
morning and again at four in the afternoon.
"""
ZOO = """The Riverside Zoo opens at ten in the morning and closes at six in the evening.

Tickets cost twelve euros for adults and six euros for children. Dogs are not allowed.
"""
OFF_TOPIC = "What is the boiling point of mercury in kelvin?"


# ---- the rag side: bytes under a name ---------------------------------------------------
EMB = HashEmbedder()
SPEC = ChunkSpec(40, 8)


def open_store(tmp_path) -> Store:
    return Store.open(tmp_path / "kb.sqlite", embedder=EMB.source, dim=EMB.dim)


def test_add_bytes_keys_by_name_and_reports_added_unchanged_updated(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # an upload writes no file, wherever the server runs
    with open_store(tmp_path) as store:
        first = add_bytes(store, EMB, "notes.md", GIRAFFES.encode(), SPEC)
        assert (first.path, first.status) == ("notes.md", "added") and first.chunks >= 2
        assert add_bytes(store, EMB, "notes.md", GIRAFFES.encode(), SPEC).status == "unchanged"
        changed = add_bytes(
            store, EMB, "notes.md", (GIRAFFES + "Gerald likes rain.").encode(), SPEC
        )
        assert changed.status == "updated"
        [doc] = store.documents()
        assert doc.path == "notes.md"
        assert doc.sha256 == hashlib.sha256((GIRAFFES + "Gerald likes rain.").encode()).hexdigest()
        assert doc.n_chunks == store.count_chunks() == changed.chunks and store.check() == []
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "../notes.md", "a/b.md", "/tmp/x.md", "..\\x.md", "C:\\x.md", ".", "..",
     "", "  ", "x\x00.md", "tab\t.md", "photo.png", "README", "x" * 300 + ".md"],
)  # fmt: skip
def test_upload_names_that_are_paths_or_unreadable_kinds_are_refused(tmp_path, name):
    with pytest.raises(SkipFile):
        upload_key(name)
    with open_store(tmp_path) as store:
        outcome = add_bytes(store, EMB, name, GIRAFFES.encode(), SPEC)
        assert outcome.status == "skipped" and outcome.reason
        assert store.documents() == []


@pytest.mark.parametrize("name", ["notes.md", "My Notes (v2).MD", "page.html", "a.b.txt", "é.md"])
def test_plain_file_names_are_their_own_keys(name):
    assert upload_key(name) == name


def test_pages_from_bytes_equal_read_pages_of_the_same_file(tmp_path):
    import pypdf

    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    pdf = tmp_path / "blank.pdf"
    with open(pdf, "wb") as f:
        writer.write(f)
    files = {
        "notes.md": GIRAFFES.encode(),
        "page.html": b"<html><head><title>t</title></head><body><p>One</p><p>Two &amp; three</p>",
        "bom.txt": b"\xef\xbb\xbfhello",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert pages_from_bytes(name, data) == read_pages(tmp_path / name)
    with pytest.raises(SkipFile, match="no text"):
        pages_from_bytes("blank.pdf", pdf.read_bytes())
    with pytest.raises(SkipFile, match="limit"):
        pages_from_bytes("big.txt", b"giraffe " * 100, max_bytes=100)


def test_sliced_embedding_stores_what_adding_at_once_stores(tmp_path):
    """The server embeds an upload in slices between decode steps: same store in the end."""
    small = ChunkSpec(16, 4)  # several chunks, so several slices
    whole = KnowledgeBase(tmp_path / "a.sqlite", EMB, EMB.source, small)
    sliced = KnowledgeBase(tmp_path / "b.sqlite", EMB, EMB.source, small)
    assert whole.add("notes.md", GIRAFFES.encode()).status == "added"
    step = sliced.prepare("notes.md", GIRAFFES.encode())
    assert step.outcome is None and len(step.texts) >= 3
    vectors = [sliced.embed(step.texts[i : i + 2]) for i in range(0, len(step.texts), 2)]
    assert sliced.commit(step, vectors).status == "added"
    a, b = whole.store.chunks(), sliced.store.chunks()
    assert [(c.path, c.page, c.start, c.end, c.text) for c in a] == [
        (c.path, c.page, c.start, c.end, c.text) for c in b
    ]
    np.testing.assert_array_equal(whole.store.matrix()[1], sliced.store.matrix()[1])
    again = sliced.prepare("notes.md", GIRAFFES.encode())
    assert again.texts == [] and sliced.commit(again, []).status == "unchanged"
    assert sliced.listing()[0]["name"] == "notes.md" and sliced.listing()[0]["uploaded"]


def test_a_knowledge_base_built_with_another_embedder_is_refused_at_once(tmp_path):
    KnowledgeBase(tmp_path / "kb.sqlite", EMB, EMB.source)
    with pytest.raises(ValueError, match="hash-64"):
        KnowledgeBase(tmp_path / "kb.sqlite", EMB, "minilm-l6")


# ---- the server ------------------------------------------------------------------------
MODEL = "smollm2-135m-instruct"
KEY = "d0cs-key"
AUTH = {"authorization": f"Bearer {KEY}"}
BODY_LIMIT = 40_000  # small: the upload just under it is embedded in a few seconds


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    """(url, kb file): SmolLM2 + MiniLM (the --kb default), a key, a small body limit."""
    kb = tmp_path_factory.mktemp("kb") / "docs.sqlite"
    args = [MODEL, "--kb", str(kb), "--ctx", "2048", "--max-batch", "4"]
    args += ["--max-body-bytes", str(BODY_LIMIT)]
    with running_server(*args, env={"GIRAFFE_API_KEY": KEY}) as url:
        yield url, kb


@pytest.fixture
def url(server):
    url, _ = server
    for doc in listing(url)["data"]:  # every test starts from an empty knowledge base
        remove(url, doc["name"])
    return url


def upload(url, name, data: bytes | str, headers=AUTH) -> httpx.Response:
    raw = data.encode() if isinstance(data, str) else data
    body = {"name": name, "content_base64": base64.b64encode(raw).decode()}
    return httpx.post(url + "/documents", json=body, headers=headers, timeout=120)


def listing(url) -> dict:
    r = httpx.get(url + "/documents", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def remove(url, name, headers=AUTH) -> httpx.Response:
    return httpx.delete(url + "/documents/" + quote(name, safe=""), headers=headers, timeout=30)


def ask(url, question, **extra) -> list:
    """The SSE events of /documents/ask as parsed JSON, and the final "[DONE]"."""
    body = {"question": question, "max_tokens": 48, **extra}
    out = []
    with httpx.stream("POST", url + "/documents/ask", json=body, headers=AUTH, timeout=180) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.slow
def test_every_documents_endpoint_needs_the_key(url):
    calls = [
        httpx.get(url + "/documents"),
        httpx.post(url + "/documents", json={"name": "a.md", "content_base64": "aGk="}),
        httpx.delete(url + "/documents/a.md", headers={"authorization": "Bearer wrong"}),
        httpx.post(url + "/documents/ask", json={"question": "hi"}),
    ]
    for r in calls:
        assert error_of(r, 401)["type"] == "authentication_error"
    assert listing(url)["data"] == []  # the refused upload stored nothing


@pytest.mark.slow
def test_upload_reupload_update_list_and_remove(server, url):
    _, kb = server
    first = upload(url, "giraffes.md", GIRAFFES)
    assert first.status_code == 200, first.text
    added = first.json()
    assert (added["name"], added["status"], added["uploaded"]) == ("giraffes.md", "added", True)
    assert added["chunks"] >= 1 and added["sha256"] == hashlib.sha256(GIRAFFES.encode()).hexdigest()
    assert upload(url, "giraffes.md", GIRAFFES).json()["status"] == "unchanged"
    assert upload(url, "My zoo (v2).txt", ZOO).json()["status"] == "added"
    changed = upload(url, "giraffes.md", GIRAFFES + "\nGerald has a sister called Gina.\n").json()
    assert changed["status"] == "updated" and changed["sha256"] != added["sha256"]

    listed = listing(url)
    docs = {d["name"]: d for d in listed["data"]}
    assert set(docs) == {"giraffes.md", "My zoo (v2).txt"}
    assert docs["giraffes.md"]["sha256"] == changed["sha256"]
    assert docs["giraffes.md"]["pages"] is None and docs["giraffes.md"]["added"] > 0
    assert listed["chunks"] == sum(d["chunks"] for d in docs.values())
    assert listed["embedding_model"] == "minilm-l6" and listed["knowledge_base"] == "docs"

    gone = remove(url, "My zoo (v2).txt")
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert error_of(remove(url, "My zoo (v2).txt"), 404)["code"] == "document_not_found"
    assert [d["name"] for d in listing(url)["data"]] == ["giraffes.md"]
    passages = ask(url, "When does the Riverside Zoo open and what do tickets cost?")[0]
    assert all(p["name"] != "My zoo (v2).txt" for p in passages["passages"])
    assert remove(url, "giraffes.md").status_code == 200
    with Store.open(kb, create=False) as store:  # no orphans: the chunks went with them
        assert store.documents() == [] and store.count_chunks() == 0 and store.check() == []


@pytest.mark.slow
def test_ask_streams_passages_then_the_answer_then_its_citations(url):
    upload(url, "giraffes.md", GIRAFFES)
    upload(url, "zoo.txt", ZOO)
    events = ask(url, "How tall is Gerald the giraffe?", k=3)
    assert events[-1] == "[DONE]"
    kinds = [e["type"] for e in events[:-1]]
    assert kinds[0] == "passages" and kinds[-1] == "citations"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) - 2 > 3  # streamed in pieces
    passages = events[0]["passages"]
    assert [p["number"] for p in passages] == list(range(1, len(passages) + 1))
    best = passages[0]
    assert best["name"] == "giraffes.md" and "5.8 metres" in best["text"]
    assert best["page"] is None and best["cosine"] >= 0.35
    assert [p["score"] for p in passages] == sorted((p["score"] for p in passages), reverse=True)
    answer = "".join(e["text"] for e in events[1:-2])
    end = events[-2]
    assert answer.strip() and end["finish_reason"] in ("stop", "length")
    assert all(1 <= n <= len(passages) for n in end["cited"])
    if not end["asked"]:  # cited in the text itself
        assert all(f"[{n}]" in answer for n in end["cited"])

    whole = httpx.post(
        url + "/documents/ask",
        json={
            "question": "How tall is Gerald the giraffe?",
            "k": 3,
            "max_tokens": 48,
            "stream": False,
        },
        headers=AUTH,
        timeout=180,
    ).json()
    assert whole["answer"] == answer  # greedy: the stream and the JSON say the same
    assert whole["passages"] == passages
    assert (whole["cited"], whole["asked"]) == (end["cited"], end["asked"])


@pytest.mark.slow
def test_nothing_found_is_said_instead_of_generating(url):
    for _ in range(2):  # an empty knowledge base, then one about something else
        events = ask(url, OFF_TOPIC)
        assert events[0] == {"type": "passages", "passages": []}
        assert "Nothing in the knowledge base" in events[1]["text"]
        assert events[2] == {
            "type": "citations", "cited": [], "asked": False, "finish_reason": "nothing_found"
        }  # fmt: skip
        assert events[3:] == ["[DONE]"]
        upload(url, "giraffes.md", GIRAFFES)


BAD_UPLOADS = [
    ("bad base64", {"name": "a.md", "content_base64": "not base64!"}, "content_base64", "base64"),
    ("unsupported kind", {"name": "photo.png", "content_base64": "aGk="}, "name", "unsupported"),
    ("a path up", {"name": "../../etc/passwd", "content_base64": "aGk="}, "name", "path"),
    ("an absolute path", {"name": "/tmp/giraffe-upload.md", "content_base64": "aGk="}, "name", "path"),
    ("a windows path", {"name": "..\\evil.md", "content_base64": "aGk="}, "name", "path"),
    ("binary", {"name": "a.txt", "content_base64": base64.b64encode(b"\x00\x01bin").decode()}, "content_base64", "binary"),
    ("empty", {"name": "a.md", "content_base64": ""}, "content_base64", "empty"),
    ("not UTF-8", {"name": "a.txt", "content_base64": base64.b64encode("café".encode("latin-1")).decode()}, "content_base64", "UTF-8"),
    ("no content", {"name": "a.md"}, "content_base64", "Field required"),
    ("a number for a name", {"name": 7, "content_base64": "aGk="}, "name", "string"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case,body,param,phrase", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_refused_by_name_and_store_nothing(server, url, case, body, param, phrase):
    _, kb = server
    files = sorted(p.name for p in kb.parent.iterdir())
    r = httpx.post(url + "/documents", json=body, headers=AUTH, timeout=60)
    error = error_of(r, 400)
    assert error["param"] == param and phrase in error["message"]
    assert listing(url)["data"] == []
    assert sorted(p.name for p in kb.parent.iterdir()) == files  # no file appeared


BAD_QUESTIONS = [
    ("empty question", {"question": "  "}, "question"),
    ("k of 0", {"question": "hi", "k": 0}, "k"),
    ("no room for passages", {"question": "hi", "max_tokens": 2040}, "max_tokens"),
    ("temperature too hot", {"question": "hi", "temperature": 5.0}, "temperature"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case,body,param", BAD_QUESTIONS, ids=[b[0] for b in BAD_QUESTIONS])
def test_bad_questions_are_refused_by_name(url, case, body, param):
    r = httpx.post(url + "/documents/ask", json=body, headers=AUTH, timeout=60)
    assert error_of(r, 400)["param"] == param


@pytest.mark.slow
def test_an_upload_over_the_body_limit_is_413_and_the_limit_is_announced(url):
    limit = listing(url)["max_upload_bytes"]
    assert 0 < limit < BODY_LIMIT
    fits = ("Giraffes are tall. " * (limit // 19))[: limit - 100]
    r = upload(url, "large.txt", "Giraffes are tall. " * (BODY_LIMIT // 10))
    assert error_of(r, 413)["type"] == "invalid_request_error"
    assert listing(url)["data"] == []
    big = upload(url, "large.txt", fits)  # just under the announced limit goes in
    assert big.status_code == 200, big.text
    assert big.json()["chunks"] > 5


@pytest.mark.slow
def test_a_server_without_a_knowledge_base_says_how_to_start_one(tiny_folder):
    with running_server(str(tiny_folder)) as url:
        r = httpx.get(url + "/documents")
        assert "--kb" in error_of(r, 404)["message"]
        assert error_of(httpx.post(url + "/documents/ask", json={"question": "hi"}), 404)


@pytest.mark.slow
def test_a_client_that_hangs_up_mid_answer_frees_its_slot(url):
    def health():
        return httpx.get(url + "/health").json()

    upload(url, "giraffes.md", GIRAFFES)
    question = "Tell me a long story about Gerald the giraffe."
    knobs = {"max_tokens": 100, "temperature": 1.2, "seed": 7}  # sampled: a long answer
    whole = sum(e["type"] == "delta" for e in ask(url, question, **knobs)[:-1])
    assert whole > 40, "the seeded answer should be long enough to tell a hang-up from an end"
    before = health()["decode_steps"]
    body = {"question": question, **knobs}
    with httpx.stream("POST", url + "/documents/ask", json=body, headers=AUTH, timeout=120) as r:
        deltas = 0
        for line in r.iter_lines():
            deltas += '"delta"' in line
            if deltas == 5:
                assert health()["running"] == 1
                break  # leaving the stream closes the connection
    assert wait_until(lambda: health()["running"] == 0, timeout=30)
    assert health()["decode_steps"] - before < whole // 2  # same seed, cut short
