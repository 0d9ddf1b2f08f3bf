// A small Markdown renderer for chat answers: escapes all HTML first, then adds
// headings, paragraphs, lists, fenced and inline code, bold, italic and links.
// It never loads anything: links are plain anchors, images are not rendered.
"use strict";

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function renderInline(text) {
  // code spans first, so their contents are not formatted
  return text.split(/(`[^`]+`)/g).map((part) => {
    if (part.startsWith("`") && part.endsWith("`") && part.length > 1) {
      return `<code>${part.slice(1, -1)}</code>`;
    }
    return part
      .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
      .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" rel="noopener noreferrer" target="_blank">$1</a>');
  }).join("");
}

function renderMarkdown(source) {
  const lines = escapeHtml(source).split("\n");
  const out = [];
  let paragraph = [], list = null, code = null;
  const flushParagraph = () => {
    if (paragraph.length) out.push(`<p>${renderInline(paragraph.join("<br>"))}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (list) out.push(`<${list.tag}>${list.items.map((i) => `<li>${renderInline(i)}</li>`).join("")}</${list.tag}>`);
    list = null;
  };
  for (const line of lines) {
    if (code !== null) {
      if (/^\s*```/.test(line)) { out.push(`<pre><code>${code.join("\n")}</code></pre>`); code = null; }
      else code.push(line);
      continue;
    }
    let m;
    if (/^\s*```/.test(line)) { flushParagraph(); flushList(); code = []; }
    else if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
      flushParagraph(); flushList();
      out.push(`<h${m[1].length + 2}>${renderInline(m[2])}</h${m[1].length + 2}>`);
    } else if ((m = line.match(/^\s*(?:[-*+]|(\d+)[.)])\s+(.*)$/))) {
      flushParagraph();
      const tag = m[1] ? "ol" : "ul";
      if (!list || list.tag !== tag) { flushList(); list = { tag, items: [] }; }
      list.items.push(m[2]);
    } else if (!line.trim()) { flushParagraph(); flushList(); }
    else { flushList(); paragraph.push(line); }
  }
  if (code !== null) out.push(`<pre><code>${code.join("\n")}</code></pre>`); // still streaming
  flushParagraph(); flushList();
  return out.join("");
}
