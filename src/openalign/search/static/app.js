// OpenALIGN search page: builds a query (text, image upload or indexed image id, +/- terms),
// calls the JSON API and renders the result grid. Clicking a result searches by that image.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { file: null, imageId: null };

function addTerm(sign, text = "") {
  const row = document.createElement("div");
  row.className = "term";
  row.innerHTML = `<select class="sign" aria-label="add or subtract"><option value="1">+</option>` +
    `<option value="-1">−</option></select><input type="text" class="term-text" placeholder="term">` +
    `<input type="number" class="term-weight" step="0.1" min="0" max="10" value="1" aria-label="weight">` +
    `<button type="button" title="remove term">×</button>`;
  row.querySelector("select").value = String(sign);
  row.querySelector(".term-text").value = text;
  row.querySelector("button").onclick = () => row.remove();
  $("terms").appendChild(row);
  row.querySelector(".term-text").focus();
}

function readTerms() {
  const terms = [];
  for (const row of document.querySelectorAll("#terms .term")) {
    const text = row.querySelector(".term-text").value.trim();
    const w = parseFloat(row.querySelector(".term-weight").value || "1");
    if (text) terms.push({ text, weight: Number(row.querySelector("select").value) * (isNaN(w) ? 1 : w) });
  }
  return terms;
}

function setQueryImage(label, src) {
  $("query-image").classList.toggle("hidden", !label);
  $("query-label").textContent = label || "";
  $("query-thumb").src = src || "";
}

function clearImage() {
  state.file = null; state.imageId = null; $("image").value = "";
  setQueryImage(null);
}

function status(msg, isError = false) {
  $("status").textContent = msg;
  $("status").className = isError ? "error" : "";
}

async function search() {
  const text = $("text").value.trim();
  const k = parseInt($("k").value || "12", 10);
  const terms = readTerms();
  let resp;
  if (state.file) {
    const fd = new FormData();
    fd.append("file", state.file); fd.append("text", text);
    fd.append("terms", JSON.stringify(terms)); fd.append("k", String(k));
    resp = await fetch("/api/search/image", { method: "POST", body: fd });
  } else if (text || state.imageId !== null || terms.length) {
    const body = { text: text || null, image_id: state.imageId, terms, k };
    resp = await fetch("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                        body: JSON.stringify(body) });
  } else {
    status("Type a query, choose an image or click a result.");
    return;
  }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const d = data.detail;
    status(`Error ${resp.status}: ${typeof d === "string" ? d : JSON.stringify(d)}`, true);
    return;
  }
  render(data.results);
  status(`${data.results.length} results in ${data.took_ms.toFixed(1)} ms`);
}

function render(results) {
  const grid = $("grid");
  grid.innerHTML = "";
  for (const r of results) {
    const card = document.createElement("figure");
    card.className = "result";
    card.dataset.id = r.id;
    card.title = "search by this image";
    const img = document.createElement("img");
    img.src = r.thumbnail; img.alt = r.caption || `image ${r.id}`; img.loading = "lazy";
    const score = document.createElement("div");
    score.className = "score"; score.textContent = `#${r.id} · ${r.score.toFixed(3)}`;
    const cap = document.createElement("figcaption");
    cap.className = "caption"; cap.textContent = r.caption || r.path || r.url || "";
    card.append(img, score, cap);
    card.onclick = () => {
      state.file = null; state.imageId = r.id; $("image").value = ""; $("text").value = "";
      setQueryImage(`image #${r.id}`, r.thumbnail);
      search();
    };
    grid.appendChild(card);
  }
}

$("search-form").onsubmit = (e) => { e.preventDefault(); search(); };
$("add-plus").onclick = () => addTerm(1);
$("add-minus").onclick = () => addTerm(-1);
$("clear-image").onclick = clearImage;
$("image").onchange = () => {
  const f = $("image").files[0];
  if (!f) return;
  state.file = f; state.imageId = null;
  setQueryImage(f.name, URL.createObjectURL(f));
  search();
};
fetch("/api/info").then((r) => r.json()).then((i) => {
  const recall = i.recall_at_10 == null ? "" : ` · recall@10 ${i.recall_at_10.toFixed(3)} (measured at build)`;
  $("info").textContent = `${i.count} images · ${i.index_type} index${recall} · model ${i.model}`;
}).catch(() => {});
