// giraffe's web page: chat, a token-probability playground and a tokenizer view,
// all talking to the same OpenAI-compatible API as any other client (giraffe's own
// endpoints besides: /tokenize, /inside, /documents, /health). Nothing is fetched
// from outside this server.
// Every <section class="tab"> becomes a tab; the Documents tab lives in documents.js.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const store = {
  get: (key, fallback) => { try { return JSON.parse(localStorage.getItem("giraffe." + key)) ?? fallback; } catch { return fallback; } },
  set: (key, value) => localStorage.setItem("giraffe." + key, JSON.stringify(value)),
};
const state = { model: null };

// ---- tabs ------------------------------------------------------------------------
function addTab(section) {
  const button = document.createElement("button");
  button.textContent = section.dataset.title;
  button.setAttribute("role", "tab");
  button.id = "tabbtn-" + section.id.replace(/^tab-/, "");
  button.addEventListener("click", () => showTab(section.id));
  $("#tabs").append(button);
}

function showTab(id) {
  document.querySelectorAll("section.tab").forEach((s) => { s.hidden = s.id !== id; });
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.id === "tabbtn-" + id.replace(/^tab-/, "")));
  store.set("tab", id);
  document.dispatchEvent(new CustomEvent("tabshown", { detail: id }));
}

// ---- sampling controls -------------------------------------------------------------
function mountSettings(panel, name) {
  panel.append($("#settings-template").content.cloneNode(true));
  const saved = store.get("settings." + name, {});
  panel.querySelectorAll("input").forEach((input) => {
    if (saved[input.name] !== undefined) input.value = saved[input.name];
    const output = input.parentElement.querySelector("output");
    const show = () => { if (output) output.textContent = input.value; };
    input.addEventListener("input", () => { show(); saved[input.name] = input.value; store.set("settings." + name, saved); });
    show();
  });
}

function readSettings(panel) {
  const value = (n) => panel.querySelector(`input[name=${n}]`).value;
  const body = {
    temperature: +value("temperature"), top_p: +value("top_p"), top_k: +value("top_k"),
    min_p: +value("min_p"), repetition_penalty: +value("repetition_penalty"), max_tokens: +value("max_tokens"),
  };
  if (value("seed") !== "") body.seed = parseInt(value("seed"), 10);
  return body;
}

// ---- talking to the server -----------------------------------------------------------
async function api(path, body, signal) {
  return request("POST", path, body, signal);
}

async function request(method, path, body, signal) {
  const headers = { "Content-Type": "application/json" };
  const key = store.get("key", "");
  if (key) headers.Authorization = "Bearer " + key;
  const init = { method, headers, signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401) { $("#key-box").hidden = false; $("#api-key").focus(); }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// Server-sent events from a fetch response: yields each JSON payload until [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const payload = JSON.parse(data);
      if (payload.error) throw new Error(payload.error.message);
      yield payload;
    }
  }
}

// ---- chat ------------------------------------------------------------------------------
const chat = { messages: store.get("chat", []), controller: null };

function messageElement(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.dataset.role = role;
  const body = document.createElement("div");
  body.className = "body";
  body.innerHTML = role === "assistant" ? renderMarkdown(text) : escapeHtml(text).replace(/\n/g, "<br>");
  div.append(body);
  return div;
}

function renderChat() {
  const box = $("#messages");
  box.replaceChildren(...chat.messages.map((m) => messageElement(m.role, m.content)));
  if (!chat.messages.length) box.innerHTML = '<p class="muted empty">Say hello. The conversation stays in this browser.</p>';
  box.scrollTop = box.scrollHeight;
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#regenerate").disabled = busy;
  $("#stop").disabled = !busy;
}

async function answer() {
  const panel = $("#tab-chat [data-settings]");
  const system = $("#system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(chat.messages);
  const element = messageElement("assistant", "");
  element.dataset.state = "streaming";
  element.dataset.chunks = "0";
  $(".empty")?.remove();
  $("#messages").append(element);
  chat.controller = new AbortController();
  setBusy(true);
  let text = "";
  try {
    const body = { model: state.model, messages, stream: true, ...readSettings(panel) };
    const response = await api("/v1/chat/completions", body, chat.controller.signal);
    for await (const chunk of events(response)) {
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.delta.content) {
        text += choice.delta.content;
        element.dataset.chunks = String(+element.dataset.chunks + 1);
        $(".body", element).innerHTML = renderMarkdown(text);
        $("#messages").scrollTop = $("#messages").scrollHeight;
      }
      if (choice.finish_reason) element.dataset.finish = choice.finish_reason;
    }
  } catch (error) {
    if (error.name !== "AbortError") element.append(errorNote(error.message));
    else element.dataset.finish = "stopped";
  } finally {
    element.dataset.state = "done";
    chat.controller = null;
    setBusy(false);
  }
  if (text) { chat.messages.push({ role: "assistant", content: text }); store.set("chat", chat.messages); }
}

function errorNote(message) {
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = message;
  return p;
}

function setupChat() {
  $("#system").value = store.get("system", "");
  $("#system").addEventListener("input", () => store.set("system", $("#system").value));
  $("#chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("#chat-input").value.trim();
    if (!text || chat.controller) return;
    chat.messages.push({ role: "user", content: text });
    store.set("chat", chat.messages);
    $("#chat-input").value = "";
    renderChat();
    answer();
  });
  $("#chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("#chat-form").requestSubmit(); }
  });
  $("#stop").addEventListener("click", () => chat.controller?.abort());
  $("#regenerate").addEventListener("click", () => {
    if (chat.messages.at(-1)?.role === "assistant") chat.messages.pop();
    if (!chat.messages.length) return;
    store.set("chat", chat.messages);
    renderChat();
    answer();
  });
  $("#clear").addEventListener("click", () => { chat.messages = []; store.set("chat", []); renderChat(); });
  renderChat();
}

// ---- playground: every token clickable, with its probability and the alternatives -----------
const playground = { controller: null };

function probabilityColour(p) {
  return `hsl(${Math.round(120 * p)}, 70%, 82%)`; // green when likely, red when surprising
}

function visible(token) {
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

function showTokenDetail(span) {
  document.querySelectorAll("#completion .tok.selected").forEach((s) => s.classList.remove("selected"));
  span.classList.add("selected");
  const steps = JSON.parse(span.dataset.steps);
  const detail = $("#token-detail");
  detail.replaceChildren();
  for (const step of steps) {
    const p = Math.exp(step.logprob);
    const alternatives = Object.entries(step.top).sort((a, b) => b[1] - a[1]);
    const rank = alternatives.findIndex(([t]) => t === step.token) + 1;
    const card = document.createElement("div");
    card.className = "step";
    card.innerHTML = `<h3>“${escapeHtml(visible(step.token))}”</h3>
      <p><b>${(100 * p).toFixed(1)} %</b> probability · ${(-step.logprob / Math.LN2).toFixed(2)} bits of surprise
      · ${rank ? "rank " + rank : "outside the top " + alternatives.length}</p>`;
    const table = document.createElement("table");
    table.className = "alternatives";
    for (const [token, lp] of alternatives) {
      const q = Math.exp(lp);
      const row = table.insertRow();
      if (token === step.token) row.className = "chosen";
      row.insertCell().textContent = visible(token);
      row.insertCell().innerHTML = `<div class="bar" style="width:${Math.max(1, 100 * q).toFixed(1)}%"></div>`;
      row.insertCell().textContent = (100 * q).toFixed(1) + " %";
    }
    card.append(table);
    detail.append(card);
  }
}

async function complete() {
  const out = $("#completion");
  const prompt = $("#prompt").value;
  out.replaceChildren();
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt-text";
  promptSpan.textContent = prompt;
  out.append(promptSpan);
  out.dataset.state = "streaming";
  playground.controller = new AbortController();
  $("#complete").disabled = true;
  $("#complete-stop").disabled = false;
  let pending = []; // tokens whose text is not shown yet (part of a multi-byte character)
  try {
    const body = { model: state.model, prompt, stream: true, logprobs: 5, ...readSettings($("#tab-playground [data-settings]")) };
    const response = await api("/v1/completions", body, playground.controller.signal);
    for await (const chunk of events(response)) {
      const choice = chunk.choices[0];
      if (!choice) continue;
      const lp = choice.logprobs;
      if (lp) lp.tokens.forEach((token, i) => pending.push({ token, logprob: lp.token_logprobs[i], top: lp.top_logprobs[i] }));
      if (choice.text && pending.length) {
        const span = document.createElement("span");
        span.className = "tok";
        span.textContent = choice.text;
        span.dataset.steps = JSON.stringify(pending);
        span.style.background = probabilityColour(Math.exp(Math.min(...pending.map((s) => s.logprob))));
        span.title = pending.map((s) => `${(100 * Math.exp(s.logprob)).toFixed(1)} %`).join(", ");
        span.addEventListener("click", () => showTokenDetail(span));
        out.append(span);
        pending = [];
      }
      if (choice.finish_reason) {
        const end = document.createElement("span");
        end.className = "finish";
        end.textContent = ` [${choice.finish_reason}]`;
        out.append(end);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") out.append(errorNote(error.message));
  } finally {
    out.dataset.state = "done";
    playground.controller = null;
    $("#complete").disabled = false;
    $("#complete-stop").disabled = true;
  }
}

// ---- tokenizer view ------------------------------------------------------------------------
let tokenizeTimer = null;

async function tokenize() {
  const text = $("#tok-input").value;
  const output = $("#tok-output");
  try {
    const result = await (await api("/tokenize", { text })).json();
    output.replaceChildren(...result.pieces.map((piece, i) => {
      const chip = document.createElement("span");
      chip.className = "chip c" + (i % 5);
      chip.innerHTML = `<span class="piece">${escapeHtml(visible(piece))}</span><span class="id">${result.tokens[i]}</span>`;
      return chip;
    }));
    const chars = [...text].length;
    $("#tok-stats").textContent = `${result.count} tokens · ${chars} characters · ` +
      (result.count ? `${(chars / result.count).toFixed(2)} characters per token` : "");
    output.dataset.count = String(result.count);
  } catch (error) {
    output.replaceChildren(errorNote(error.message));
  }
}

// ---- inside the model: attention, next-token table, logit lens -------------------------------
const INSIDE_HELP = {
  attention: "How much each token looks at every earlier token, in every layer and head. Head view: lines from the token under the mouse; model view: one small map per layer × head (click one).",
  next: "After each token, the model's five most likely next tokens, and how likely it found the token that really came next (its rank and surprisal: −log₂ p bits).",
  lens: "The logit lens: the final norm and output head applied to every layer's hidden state, showing what the model would predict if it stopped at that layer. Colour: that prediction's probability.",
};

function cell(tag, text, className) {
  const element = document.createElement(tag);
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

function nextTable(data) {
  const table = document.createElement("table");
  table.className = "inside-table next";
  const head = table.createTHead().insertRow();
  ["#", "token", "the model's top 5 next tokens", "actually next", "rank", "probability", "surprisal"].forEach((h) => head.append(cell("th", h)));
  const body = table.createTBody();
  for (const p of data.positions) {
    const row = body.insertRow();
    row.append(cell("td", p.index), cell("td", visible(p.token), "mono"));
    const top = document.createElement("td");
    for (const c of p.top) {
      const chip = cell("span", `${visible(c.token)} ${(100 * c.prob).toFixed(0)}%`, "cand mono");
      chip.style.background = probabilityColour(c.prob);
      if (c.id === p.next_id) chip.classList.add("hit");
      top.append(chip);
    }
    row.append(top);
    const next = cell("td", p.next_token === null ? "—" : visible(p.next_token), "mono");
    if (p.prob !== null) next.style.background = probabilityColour(p.prob);
    row.append(next, cell("td", p.rank ?? "—"), cell("td", p.prob === null ? "—" : (100 * p.prob).toFixed(1) + " %"),
      cell("td", p.surprisal_bits === null ? "—" : p.surprisal_bits.toFixed(2) + " bits"));
  }
  return table;
}

function lensTable(data) {
  const wrap = document.createElement("div");
  wrap.className = "scroll";
  const table = document.createElement("table");
  table.className = "inside-table lens";
  const head = table.createTHead().insertRow();
  head.append(cell("th", "layer ↓ token →"));
  data.tokens.forEach((t) => head.append(cell("th", visible(t), "mono")));
  const body = table.createTBody();
  data.layers.forEach((name, layer) => {
    const row = body.insertRow();
    row.append(cell("th", name));
    data.top_tokens[layer].forEach((token, position) => {
      const p = data.top_probs[layer][position];
      const td = cell("td", visible(token), "mono");
      td.style.background = probabilityColour(p);
      td.title = `${(100 * p).toFixed(1)} %`;
      row.append(td);
    });
  });
  wrap.append(table);
  return wrap;
}

async function inside(view) {
  const out = $("#inside-output");
  out.dataset.state = "loading";
  out.dataset.view = view;
  $("#inside-help").textContent = INSIDE_HELP[view];
  out.replaceChildren(cell("p", "computing…", "muted"));
  try {
    const data = await (await api("/inside/" + view, { text: $("#inside-text").value })).json();
    if (view === "attention") {
      const frame = document.createElement("iframe");
      frame.className = "attention-frame";
      frame.sandbox = "allow-scripts"; // its own inline script only; no access to this page
      frame.srcdoc = data.html;
      out.replaceChildren(frame);
    } else {
      out.replaceChildren(view === "next" ? nextTable(data) : lensTable(data));
    }
    out.dataset.state = "done";
  } catch (error) {
    out.replaceChildren(errorNote(error.message));
    out.dataset.state = "error";
  }
}

// ---- start -------------------------------------------------------------------------------
async function start() {
  document.querySelectorAll("section.tab").forEach(addTab);
  document.querySelectorAll("[data-settings]").forEach((panel) => mountSettings(panel, panel.closest("section").id));
  const health = await (await fetch("/health")).json();
  state.model = health.model;
  $("#model-name").textContent = `${health.model} · ${health.context} tokens of context`;
  $("#api-key").value = store.get("key", "");
  $("#api-key").addEventListener("change", () => store.set("key", $("#api-key").value));
  setupChat();
  $("#complete").addEventListener("click", complete);
  $("#complete-stop").addEventListener("click", () => playground.controller?.abort());
  $("#tok-input").addEventListener("input", () => { clearTimeout(tokenizeTimer); tokenizeTimer = setTimeout(tokenize, 150); });
  tokenize();
  document.querySelectorAll("#inside-buttons button").forEach((b) => b.addEventListener("click", () => inside(b.dataset.view)));
  setupDocuments(); // documents.js
  showTab(store.get("tab", "tab-chat"));
  document.body.dataset.ready = "true";
}

start();
