// The search page's script (devise-serve): queries /api/search, /api/captions and /api/duplicates, shows the results.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), q = $("q"), kInput = $("k"), status = $("status");
  const results = $("results"), detail = $("detail"), main = $("main"), captions = $("captions");
  let searchSeq = 0, detailSeq = 0;

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    let body = {};
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
    return body;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function card(hit) {
    const figure = el("figure", "result");
    figure.tabIndex = 0;
    figure.dataset.row = hit.row;
    figure.title = hit.id;
    const img = el("img");
    // A busy server answers 503: try again a little later, a few times.
    let tries = 0;
    img.addEventListener("error", () => {
      if (tries++ < 3) setTimeout(() => { img.src = hit.thumbnail_url + "?retry=" + tries; }, 1000 * tries);
    });
    img.src = hit.thumbnail_url;
    img.alt = hit.id;
    const caption = el("figcaption");
    caption.append(el("span", "id", "#" + hit.rank + " " + hit.id), el("span", "score", hit.score.toFixed(3)));
    // "More like this": search by this image's row (its stored embedding, nothing uploaded).
    const more = el("button", "more-like", "More like this");
    more.type = "button";
    more.title = "Images like " + hit.id;
    more.addEventListener("click", (event) => { event.stopPropagation(); searchLike(hit, kInput.value || kInput.defaultValue); });
    figure.append(img, caption, more);
    figure.addEventListener("click", () => show(hit, figure));
    figure.addEventListener("keydown", (event) => { if (event.key === "Enter") show(hit, figure); });
    return figure;
  }

  // params: the query string of /api/search (q=..., or like_row=...); describe: the status line's words.
  async function run(params, describe) {
    const seq = ++searchSeq;
    say("Searching\u2026");
    try {
      const data = await getJSON("/api/search?" + params.toString());
      if (seq !== searchSeq) return;
      results.replaceChildren(...data.results.map(card));
      const unknown = (data.unknown_words || []).length
        ? " (no word vector for: " + data.unknown_words.join(", ") + "; ignored)" : "";
      say(data.results.length + " images " + describe + unknown);
      history.replaceState(null, "", "?" + params.toString());
    } catch (error) {
      if (seq === searchSeq) { results.replaceChildren(); say(error.message, true); }
    }
  }

  function search(text, k) {
    run(new URLSearchParams({ q: text, k: k }), "for \u201c" + text + "\u201d");
  }

  function searchLike(hit, k) {
    close();
    run(new URLSearchParams({ like_row: hit.row, k: k }), "like " + hit.id);
  }

  // Near-duplicates: each group of copies of one picture, its members with their score to their nearest copy.
  async function duplicates(threshold) {
    const seq = ++searchSeq;
    close();
    say("Looking for near-duplicates (the first time, every image is read)\u2026");
    const params = threshold ? new URLSearchParams({ threshold: threshold }) : new URLSearchParams();
    try {
      const data = await getJSON("/api/duplicates?" + params.toString());
      if (seq !== searchSeq) return;
      results.replaceChildren(...data.groups.map((group, i) => {
        const section = el("section", "dup-group");
        section.append(el("h2", "", "Group " + (i + 1) + ": " + group.size + " images, best score " + group.best_score.toFixed(3)));
        const members = el("div", "dup-members");
        members.append(...group.members.map(card));
        section.append(members);
        return section;
      }));
      const shown = data.groups.length < data.groups_found ? " (the " + data.groups.length + " largest shown)" : "";
      say(data.groups_found + " groups of near-duplicates at threshold " + data.threshold + shown);
      history.replaceState(null, "", "?duplicates=" + encodeURIComponent(data.threshold));
    } catch (error) {
      if (seq === searchSeq) { results.replaceChildren(); say(error.message, true); }
    }
  }

  async function show(hit, figure) {
    const seq = ++detailSeq;
    document.querySelectorAll(".result.selected").forEach((node) => node.classList.remove("selected"));
    figure.classList.add("selected");
    detail.hidden = false;
    main.classList.add("with-detail");
    $("detail-img").src = hit.image_url;
    $("detail-img").alt = hit.id;
    const when = dated(hit);
    $("detail-id").replaceChildren(hit.id + " \u00b7 score " + hit.score.toFixed(3), ...(when ? [el("br"), when] : []));
    captions.replaceChildren(el("li", "", "\u2026"));
    try {
      const data = await getJSON(hit.captions_url + "?k=5");
      if (seq !== detailSeq) return;
      captions.replaceChildren(...data.captions.map((c) => {
        const item = el("li", "caption", c.caption);
        item.append(el("span", "score", c.score.toFixed(3)));
        return item;
      }));
    } catch (error) {
      if (seq === detailSeq) captions.replaceChildren(el("li", "error", error.message));
    }
  }

  // The photo's date as the index stores it: when it was taken (EXIF), else when its file was modified.
  function dated(hit) {
    if (!hit.date) return "";
    return (hit.date_source === "exif" ? "taken " : "modified ") + hit.date.slice(0, 16).replace("T", " ");
  }

  // A URL's combined query or filters (what /api/search takes besides q and like_row) in words.
  function describe(params) {
    const quoted = (text) => "\u201c" + text + "\u201d";
    const parts = [];
    if (params.get("q")) parts.push("for " + quoted(params.get("q")));
    params.getAll("like_row").forEach((row) => parts.push("like image " + row));
    params.getAll("not").forEach((text) => parts.push("not " + quoted(text)));
    params.getAll("under").forEach((folder) => parts.push("in " + folder + "/"));
    if (params.get("since")) parts.push("since " + params.get("since"));
    if (params.get("until")) parts.push("until " + params.get("until"));
    if (params.get("min_score")) parts.push("scoring at least " + params.get("min_score"));
    return parts.join(", ");
  }

  function close() {
    detail.hidden = true;
    main.classList.remove("with-detail");
    document.querySelectorAll(".result.selected").forEach((node) => node.classList.remove("selected"));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = q.value.trim();
    if (!text) { say("Type what you are looking for.", true); return; }
    search(text, kInput.value || kInput.defaultValue);
  });
  $("close").addEventListener("click", close);
  $("dups").addEventListener("click", () => duplicates());
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });

  // A page URL runs its query: a bookmark, or a combined / filtered query written by hand
  // (?q=...&like_row=...&not=...&under=...&since=...&until=...&min_score=..., as /api/search takes them).
  const QUERY_KEYS = ["q", "k", "like_row", "not", "text_weight", "like_weight", "not_weight", "under", "since", "until", "min_score"];
  const params = new URLSearchParams(location.search);
  if (params.get("k")) kInput.value = params.get("k");
  if (params.get("q") || params.get("like_row")) {
    const query = new URLSearchParams([...params].filter(([key]) => QUERY_KEYS.includes(key)));
    if (!query.get("k")) query.set("k", kInput.value || kInput.defaultValue);
    q.value = params.get("q") || "";
    run(query, describe(query));
  }
  else if (params.get("duplicates")) duplicates(params.get("duplicates"));
})();
