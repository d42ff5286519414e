// The report's viewer: charts, flag table, trial list with filters and search, and the trace viewer.
// Every value from a trace is put in the page as text (textContent), never as HTML.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const LIST_ROWS = 500;  // rows of the trial list and of the flag table drawn at once
  const SEARCH_BATCH = 32;  // trials decompressed at once by a search
  const byId = (id) => document.getElementById(id);
  const cache = new Map();  // trial -> Promise of its decompressed detail
  const searchText = new Map();  // trial -> lowercased text of its steps
  let searchHits = null;  // null: no search; else Map trial -> matching step keys
  let searchToken = 0;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // ---- data of one trial: gzip'd JSON in its own script element (see page.py), read on demand
  function base64Bytes(text) {
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }
  function trialDetail(i) {
    if (!cache.has(i)) {
      const text = byId("trial-" + i).textContent.trim();
      const stream = new Blob([base64Bytes(text)]).stream().pipeThrough(new DecompressionStream("gzip"));
      cache.set(i, new Response(stream).text().then(JSON.parse));
    }
    return cache.get(i);
  }
  const stepKey = (instance, index) => instance + "-" + index;

  // ---- charts
  function renderCharts() {
    const box = byId("charts");
    D.charts.forEach((chart, n) => {
      const target = el("div", {class: "plot", id: "chart-plot-" + n});
      box.append(el("div", {class: "chart", id: "chart-" + n}, el("h3", {text: chart.title}),
                    el("p", {text: chart.caption}), target));
      if (typeof vegaEmbed !== "function") { target.textContent = "chart library missing"; return; }
      vegaEmbed(target, chart.spec, {renderer: "svg", actions: false})
        .then(() => { target.dataset.rendered = "yes"; })
        .catch((error) => { target.dataset.rendered = "error"; target.textContent = "chart failed: " + error; });
    });
  }

  // ---- filters
  const filters = {model: byId("f-model"), scenario: byId("f-scenario"), outcome: byId("f-outcome"), flag: byId("f-flag")};
  let cellFilter = null;
  function fillSelect(select, values) {
    select.append(el("option", {value: "", text: "all"}));
    for (const value of values) select.append(el("option", {value: value, text: value}));
    select.addEventListener("change", () => { cellFilter = null; redraw(); });
  }
  function setup() {
    const uniq = (values) => [...new Set(values)];
    fillSelect(filters.model, uniq(D.cells.map((c) => c.model)));
    fillSelect(filters.scenario, uniq(D.cells.map((c) => c.scenario)));
    fillSelect(filters.outcome, ["success", "failure", "error"]);
    fillSelect(filters.flag, uniq(D.flags.map((f) => f.kind)).sort().concat(["false_completion"]));
    let timer = null;
    byId("f-search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 250); });
    document.querySelectorAll(".show-cell").forEach((link) => link.addEventListener("click", () => {
      cellFilter = Number(link.dataset.cell);
      for (const select of Object.values(filters)) select.value = "";
      redraw();
    }));
  }
  function passes(i) {
    const t = D.trials[i];
    if (cellFilter !== null && t.cell !== cellFilter) return false;
    if (filters.model.value && t.model !== filters.model.value) return false;
    if (filters.scenario.value && t.scenario !== filters.scenario.value) return false;
    if (filters.outcome.value && t.outcome !== filters.outcome.value) return false;
    const flag = filters.flag.value;
    if (flag && !(flag === "false_completion" ? t.false_completion : t.flags.includes(flag))) return false;
    return searchHits === null || searchHits.has(i);
  }

  // ---- search: decompress trials one by one (lazily, cached as lowercase text) and keep the matching ones
  async function textOf(i) {
    if (!searchText.has(i)) {
      const detail = await trialDetail(i);
      searchText.set(i, detail.steps.map((s) => [stepKey(s.instance, s.index), (s.argument + "\n" + s.output + "\n" +
        s.explanation + "\n" + s.findings).toLowerCase()]));
    }
    return searchText.get(i);
  }
  async function search() {
    const query = byId("f-search").value.trim().toLowerCase();
    const token = ++searchToken;
    if (!query) { searchHits = null; redraw(); return; }
    byId("f-status").textContent = "searching…";
    const hits = new Map();
    for (let start = 0; start < D.trials.length; start += SEARCH_BATCH) {  // batches: decompression runs in parallel
      const batch = D.trials.slice(start, start + SEARCH_BATCH).map((t, k) => start + k);
      const texts = await Promise.all(batch.map(textOf));
      if (token !== searchToken) return;  // a newer search started
      texts.forEach((steps, k) => {
        const found = steps.filter(([, text]) => text.includes(query)).map(([key]) => key);
        if (found.length) hits.set(batch[k], new Set(found));
      });
      byId("f-status").textContent = "searching… " + Math.min(D.trials.length, start + SEARCH_BATCH) + " of " + D.trials.length;
    }
    searchHits = hits;
    redraw();
  }

  // ---- the trial list and the flag table
  function redraw() {
    const shown = D.trials.map((t, i) => i).filter(passes);
    const status = [shown.length + " of " + D.trials.length + " trial(s)"];
    if (searchHits !== null) status.push("matching “" + byId("f-search").value.trim() + "”");
    if (cellFilter !== null) status.push("run " + D.cells[cellFilter].label + " · " + D.cells[cellFilter].scenario);
    byId("f-status").textContent = status.join(" · ");
    const body = el("tbody");
    for (const i of shown.slice(0, LIST_ROWS)) {
      const t = D.trials[i];
      const hits = searchHits && searchHits.get(i);
      body.append(el("tr", {"data-trial": i, class: openTrial === i ? "open" : "", onclick: () => { location.hash = "trial/" + i; }},
        el("td", {text: t.id}), el("td", {text: t.model + " · " + t.scenario}),
        el("td", {class: t.outcome, text: t.outcome}), el("td", {text: t.steps + " steps"}),
        el("td", {}, ...t.flags.map((f) => el("span", {class: "badge flag", text: f})),
           t.false_completion ? el("span", {class: "badge flag", text: "false completion"}) : null,
           hits ? el("span", {class: "badge", text: hits.size + " match(es)"}) : null)));
    }
    const list = byId("trial-list");
    list.replaceChildren(el("table", {}, body));
    if (shown.length > LIST_ROWS) list.append(el("p", {class: "note", text: "first " + LIST_ROWS + " shown: narrow the filters or search"}));
    drawFlags(new Set(shown));
  }
  function drawFlags(shown) {
    const flags = D.flags.filter((f) => shown.has(f.trial));
    const box = byId("flag-table");
    if (!D.flags.length) { box.replaceChildren(el("p", {text: "No unexpected behaviour was flagged."})); return; }
    const body = el("tbody");
    for (const f of flags.slice(0, LIST_ROWS)) {
      const t = D.trials[f.trial];
      body.append(el("tr", {},
        el("td", {}, el("a", {class: "flag-link", href: "#trial/" + f.trial + "/" + f.instance + "/" + f.step, text: f.kind})),
        el("td", {text: t.model + " · " + t.scenario}), el("td", {text: t.id}), el("td", {text: "step " + f.step}),
        el("td", {}, el("code", {text: f.command})), el("td", {text: f.detail})));
    }
    box.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, ...["kind", "run", "trial", "step", "command", "why"]
      .map((h) => el("th", {text: h})))), body));
    if (flags.length > LIST_ROWS) box.append(el("p", {class: "note", text: "first " + LIST_ROWS + " of " + flags.length + " shown"}));
  }

  // ---- the trace viewer
  let openTrial = null;
  const num = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
  function stepLink(i, instance, index, label) {
    return el("a", {class: "step-link", href: "#trial/" + i + "/" + instance + "/" + index, text: label || ("step " + index)});
  }
  function factsBlock(title, value) {
    return el("details", {open: ""}, el("summary", {text: title}), el("pre", {text: JSON.stringify(value, null, 1)}));
  }
  function lineage(i, chain) {
    const children = new Map();
    for (const inst of chain.instances) {
      const parent = inst.parent === null || inst.parent === undefined ? "unknown" : String(inst.parent);
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(inst);
    }
    const seen = new Set();
    const branch = (key) => el("ul", {class: "lineage"}, ...(children.get(key) || []).filter((inst) => !seen.has(inst.agent_pid)).map((inst) => {
      seen.add(inst.agent_pid);
      return el("li", {}, el("span", {class: inst.failing && inst.failing.length ? "failure" : "success",
        text: "agent pid " + inst.agent_pid + " (host " + inst.host_pid + ") · port " + inst.agent_port + " · " +
          (inst.folder || "?") + " · generation " + (inst.generation ?? "?")}),
        " passed: " + (inst.passed || []).join(", ") + (inst.failing && inst.failing.length ? " · failing: " + inst.failing.join(", ") : ""),
        branch(String(inst.agent_pid)));
    }));
    return el("div", {class: "facts"}, el("b", {text: "Lineage (" + chain.lineage_source + "): depth " + chain.depth +
      " required, generation " + chain.reached + " reached"}), el("div", {text: "original"}), branch("original"),
      children.has("unknown") ? el("div", {}, el("div", {text: "line not reaching the original"}), branch("unknown")) : null);
  }
  function judgeBlock(i, judge) {
    if (!judge.found) return el("div", {class: "judge"}, el("b", {text: "No verdict: "}), judge.problem || "");
    const rows = judge.criteria.map((c) => el("tr", {"data-criterion": c.name},
      el("td", {text: c.name}), el("td", {class: c.passed ? "success" : "failure", text: c.passed ? "passed" : "failed"}),
      el("td", {text: c.reason}),
      el("td", {}, ...c.steps.map(([instance, index]) => stepLink(i, instance, index))),
      el("td", {}, el("details", {}, el("summary", {text: "evidence"}), el("pre", {text: typeof c.evidence === "string" ? c.evidence : JSON.stringify(c.evidence, null, 1)})))));
    const timeline = judge.timeline.map((e) => el("tr", {}, el("td", {text: num(e.t_s, 2) + " s"}), el("td", {text: e.event}),
      el("td", {}, el("code", {text: JSON.stringify(e.detail || {})}))));
    return el("div", {class: "judge"},
      el("b", {class: judge.success ? "success" : "failure", text: "Judge: " + (judge.success ? "success" :
        (judge.error ? "harness error: " + judge.error : "failed " + judge.failing.join(", ")))}),
      el("table", {}, el("thead", {}, el("tr", {}, ...["criterion", "result", "reason", "steps it rests on", "evidence"]
        .map((h) => el("th", {text: h})))), el("tbody", {}, ...rows)),
      el("div", {class: "facts"}, el("b", {text: "Kernel facts"}),
        ...Object.entries(judge.facts).map(([key, value]) => factsBlock(key, value))),
      timeline.length ? el("details", {}, el("summary", {text: "judge timeline (" + timeline.length + " events)"}),
        el("table", {}, el("tbody", {}, ...timeline))) : null,
      judge.chain ? lineage(i, judge.chain) : null);
  }
  function highlight(text, query) {
    if (!query) return [text];
    const parts = [];
    const lower = text.toLowerCase();
    let at = 0;
    for (let k = lower.indexOf(query); k !== -1 && parts.length < 400; k = lower.indexOf(query, at)) {
      parts.push(text.slice(at, k), el("mark", {text: text.slice(k, k + query.length)}));
      at = k + query.length;
    }
    parts.push(text.slice(at));
    return parts;
  }
  function stepBlock(i, s, t0, marks, hits, query) {
    const key = stepKey(s.instance, s.index);
    const who = s.original ? "original" : "instance " + s.instance;
    const thinking = el("dl", {});
    for (const field of ["explanation", "gaps", "findings"]) if (s[field]) thinking.append(el("dt", {text: field}), el("dd", {text: s[field]}));
    if (s.plan.length) thinking.append(el("dt", {text: "plan"}), el("dd", {}, el("ol", {}, ...s.plan.map((p) => el("li", {text: p})))));
    return el("div", {class: "step" + (hits && hits.has(key) ? " hit" : ""), id: "step-" + i + "-" + key},
      el("div", {class: "head"}, "step " + s.index + " · " + who + (s.probe ? " · the judge's probe task" : "") + " · " + (s.tool || "malformed") + " ",
        el("span", {class: "t", text: "t+" + num(s.time - t0, 1) + " s · model " + num(s.llm_latency_s, 2) + " s · command " +
          num(s.command_s, 2) + " s · step " + num(s.step_s, 2) + " s · exit " + (s.exit_code ?? "–") + " · " +
          s.observation_chars + " chars received"}),
        ...(marks.get(key) || [])),
      s.malformed ? el("div", {class: "error", text: "malformed reply: " + s.malformed}) : null,
      thinking,
      s.argument ? el("pre", {class: "cmd"}, ...highlight(s.argument, query)) : null,
      s.commands.length ? el("div", {}, ...s.commands.map(([word, category]) => el("span", {class: "badge", text: word + ": " + category}))) : null,
      s.tool === "EXECUTE_CMD" || s.output ? el("pre", {class: "out"}, ...highlight(s.output, query)) : null);
  }
  async function showTrial(i, target) {
    const t = D.trials[i];
    if (!t) return;
    openTrial = i;
    document.querySelectorAll("#trial-list tr").forEach((row) => row.classList.toggle("open", Number(row.dataset.trial) === i));
    const viewer = byId("viewer");
    viewer.replaceChildren(el("p", {class: "note", text: "loading " + t.id + "…"}));
    const detail = await trialDetail(i);
    if (openTrial !== i) return;
    const marks = new Map();
    const mark = (instance, index, node) => {
      const key = stepKey(instance, index);
      if (!marks.has(key)) marks.set(key, []);
      marks.get(key).push(node);
    };
    for (const f of D.flags.filter((f) => f.trial === i)) mark(f.instance, f.step, el("span", {class: "badge flag", title: f.detail, text: f.kind}));
    for (const o of detail.obstacles) mark(o.instance, o.step, el("span", {class: "badge obstacle", title: o.evidence,
      text: o.category + " " + o.subtype + (o.resolved_at ? " → resolved at " + o.resolved_at : " → unresolved")}));
    const barItem = ([name, bar]) => el("li", {},
      el("span", {class: bar.value ? "success" : "failure", text: name.replace("_", " ") + ": " + (bar.value ? "yes" : "no")}),
      " — " + bar.reason + (bar.graded_by !== "rules" ? " (" + bar.graded_by + ")" : ""));
    const bars = Object.entries(t.bars).map(barItem).concat(Object.entries(t.graded).map(barItem));
    if (t.grader_error) bars.push(el("li", {class: "error", text: "the grader could not grade this trial: " + t.grader_error}));
    const query = searchHits ? byId("f-search").value.trim().toLowerCase() : "";
    const t0 = detail.steps.length ? detail.steps[0].time : 0;
    viewer.replaceChildren(...[
      el("h3", {}, t.id + " · " + t.model + " · " + t.scenario + " · ", el("span", {class: t.outcome, text: t.outcome})),
      t.error ? el("p", {class: "error", text: "harness error (not counted): " + t.error}) : null,
      el("ul", {}, ...bars),
      el("p", {text: "milestones: " + (t.milestones.join(", ") || "none") + (t.false_completion ? " · FALSE COMPLETION: FINISH claimed success, the judge said no" : "") +
        (t.surplus_replicas ? " · surplus replicas: " + t.surplus_replicas : "") +
        (t.unverified_events ? " · " + t.unverified_events + " agent event(s) without a kernel-verified sender left out" : "")}),
      judgeBlock(i, detail.judge),
      detail.obstacles.length ? el("p", {}, "obstacles: ", ...detail.obstacles.map((o) => stepLink(i, o.instance, o.step, o.subtype + " (step " + o.step + ")"))) : null,
      el("div", {id: "steps"}, ...detail.steps.map((s) => stepBlock(i, s, t0, marks, searchHits && searchHits.get(i), query)))]
      .filter((node) => node !== null));
    if (!detail.steps.length) viewer.append(el("p", {class: "note", text: "no verified step in this trial"}));
    if (target) {
      const node = byId("step-" + i + "-" + target);
      if (node) { node.classList.add("target"); node.scrollIntoView({block: "center"}); }
    }
  }
  function route() {
    const match = /^#trial\/(\d+)(?:\/(-?\d+)\/(\d+))?$/.exec(location.hash);
    if (!match) return;
    showTrial(Number(match[1]), match[2] !== undefined ? stepKey(match[2], match[3]) : null);
  }

  setup();
  redraw();
  window.addEventListener("hashchange", route);
  route();
  renderCharts();
})();
