// The Documents tab: upload files into the server's knowledge base, list and remove
// them, and ask a question: the retrieved passages arrive first, then the answer as it
// is generated, then the passages it cites. [n] in the answer links to passage n.
// Uses request(), events(), $, errorNote() and renderMarkdown() from the other scripts;
// loaded before app.js, which calls setupDocuments() once the page is ready.
"use strict";

const docs = { controller: null, maxUpload: 0, passages: [] };

function setupDocuments() {
  $("#doc-files").addEventListener("change", async (event) => {
    await uploadFiles([...event.target.files]);
    event.target.value = ""; // the same file again is a new choice
  });
  const drop = $("#doc-drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    uploadFiles([...event.dataTransfer.files]);
  });
  $("#ask-form").addEventListener("submit", (event) => { event.preventDefault(); askDocuments(); });
  $("#question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("#ask-form").requestSubmit(); }
  });
  $("#ask-stop").addEventListener("click", () => docs.controller?.abort());
  document.addEventListener("tabshown", (event) => { if (event.detail === "tab-documents") listDocuments(); });
}

// ---- the list ----------------------------------------------------------------------------
async function listDocuments() {
  const list = $("#doc-list");
  try {
    const result = await (await request("GET", "/documents")).json();
    docs.maxUpload = result.max_upload_bytes;
    list.replaceChildren(...result.data.map(documentItem));
    list.dataset.count = String(result.data.length);
    $("#doc-stats").textContent = `knowledge base “${result.knowledge_base}” · ${plural(result.data.length, "document")} · ` +
      `${plural(result.chunks, "passage")} · embedded with ${result.embedding_model}`;
    $("#tab-documents").dataset.kb = "ready";
  } catch (error) {
    $("#doc-stats").replaceChildren(errorNote(error.message));
    list.replaceChildren();
    $("#tab-documents").dataset.kb = "missing";
  }
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function documentItem(d) {
  const item = document.createElement("li");
  item.className = "doc";
  item.dataset.name = d.name;
  const name = cell("span", d.name.split("/").pop(), "doc-name");
  name.title = d.uploaded ? "uploaded here" : "added with `giraffe rag add`: " + d.name;
  const added = new Date(d.added * 1000).toLocaleString();
  const meta = cell("span", `${d.pages ? plural(d.pages, "page") + " · " : ""}${plural(d.chunks, "passage")} · ${added}`, "muted doc-meta");
  meta.title = "sha256 " + d.sha256;
  const remove = cell("button", "Remove", "quiet remove");
  remove.type = "button";
  remove.title = "Remove it and its passages from the knowledge base (no file is touched)";
  remove.addEventListener("click", async () => {
    remove.disabled = true;
    try { await request("DELETE", "/documents/" + encodeURIComponent(d.name)); }
    catch (error) { item.append(errorNote(error.message)); }
    listDocuments();
  });
  item.append(name, remove, meta);
  return item;
}

// ---- uploads -----------------------------------------------------------------------------
function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1)); // drop "data:...;base64,"
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function uploadFiles(files) {
  const log = $("#upload-log");
  for (const file of files) {
    const line = cell("li", `${file.name}: reading…`);
    log.prepend(line);
    if (docs.maxUpload && file.size > docs.maxUpload) {
      line.replaceChildren(errorNote(`${file.name}: ${(file.size / 1e6).toFixed(1)} MB is more than this server accepts ` +
        `(${(docs.maxUpload / 1e6).toFixed(1)} MB; start it with a larger --max-body-bytes)`));
      continue;
    }
    try {
      line.textContent = `${file.name}: reading, splitting into passages, embedding…`;
      const body = { name: file.name, content_base64: await base64Of(file) };
      const result = await (await request("POST", "/documents", body)).json();
      line.textContent = `${result.name}: ${result.status} (${plural(result.chunks, "passage")})`;
      line.dataset.status = result.status;
    } catch (error) {
      line.replaceChildren(errorNote(error.message));
      line.dataset.status = "error";
    }
  }
  listDocuments();
}

// ---- questions ---------------------------------------------------------------------------
function passageCard(p) {
  const card = document.createElement("div");
  card.className = "card passage";
  card.id = "passage-" + p.number;
  const where = `${p.name}${p.page !== null ? ", page " + p.page : ""}`;
  const head = cell("div", "", "passage-head");
  head.append(cell("b", `[${p.number}]`), cell("span", ` ${where}`), cell("span", `cosine ${p.cosine.toFixed(2)}`, "muted score"));
  head.title = p.document + ` · characters ${p.start}–${p.end}`;
  card.append(head, cell("div", p.text, "passage-text"));
  return card;
}

// The answer as Markdown, each valid [n] a link that shows passage n.
function renderAnswer(text) {
  return renderMarkdown(text).replace(/\[(\d+)\]/g, (whole, n) =>
    +n >= 1 && +n <= docs.passages.length ? `<a class="cite" href="#passage-${n}" data-n="${n}">[${n}]</a>` : whole);
}

function showPassage(n, scroll) {
  document.querySelectorAll(".passage.shown").forEach((c) => c.classList.remove("shown"));
  const card = $("#passage-" + n);
  if (!card) return;
  card.classList.add("shown");
  if (scroll) card.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

async function askDocuments() {
  const question = $("#question").value.trim();
  if (!question || docs.controller) return;
  const out = $("#doc-answer"), passages = $("#passages"), note = $("#cite-note");
  out.hidden = false;
  out.dataset.state = "streaming";
  out.dataset.chunks = "0";
  out.querySelector(".body").replaceChildren();
  passages.replaceChildren();
  passages.dataset.count = "0";
  note.textContent = "";
  docs.passages = [];
  docs.controller = new AbortController();
  $("#ask").disabled = true;
  $("#ask-stop").disabled = false;
  let text = "";
  try {
    const body = { question, k: +$("#ask-k").value || 4, stream: true, temperature: 0, max_tokens: 256 };
    const response = await request("POST", "/documents/ask", body, docs.controller.signal);
    for await (const event of events(response)) {
      if (event.type === "passages") {
        docs.passages = event.passages;
        const title = cell("p", "Passages given to the model, most similar first:", "muted passages-title");
        passages.replaceChildren(...(event.passages.length ? [title] : []), ...event.passages.map(passageCard));
        passages.dataset.count = String(event.passages.length);
      } else if (event.type === "delta") {
        text += event.text;
        out.dataset.chunks = String(+out.dataset.chunks + 1);
        out.querySelector(".body").innerHTML = renderAnswer(text);
      } else if (event.type === "citations") {
        out.dataset.finish = event.finish_reason;
        out.dataset.cited = event.cited.join(",");
        event.cited.forEach((n) => $("#passage-" + n)?.classList.add("cited"));
        if (event.asked && event.cited.length) {
          note.textContent = `The answer cites no passage itself; asked afterwards, the model names [${event.cited[0]}].`;
        } else if (event.asked || (!event.cited.length && docs.passages.length)) {
          note.textContent = "The answer cites none of these passages: check it against them.";
        }
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") out.append(errorNote(error.message));
    else out.dataset.finish = "stopped";
  } finally {
    out.dataset.state = "done";
    docs.controller = null;
    $("#ask").disabled = false;
    $("#ask-stop").disabled = true;
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a.cite");
  if (!link) return;
  event.preventDefault();
  showPassage(link.dataset.n, true);
});
document.addEventListener("mouseover", (event) => {
  const link = event.target.closest("a.cite");
  if (link) showPassage(link.dataset.n, false);
});
