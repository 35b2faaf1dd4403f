// DeAI explorer: a hash-routed single page over the coordinator's read API.
// Each view mounts its layout once and then updates in place whenever the
// server-sent event stream reports a change, so nothing ever needs a reload.
"use strict";

(() => {
  const main = document.getElementById("main");
  const HAS_CHARTS = typeof window.Chart === "function";
  const state = { view: null, feed: [], names: {}, sort: { key: "online", asc: false }, auditTried: false };

  // --- small helpers -------------------------------------------------------------------

  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  const nf = new Intl.NumberFormat("en-US");
  const num = (v, d = 0) => Number(v || 0).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
  function money(micro) {
    const v = Number(micro || 0) / 1e6;
    const digits = v !== 0 && Math.abs(v) < 1 ? 6 : 2;
    return v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: digits }) + " DEAI";
  }
  function moneyEl(micro) {  // for big numbers in cards: compact, the unit small, never wrapping
    const v = Number(micro || 0) / 1e6;
    const text = Math.abs(v) >= 1e5
      ? v.toLocaleString("en-US", { notation: "compact", maximumFractionDigits: 2 }) : money(micro).slice(0, -5);
    return h("span", { title: money(micro) }, text, h("small", { class: "unit" }, " DEAI"));
  }
  const price = (p) => `${nf.format(p)} µ/1k`;
  // Ordered ids (``service.ordered_ids``: a prefix, 12 hex digits of time, 16 random, and a
  // task's ".tNNNNN"): their start is the time, shared by a busy moment's ids; the random
  // end tells them apart.
  const ORDERED = /^([a-z]+_)[0-9a-f]{12}([0-9a-f]{16})(\.t\d+)?$/;
  const short = (id, n = 10) => {
    const m = ORDERED.exec(id || "");
    if (m) return m[1] + "…" + m[2].slice(-Math.max(4, n - m[1].length)) + (m[3] || "");
    return id && id.length > n + 2 ? id.slice(0, n) + "…" : id || "";
  };
  const nameOf = (id) => state.names[id] || short(id, 12);
  const clock = (ts) => new Date(ts * 1000).toLocaleTimeString("en-GB", { hour12: false });
  function ago(ts) {
    if (!ts) return "—";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return `${Math.round(s)}s ago`;
    if (s < 3600) return `${Math.round(s / 60)}m ago`;
    if (s < 86400) return `${Math.round(s / 3600)}h ago`;
    return new Date(ts * 1000).toLocaleDateString();
  }
  const badge = (status, text) => h("span", { class: `badge ${status}` }, text || status);
  const link = (href, text, title) => h("a", { href, title }, text);
  const providerLink = (id) => link(`#/providers/${id}`, nameOf(id), id);
  const jobLink = (id) => link(`#/jobs/${id}`, short(id, 14), id);
  const hashText = (hex) => h("span", { class: "mono", title: hex }, short(hex, 12));
  const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + b, 0);

  // A provider's standing (core/standing.py): the worst fact wins, so a slashed cheater
  // that keeps heartbeating never shows a green "online".
  const STANDING = { slashed: "slashed", probation: "probation", below_stake: "below stake", offline: "offline", online: "online" };
  const STANDING_RANK = { slashed: 0, probation: 1, below_stake: 2, offline: 3, online: 4 };
  function standingOf(p) { return p.standing || (p.online ? "online" : "offline"); }
  function standingBadge(p) {
    const s = standingOf(p);
    const facts = [p.online ? "heartbeating" : "offline", `${nf.format(p.slashes || 0)} slash${p.slashes === 1 ? "" : "es"}`,
      p.probation ? "on probation (every result replicated)" : null, `stake ${money(p.stake)}`].filter(Boolean).join(" · ");
    const text = s === "slashed" && p.slashes > 1 ? `slashed ×${p.slashes}` : STANDING[s] || s;
    return h("span", { class: `badge ${s}`, "data-testid": "standing", "data-standing": s, title: facts }, text);
  }

  // Ledger accounts (core/ledger.py) by name: providers' names, the job of an escrow.
  function accountName(account) {
    const [kind, ...rest] = String(account).split(":");
    const who = rest.join(":");
    const owner = (id) => (id === "network" ? "the network" : state.names[id] || short(id, 10));
    if (!who) return account;  // fee, mint
    if (kind === "acct") return owner(who);
    if (kind === "pending") return `pending of ${owner(who)}`;
    if (kind === "stake") return `stake of ${owner(who)}`;
    if (kind === "escrow") return `escrow of job ${short(who, 14)}`;
    return short(account, 22);
  }
  function accountLink(account) {
    const [kind, ...rest] = String(account).split(":");
    const target = ["acct", "pending", "stake"].includes(kind) && rest.length ? rest.join(":") : account;
    return link(`#/ledger/account/${encodeURIComponent(target)}`, accountName(account), account);
  }

  // Event fields that are money (µ) or a price (µ per 1,000 units): shown as such.
  const MONEY_KEYS = new Set(["amount", "bounty", "forfeited", "clawed_back", "escrow", "cost", "refunded", "owed", "charged", "penalty", "paid"]);
  const PRICE_KEYS = new Set(["price", "max_price"]);

  // A 429 (the coordinator's busiest reads are bounded, public_reads.py) is asked again
  // after what it says to wait (Retry-After, details.retry_after) or a growing back-off,
  // a few times, before the view says it could not load.
  const RETRIES_429 = 4;
  const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
  async function api(path, opts) {
    let r, body;
    for (let i = 0; ; i++) {
      r = await fetch(path, { headers: { accept: "application/json" }, ...opts });
      body = await r.json().catch(() => null);
      if (r.status !== 429 || i >= RETRIES_429) break;
      const asked = Number(r.headers.get("retry-after") || (body && body.error && body.error.details && body.error.details.retry_after));
      const wait = Number.isFinite(asked) && asked > 0 ? Math.min(asked, 10) * 1000 : 500 * 2 ** i;
      await sleep(wait + Math.random() * 500);
    }
    if (!r.ok) {
      const e = new Error((body && body.error && body.error.message) || `HTTP ${r.status}`);
      e.status = r.status;
      throw e;
    }
    return body;
  }

  // /api/providers and /api/hardware/claims are paged (by provider id, at most 500 a
  // page): follow `next`, up to a bound a page can draw (a network of more providers
  // shows its first PAGES_AT_MOST pages).
  const PAGES_AT_MOST = 20;
  async function pagedList(path, key) {
    const rows = [];
    let after = null;
    for (let i = 0; i < PAGES_AT_MOST; i++) {
      const d = await api(`${path}${after === null ? "" : `?after=${encodeURIComponent(after)}`}`);
      rows.push(...d[key]);
      if (!d.next || !d[key].length) break;
      after = d.next;
    }
    return { [key]: rows };
  }
  const providerList = () => pagedList("/api/providers", "providers");
  const gpuCount = (hw) => hw.gpu_count ?? (hw.gpus || []).length;

  function card(title, body, opts = {}) {
    return h("section", { class: `card ${opts.flush ? "flush" : ""}`, "data-testid": opts.testid }, title ? h("h2", {}, title) : null, body);
  }
  function stat(label, value, hint, cls, testid) {
    return h("div", { class: `card stat ${cls || ""}`, "data-testid": testid },
      h("div", { class: "label" }, label), h("div", { class: "value" }, value), hint ? h("div", { class: "hint" }, hint) : null);
  }
  function table(cols, rows, opts = {}) {
    if (!rows.length) return h("div", { class: "empty" }, opts.empty || "Nothing yet.");
    const head = h("tr", {}, cols.map((c) => {
      const sortable = opts.sort && c.sort !== false;
      const sorted = sortable && opts.sort.key === c.key;
      return h("th", {
        class: [c.num ? "num" : "", sortable ? "sortable" : "", sorted ? "sorted" : "", sorted && opts.sort.asc ? "asc" : ""].join(" "),
        onclick: sortable ? () => opts.onSort(c.key) : null, title: c.title,
      }, c.label);
    }));
    const body = rows.map((r) => h("tr", {
      class: opts.href ? "link" : "", "data-testid": opts.rowTestid, "data-id": opts.rowId ? opts.rowId(r) : null,
      onclick: opts.href ? (ev) => { if (!ev.target.closest("a")) location.hash = opts.href(r); } : null,
    }, cols.map((c) => h("td", { class: `${c.num ? "num" : ""} ${c.wrap ? "wrap" : ""}` }, c.render ? c.render(r) : r[c.key]))));
    return h("div", { class: "table-wrap" }, h("table", { "data-testid": opts.testid }, h("thead", {}, head), h("tbody", {}, body)));
  }
  function progress(tasks, big) {
    const total = sum(tasks) || 1;
    const seg = (k, n) => (n ? h("span", { class: k, style: `width:${(100 * n) / total}%` }) : null);
    return h("div", { class: `progress ${big ? "big" : ""}`, title: Object.entries(tasks || {}).map(([k, v]) => `${v} ${k}`).join(", ") },
      seg("accepted", tasks.done || tasks.accepted || 0), seg("verifying", tasks.verifying || 0),
      seg("running", tasks.assigned || tasks.running || 0), seg("failed", tasks.failed || 0));
  }
  function kv(pairs) {
    return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  // --- charts (optional: without Chart.js the numbers still show) ------------------------

  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function chartBox(testid) {
    const box = h("div", { class: "chart-box", "data-testid": testid });
    if (HAS_CHARTS) box.append(h("canvas", {}));
    return box;
  }
  function palette() {
    return [css("--accent"), css("--accepted"), css("--verifying"), css("--warn"), css("--failed"), css("--running")];
  }
  function baseOptions(extra) {
    const grid = css("--border"), text = css("--muted");
    const axis = { grid: { color: grid }, ticks: { color: text, maxRotation: 0, autoSkipPadding: 16 }, border: { color: grid } };
    return {
      responsive: true, maintainAspectRatio: false, animation: { duration: 250 },
      plugins: { legend: { labels: { color: text, boxWidth: 12 } }, tooltip: { intersect: false, mode: "index" } },
      scales: { x: { ...axis }, y: { ...axis, beginAtZero: true } }, ...extra,
    };
  }
  function upsertChart(view, key, box, make, fallback) {
    if (!HAS_CHARTS) { box.replaceChildren(h("div", { class: "chart-fallback" }, fallback())); return; }
    const cfg = make();
    const old = view.charts[key];
    if (old) {
      old.data.labels = cfg.data.labels;
      cfg.data.datasets.forEach((ds, i) => {
        if (old.data.datasets[i]) Object.assign(old.data.datasets[i], ds); else old.data.datasets.push(ds);
      });
      old.data.datasets.length = cfg.data.datasets.length;
      old.update("none");
    } else {
      view.charts[key] = new window.Chart(box.querySelector("canvas"), cfg);
    }
  }

  // --- the live event stream ------------------------------------------------------------

  function describe(ev) {
    const b = ev.body || {};
    const shard = (task) => { const m = /\.t0*(\d+)$/.exec(task || ""); return m ? `#${m[1]}` : short(task); };
    switch (ev.kind) {
      case "provider_registered": return [`Provider `, providerLink(ev.subject), ` registered (${num(b.compute_units, 2)} CU)`];
      case "bond": return [providerLink(ev.subject), ` bonded ${money(b.amount)}`];
      case "faucet": return [`Faucet: ${money(b.amount)} to ${short(ev.subject)}`];
      case "job_submitted": return [`Job `, jobLink(ev.subject), ` submitted · ${b.tasks} shards · escrow ${money(b.escrow)}`];
      case "task_assigned": return [`Shard ${shard(ev.subject)} of `, jobLink(b.job), ` → `, providerLink(b.provider), ` at ${price(b.price)}`];
      case "task_accepted": return [`Shard ${shard(ev.subject)} of `, jobLink(b.job), ` accepted from `, providerLink(b.provider)];
      case "result_rejected": return [`Result for shard ${shard(ev.subject)} rejected from `, providerLink(b.provider)];
      case "task_failed": return [`Shard ${shard(ev.subject)} failed on `, providerLink(b.provider)];
      case "lease_expired": return [`Lease on shard ${shard(ev.subject)} expired (${b.reason || ""})`];
      case "lease_refused": return [`Lease on shard ${shard(ev.subject)} refused by the dataset's owner: `, providerLink(b.provider)];
      case "earnings_released": return [`Earnings of ${money(b.amount)} released to `, providerLink(ev.subject)];
      case "slash": return [providerLink(ev.subject), ` slashed ${money(b.amount)}${b.bounty ? ` · bounty ${money(b.bounty)}` : ""}`];
      case "withdrawal": return [`Withdrawal of ${money(b.amount)} by ${short(ev.subject)}`];
      case "check_unpaid": return [`Check fee of ${money(b.owed)} unpaid to `, providerLink(b.provider)];
      case "coordinator_started": return ["Coordinator started"];
      default:
        if (ev.kind.startsWith("job_")) return [`Job `, jobLink(ev.subject), ` ${ev.kind.slice(4)}`];
        return [`${ev.kind.replace(/_/g, " ")} `, ev.subject ? short(ev.subject, 14) : ""];
    }
  }
  function feedItem(ev, isNew) {
    return h("li", { class: isNew ? "new" : "" }, h("time", {}, clock(ev.ts)), badge(ev.kind.split("_").pop(), ev.kind), h("span", { class: "what" }, describe(ev)));
  }
  function pushFeed(ev) {
    if (state.feed.some((e) => e.id === ev.id)) return;
    state.feed.unshift(ev);
    state.feed.length = Math.min(state.feed.length, 60);
    const list = document.querySelector("[data-testid=feed]");
    if (list) {
      list.querySelector(".empty")?.remove();
      list.prepend(feedItem(ev, true));
      while (list.children.length > 30) list.lastChild.remove();
    }
  }

  function setLive(on) {
    const el = document.getElementById("live");
    el.className = `live ${on ? "on" : "off"}`;
    el.textContent = on ? "live" : "reconnecting";
  }

  // The browser retries a stream that ended by itself (a refused one ends with `retry:`),
  // but gives up for good after an answer it cannot use (a 5xx, a proxy's error page):
  // then a new stream is opened after a growing, jittered back-off, from the last event.
  let stream = null, lastEventId = null, backoff = 1000;
  function connect() {
    const es = stream = new EventSource(`/api/events/stream${lastEventId === null ? "" : `?after=${lastEventId}`}`);
    es.onopen = () => { setLive(true); backoff = 1000; };
    es.onerror = () => {
      setLive(false);
      if (es.readyState !== EventSource.CLOSED || stream !== es) return;
      stream = null;
      setTimeout(connect, backoff / 2 + Math.random() * backoff);
      backoff = Math.min(backoff * 2, 60000);
    };
    es.onmessage = (m) => {
      let ev;
      if (m.lastEventId && /^\d+$/.test(m.lastEventId)) lastEventId = m.lastEventId;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev.kind === "provider_registered" && ev.body && ev.body.name) state.names[ev.subject] = ev.body.name;
      pushFeed(ev);
      scheduleRefresh(150);
    };
  }
  window.addEventListener("pagehide", () => { if (stream) stream.close(); stream = null; });

  // --- refresh scheduling: at most one request in flight per view -------------------------

  let timer = null, inflight = false, again = false;
  function scheduleRefresh(delay = 0) {
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      if (inflight) { again = true; return; }
      inflight = true;
      await refresh();
      inflight = false;
      if (again) { again = false; scheduleRefresh(300); }
    }, delay);
  }
  async function refresh() {
    const v = state.view;
    if (!v) return;
    try {
      const data = await v.load();
      if (v === state.view) { v.update(data); v.root.querySelector(".view-error")?.remove(); }
    } catch (e) {
      if (v !== state.view) return;
      let box = v.root.querySelector(".view-error");
      if (!box) { box = h("div", { class: "card view-error error-box" }); v.root.prepend(box); }
      box.textContent = e.status === 404 ? `Not found: ${e.message}` : `Could not load: ${e.message}`;
    }
  }

  // --- views -------------------------------------------------------------------------------

  function overviewView() {
    const v = { nav: "overview", charts: {} };
    v.mount = (root) => {
      v.stats = h("div", { class: "grid stats", "data-testid": "stats" });
      v.tp = chartBox("chart-throughput"); v.px = chartBox("chart-prices"); v.cu = chartBox("chart-price-cu");
      v.provs = h("div"); v.jobs = h("div");
      const feed = h("ul", { class: "feed", "data-testid": "feed" }, state.feed.length ? state.feed.slice(0, 30).map((e) => feedItem(e)) : h("li", { class: "empty" }, "Waiting for events…"));
      root.append(
        h("div", { class: "page-head" }, h("h1", {}, "Network overview"), h("div", { class: "sub" }, "Providers, work and money on this DeAI network, updated live as events arrive.")),
        v.stats,
        h("div", { class: "grid cols-3" }, card("Throughput · tasks accepted", v.tp), card("Price per workload over time", v.px), card("Price per compute unit", v.cu)),
        h("div", { class: "grid cols-2" }, card("Providers", v.provs, { testid: "overview-providers" }), card("Live events", feed)),
        card("Recent jobs", v.jobs));
      if (!state.feed.length) {
        api("/api/events?after=0&limit=1").then((p) => api(`/api/events?after=${Math.max(0, p.last_id - 30)}&limit=30`))
          .then((p) => p.events.forEach((e) => pushFeed(e))).catch(() => {});
      }
    };
    v.load = async () => {
      const [o, provs, jobs] = await Promise.all([api("/api/explorer/overview"), providerList(), api("/api/explorer/jobs?limit=8")]);
      provs.providers.forEach((p) => { state.names[p.id] = p.name; });
      return { o, provs: provs.providers, jobs: jobs.jobs };
    };
    v.update = ({ o, provs, jobs }) => {
      const vf = o.verification;
      v.stats.replaceChildren(
        stat("Providers online", nf.format(o.providers_online), `of ${o.providers_total} registered`, o.providers_online ? "good" : "", "stat-providers-online"),
        stat("CPU cores", nf.format(o.cpus), "on online providers", "", "stat-cpus"),
        stat("GPUs", nf.format(o.gpus), "on online providers", "", "stat-gpus"),
        stat("Compute units", num(o.compute_units, 1), "1 CU ≈ 50 GFLOP/s", "", "stat-cu"),
        stat("Jobs running", nf.format(o.jobs_running), `${o.jobs.pending || 0} pending`, "", "stat-jobs-running"),
        stat("Jobs completed", nf.format(o.jobs_finished), `${o.jobs.failed || 0} failed · ${o.jobs.cancelled || 0} cancelled`, "", "stat-jobs-finished"),
        stat("Tasks / second", num(o.tasks_per_second, 2), "accepted, last minute", "", "stat-tps"),
        stat("Checks passed", nf.format(vf.checks_passed), `overhead ${num(vf.overhead * 100, 0)}%`, vf.checks_passed ? "good" : "", "stat-checks-passed"),
        stat("Checks failed", nf.format(vf.checks_failed), `${vf.verdicts} referee verdicts`, vf.checks_failed ? "bad" : "", "stat-checks-failed"),
        stat("Slashes", nf.format(vf.slashes), "stake taken for bad work", vf.slashes ? "bad" : "", "stat-slashes"),
        stat("Tasks done", nf.format(o.tasks.done || 0), `${o.tasks.queued || 0} queued · ${o.tasks.assigned || 0} running`, "", "stat-tasks-done"),
        stat("Supply", moneyEl(o.supply), `journal entry #${nf.format(o.journal_seq)}`, "", "stat-supply"));

      const acc = palette();
      upsertChart(v, "tp", v.tp, () => ({
        type: "bar",
        data: { labels: o.throughput.map((p) => clock(p.t)), datasets: [{ label: `tasks per ${Math.round(o.bucket_seconds)} s`, data: o.throughput.map((p) => p.tasks), backgroundColor: css("--accepted"), borderRadius: 3 }] },
        options: baseOptions({ plugins: { legend: { display: false } } }),
      }), () => `${sum(o.throughput.map((p) => p.tasks))} tasks accepted in the last ${Math.round(o.bucket_seconds * o.throughput.length / 60)} minutes.`);

      v.px.dataset.empty = o.prices.length ? "" : "No assignments in the last hour";
      upsertChart(v, "px", v.px, () => ({
        type: "line",
        data: { datasets: o.prices.map((s, i) => ({ label: `${s.workload} (avg µ/1k)`, data: s.points.map((p) => ({ x: p.t * 1000, y: p.avg })), borderColor: acc[i % acc.length], backgroundColor: acc[i % acc.length], tension: 0.25, pointRadius: 2 })) },
        options: baseOptions({ scales: { x: { type: "linear", grid: { color: css("--border") }, ticks: { color: css("--muted"), maxTicksLimit: 6, callback: (t) => clock(t / 1000).slice(0, 5) } }, y: { beginAtZero: true, grid: { color: css("--border") }, ticks: { color: css("--muted") } } } }),
      }), () => o.prices.length ? o.prices.map((s) => `${s.workload}: ${price(s.points[s.points.length - 1].avg)}`).join(" · ") : "No assignments in the last hour.");

      const pp = [...o.provider_prices].filter((p) => p.price_per_cu !== null).sort((a, b) => a.price_per_cu - b.price_per_cu);
      upsertChart(v, "cu", v.cu, () => ({
        type: "bar",
        data: { labels: pp.map((p) => p.name), datasets: [{ label: "µ per 1k units per CU", data: pp.map((p) => p.price_per_cu), backgroundColor: pp.map((p) => (p.online ? css("--accent") : css("--queued"))), borderRadius: 3 }] },
        options: baseOptions({ indexAxis: "y", plugins: { legend: { display: false } } }),
      }), () => pp.map((p) => `${p.name}: ${num(p.price_per_cu, 1)}`).join(" · ") || "No offers yet.");

      v.provs.replaceChildren(table([
        { key: "name", label: "Provider", render: (p) => providerLink(p.id) },
        { key: "online", label: "Status", render: (p) => standingBadge(p) },
        { key: "hw", label: "Hardware", render: (p) => `${p.hardware.cores || "?"} cores${gpuCount(p.hardware) ? ` · ${gpuCount(p.hardware)} GPU` : ""}` },
        { key: "cu", label: "CU", num: true, render: (p) => num(p.compute_units, 2) },
        { key: "price", label: "Price", num: true, render: (p) => bestOffer(p) ? price(bestOffer(p).price) : "—" },
        { key: "tasks", label: "Tasks", num: true, render: (p) => nf.format(p.tasks_done) },
      ], provs, { href: (p) => `#/providers/${p.id}`, rowTestid: "overview-provider", rowId: (p) => p.id, empty: "No provider has registered yet." }));
      v.jobs.replaceChildren(jobsTable(jobs));
    };
    return v;
  }

  function bestOffer(p) {
    return (p.offers || []).reduce((best, o) => (!best || o.price < best.price ? o : best), null);
  }

  function jobsTable(jobs) {
    return table([
      { key: "id", label: "Job", render: (j) => jobLink(j.id) },
      { key: "status", label: "Status", render: (j) => badge(j.status) },
      { key: "model", label: "Model", render: (j) => `${j.spec.kind || ""} · ${j.spec.model || ""}` },
      { key: "progress", label: "Shards", render: (j) => h("div", { style: "display:flex;align-items:center;gap:10px" }, progress(j.tasks), h("span", { class: "muted" }, `${j.tasks.done || 0}/${sum(j.tasks)}`)) },
      { key: "cost", label: "Cost", num: true, render: (j) => money(j.cost) },
      { key: "created", label: "Submitted", render: (j) => ago(j.created_at) },
    ], jobs, { href: (j) => `#/jobs/${j.id}`, rowTestid: "job-row", rowId: (j) => j.id, empty: "No job has been submitted yet." });
  }

  function providersView() {
    const v = { nav: "providers", charts: {} };
    const cols = [
      { key: "name", label: "Provider", value: (p) => p.name.toLowerCase(), render: (p) => providerLink(p.id) },
      { key: "online", label: "Status", value: (p) => STANDING_RANK[standingOf(p)] ?? 5, render: (p) => standingBadge(p) },
      { key: "cpu", label: "CPU", value: (p) => p.hardware.cpu_model || "", render: (p) => h("span", { title: p.hardware.cpu_model }, short(p.hardware.cpu_model || "?", 28)) },
      { key: "cores", label: "Cores", num: true, value: (p) => p.hardware.cores || 0, render: (p) => nf.format(p.hardware.cores || 0) },
      { key: "gpus", label: "GPUs", num: true, value: (p) => gpuCount(p.hardware), render: (p) => nf.format(gpuCount(p.hardware)) },
      { key: "mem", label: "Memory", num: true, value: (p) => p.hardware.memory_mb || 0, render: (p) => `${num((p.hardware.memory_mb || 0) / 1024, 1)} GB` },
      { key: "cu", label: "CU", num: true, value: (p) => p.compute_units, render: (p) => num(p.compute_units, 2) },
      { key: "price", label: "Price", num: true, value: (p) => (bestOffer(p) ? bestOffer(p).price : Infinity), render: (p) => (bestOffer(p) ? price(bestOffer(p).price) : "—") },
      { key: "ppcu", label: "µ/1k per CU", num: true, value: (p) => (bestOffer(p) && bestOffer(p).price_per_cu !== null ? bestOffer(p).price_per_cu : Infinity), render: (p) => (bestOffer(p) && bestOffer(p).price_per_cu !== null ? num(bestOffer(p).price_per_cu, 1) : "—") },
      { key: "stake", label: "Stake", num: true, value: (p) => p.stake, render: (p) => money(p.stake) },
      { key: "slashes", label: "Slashes", num: true, value: (p) => p.slashes || 0, render: (p) => h("span", { class: p.slashes ? "neg" : "" }, nf.format(p.slashes || 0)) },
      { key: "rep", label: "Reputation", num: true, value: (p) => p.reputation, render: (p) => num(p.reputation, 2) },
      { key: "tasks", label: "Tasks", num: true, value: (p) => p.tasks_done, render: (p) => nf.format(p.tasks_done) },
      { key: "earned", label: "Earned", num: true, value: (p) => p.earned, render: (p) => money(p.earned) },
      { key: "seen", label: "Last seen", value: (p) => p.last_seen, render: (p) => ago(p.last_seen) },
    ];
    v.mount = (root) => {
      v.body = h("div");
      const legend = h("div", { class: "legend", "data-testid": "standing-legend", style: "padding:12px 16px 0" },
        Object.keys(STANDING).map((s) => h("span", {}, badge(s, STANDING[s]))),
        h("span", {}, "the worst that holds: slashed at least once, on probation (every result replicated), stake below the minimum, no heartbeat"));
      root.append(h("div", { class: "page-head" }, h("h1", {}, "Providers"), h("div", { class: "sub" }, "Every machine that sells compute here. Click a column to sort; prices are micro-DEAI (µ) per 1,000 units, and per compute unit so different hardware compares fairly.")),
        card(null, [legend, v.body], { flush: true }));
    };
    v.load = async () => (await providerList()).providers;
    v.update = (provs) => {
      provs.forEach((p) => { state.names[p.id] = p.name; });
      const col = cols.find((c) => c.key === state.sort.key) || cols[1];
      const sorted = [...provs].sort((a, b) => {
        const x = col.value(a), y = col.value(b);
        const c = x < y ? -1 : x > y ? 1 : 0;
        return state.sort.asc ? c : -c;
      });
      v.body.replaceChildren(table(cols, sorted, {
        testid: "providers-table", rowTestid: "provider-row", rowId: (p) => p.id, href: (p) => `#/providers/${p.id}`,
        sort: state.sort, empty: "No provider has registered yet.",
        onSort: (key) => { state.sort = { key, asc: state.sort.key === key ? !state.sort.asc : false }; v.update(provs); },
      }));
    };
    return v;
  }

  function providerView(id) {
    const v = { nav: "providers", charts: {} };
    v.mount = (root) => {
      v.head = h("div", { class: "page-head" }, h("h1", {}, nameOf(id)));
      v.cards = h("div", { class: "grid cols-4" });
      v.offers = h("div"); v.checks = h("div"); v.recent = h("div"); v.hosting = h("div");
      root.append(v.head, v.cards, h("div", { class: "grid cols-2" }, card("Offers", v.offers, { testid: "offers" }), card("Verification history", v.checks, { testid: "checks" })), v.hosting, card("Latest assignments", v.recent));
    };
    v.load = () => api(`/api/explorer/providers/${encodeURIComponent(id)}?limit=20`);
    v.update = (d) => {
      const p = d.provider, hw = p.hardware, bm = p.benchmark;
      state.names[p.id] = p.name;
      v.head.replaceChildren(h("h1", {}, p.name), standingBadge(p), ...(p.standing && !["online", "offline"].includes(p.standing) ? [badge(p.online ? "online" : "offline")] : []), h("div", { class: "sub mono" }, p.id));
      const gpus = (hw.gpus || []).map((g) => g.name || g.model || JSON.stringify(g));
      v.cards.replaceChildren(
        card("Hardware", kv([["CPU", hw.cpu_model || "?"], ["Cores", nf.format(hw.cores || 0)], ["Memory", `${num((hw.memory_mb || 0) / 1024, 1)} GB`], ["GPUs", gpus.length ? gpus.join(", ") : "none"], hw.platform ? ["Platform", hw.platform] : null]), { testid: "hardware" }),
        card("Benchmark", kv([["Matmul", `${num(bm.gflops, 1)} GFLOP/s`], ["Memory", `${num(bm.mem_gbps, 1)} GB/s`], ["Compute units", num(p.compute_units, 3)], ["Threads · slots", `${p.threads} · ${p.slots}`]]), { testid: "benchmark" }),
        card("Stake and earnings", kv([["Stake", money(p.stake)], ["Slashes", nf.format(p.slashes || 0)], ["Probation", p.probation ? "yes: every result replicated" : "no"], ["Available", money(d.balance.available)], ["Pending", money(d.pending_earnings)], ["Released", money(d.released_earnings)], ["Earned in all", money(p.earned)]]), { testid: "money" }),
        card("Reputation", h("div", {}, h("div", { class: "stat" }, h("div", { class: "value" }, num(p.reputation, 2))), h("div", { class: "meter" }, h("span", { style: `width:${Math.round(100 * Math.min(1, p.reputation))}%` })),
          h("div", { class: "muted", style: "margin-top:10px" }, `${nf.format(p.tasks_done)} tasks done · last seen ${ago(p.last_seen)}`),
          h("div", { class: "evidence", style: "margin-top:6px" }, Object.entries(d.assignments).map(([k, n]) => h("span", {}, `${k} `, h("b", {}, nf.format(n)))))), { testid: "reputation" }));
      v.offers.replaceChildren(table([
        { key: "workload", label: "Workload" }, { key: "model", label: "Model" },
        { key: "price", label: "Price", num: true, render: (o) => price(o.price) },
        { key: "ppcu", label: "µ/1k per CU", num: true, render: (o) => (o.price_per_cu === null ? "—" : num(o.price_per_cu, 1)) },
      ], p.offers));
      v.checks.replaceChildren(eventsTable(d.checks.slice(0, 8), "No check has involved this provider yet: canary, replica and referee results will be listed here."),
        ...(d.checks.length > 8 ? [h("div", { style: "margin-top:8px" }, link("#/verification", "All checks →"))] : []));
      v.recent.replaceChildren(assignmentsTable(d.recent, true));
      v.hosting.replaceChildren(...(d.lease_host || (d.leases || []).length ? [
        card("Leases by the hour", h("div", {}, d.lease_host ? leaseHostsTable([d.lease_host], false) : null, leaseTable(d.leases || [], false)), { flush: true, testid: "provider-leases" }),
        h("div", { style: "height:16px" })] : []));
    };
    return v;
  }

  function assignmentsTable(rows, showJob) {
    return table([
      { key: "task", label: "Shard", render: (a) => h("span", { class: "mono", title: a.task_id }, a.task_id.split(".").pop()) },
      showJob ? { key: "job", label: "Job", render: (a) => jobLink(a.job_id) } : { key: "provider", label: "Provider", render: (a) => providerLink(a.provider_id) },
      { key: "role", label: "Role" },
      { key: "status", label: "Status", render: (a) => badge(a.status) },
      { key: "price", label: "Price", num: true, render: (a) => price(a.price) },
      { key: "took", label: "Took", num: true, render: (a) => (a.submitted_at ? `${num(a.submitted_at - a.leased_at, 1)} s` : "—") },
      { key: "digest", label: "Output", render: (a) => (a.output_digest ? hashText(a.output_digest) : a.error ? h("span", { class: "neg", title: a.error }, short(a.error, 30)) : "—") },
      { key: "leased", label: "Leased", render: (a) => ago(a.leased_at) },
    ], rows, { empty: "No assignment yet." });
  }

  function evidence(body) {
    return h("div", { class: "evidence" }, Object.entries(body || {}).map(([k, val]) => {
      const text = val === null || val === undefined ? "—" : typeof val === "object" ? JSON.stringify(val)
        : typeof val === "number" && !Number.isInteger(val) ? val.toPrecision(3) : String(val);
      const isHash = typeof val === "string" && /^[0-9a-f]{40,}$/.test(val);
      const isKey = typeof val === "string" && /^[0-9a-f]{64}$/.test(val) && state.names[val];
      if (typeof val === "number" && MONEY_KEYS.has(k)) return h("span", {}, `${k} `, h("b", { title: `${nf.format(val)} µ` }, money(val)));
      if (typeof val === "number" && PRICE_KEYS.has(k)) return h("span", {}, `${k} `, h("b", {}, price(val)));
      if (typeof val === "number" && k === "price_hour") return h("span", {}, `${k} `, h("b", {}, `${money(val)}/h`));
      return h("span", {}, `${k} `, isKey ? providerLink(val) : h("b", { class: isHash ? "mono" : "", title: text }, isHash ? short(text, 12) : short(text, 60)));
    }));
  }
  function subjectEl(subject) {
    if (state.names[subject]) return providerLink(subject);
    const m = /^(job_[0-9a-f]+)\.t0*(\d+)$/.exec(subject || "");
    if (m) return h("span", {}, `shard #${m[2]} of `, jobLink(m[1]));
    if (/^job_/.test(subject || "")) return jobLink(subject);
    return h("span", { class: "mono", title: subject }, short(subject, 18));
  }
  function eventsTable(events, empty) {
    if (!events.length) return h("div", { class: "empty" }, empty);
    return h("ul", { class: "events" }, events.map((e) => h("li", { "data-kind": e.kind },
      h("div", { class: "ev-head" }, badge(e.kind, e.kind.replace(/_/g, " ")), subjectEl(e.subject),
        h("time", { title: new Date(e.ts * 1000).toISOString() }, ago(e.ts))),
      evidence(e.body))));
  }

  function jobsView() {
    const v = { nav: "jobs", charts: {} };
    v.mount = (root) => {
      v.body = h("div");
      root.append(h("div", { class: "page-head" }, h("h1", {}, "Jobs"), h("div", { class: "sub" }, "The latest jobs on the network and how far each has come.")), card(null, v.body, { flush: true }));
    };
    v.load = async () => (await api("/api/explorer/jobs?limit=100")).jobs;
    v.update = (jobs) => v.body.replaceChildren(jobsTable(jobs));
    return v;
  }

  // Every state a cell can take (explorer_views.shard_state) and every mark on it; the
  // legend draws its swatches with the cells' own CSS, so the two cannot disagree.
  const STATES = ["queued", "running", "verifying", "accepted", "failed"];
  const MARKS = { redone: "redone (ran again, or its first result was overturned)", corrected: "corrected (result replaced after an audit)" };
  function shardLegend() {
    return h("div", { class: "legend", "data-testid": "shard-legend" },
      STATES.map((s) => h("span", {}, h("i", { class: "cell swatch", "data-state": s }), s)),
      Object.entries(MARKS).map(([m, text]) => h("span", {}, h("i", { class: `cell swatch ${m}`, "data-state": "accepted" }), text)));
  }
  function jobView(id) {
    const v = { nav: "jobs", charts: {} };
    v.mount = (root) => {
      v.head = h("div", { class: "page-head" }, h("h1", {}, `Job ${short(id, 16)}`));
      v.bar = h("div"); v.stats = h("div", { class: "grid stats" });
      v.map = h("div", { class: "shards", "data-testid": "shard-map" });
      v.provs = h("div"); v.asg = h("div");
      root.append(v.head, v.bar, v.stats, card("Shard map", [shardLegend(), v.map]), h("div", { class: "grid cols-wide", style: "margin-top:16px" }, card("Providers", v.provs), card("Latest assignments", v.asg)));
    };
    v.load = () => api(`/api/explorer/jobs/${encodeURIComponent(id)}`);
    v.update = (d) => {
      const j = d.job;
      d.providers.forEach((p) => { state.names[p.id] = p.name; });
      v.head.replaceChildren(h("h1", {}, `Job ${short(j.id, 20)}`), h("span", { "data-testid": "job-status", "data-status": j.status }, badge(j.status)),
        h("div", { class: "sub" }, `${j.spec.kind} · ${j.spec.model} · ${nf.format(j.items)} items · submitted ${ago(j.created_at)} by `, h("span", { class: "mono", title: j.owner }, short(j.owner, 12)), j.error ? h("div", { class: "neg" }, j.error) : null));
      v.bar.replaceChildren(progress({ done: d.states.accepted || 0, verifying: d.states.verifying || 0, assigned: d.states.running || 0, failed: d.states.failed || 0, queued: d.states.queued || 0 }, true));
      const total = d.shards.length;
      v.stats.replaceChildren(
        stat("Shards accepted", `${nf.format(d.states.accepted || 0)} / ${nf.format(total)}`, `${d.states.running || 0} running · ${d.states.queued || 0} queued`, "", "stat-shards"),
        stat("Redone", nf.format(d.redone ?? d.shards.filter((s) => s.redone).length), "ran again, or overturned", d.redone ? "warn" : "", "stat-redone"),
        stat("Corrected", nf.format(d.corrected || 0), "replaced after an audit", d.corrected ? "warn" : "", "stat-corrected"),
        stat("Cost so far", moneyEl(d.cost_so_far), `of ${money(j.escrow)} escrowed`, "", "stat-cost"),
        stat("Refunded", moneyEl(j.refunded), j.finished_at ? `finished ${ago(j.finished_at)}` : "when the job ends"),
        stat("Providers", nf.format(d.providers.length), `ran its shards · ${nf.format(j.units)} units`));
      if (v.map.children.length !== total) {
        v.map.replaceChildren(...d.shards.map(() => h("div", { class: "cell" })));
      }
      d.shards.forEach((s, i) => {
        const cell = v.map.children[i];
        cell.dataset.state = s.state;
        cell.classList.toggle("redone", s.redone);
        cell.classList.toggle("corrected", !!s.corrected);
        cell.title = `shard ${s.idx} · ${s.state}${s.redone ? " · redone" : ""}${s.corrected ? " · corrected" : ""} · ${s.attempts} attempt${s.attempts === 1 ? "" : "s"}${s.providers.length ? " · " + s.providers.map(nameOf).join(", ") : ""}${s.error ? " · " + s.error : ""}`;
      });
      v.provs.replaceChildren(table([
        { key: "name", label: "Provider", render: (p) => providerLink(p.id) },
        { key: "accepted", label: "Accepted", num: true, render: (p) => nf.format(p.accepted) },
        { key: "assignments", label: "Leases", num: true, render: (p) => nf.format(p.assignments) },
        { key: "paid", label: "Paid", num: true, render: (p) => money(p.paid) },
      ], d.providers, { empty: "No provider has taken a shard yet." }));
      v.asg.replaceChildren(assignmentsTable(d.assignments.slice(0, 12), false));
    };
    return v;
  }

  function verificationView() {
    const v = { nav: "verification", charts: {} };
    v.mount = (root) => {
      v.stats = h("div", { class: "grid stats" }); v.body = h("div");
      root.append(h("div", { class: "page-head" }, h("h1", {}, "Verification"), h("div", { class: "sub" }, "Canaries, replicas, referee verdicts and slashes as they happen, each with its evidence: the digests compared and which party the referee sided with.")),
        v.stats, card("Stream", v.body, { testid: "verification-stream" }));
    };
    v.load = async () => {
      const [o, ev] = await Promise.all([api("/api/explorer/overview"), api("/api/explorer/verification?limit=100")]);
      return { o, ev };
    };
    v.update = ({ o, ev }) => {
      const vf = o.verification;
      v.stats.replaceChildren(stat("Checks passed", nf.format(vf.checks_passed), "", vf.checks_passed ? "good" : ""), stat("Checks failed", nf.format(vf.checks_failed), "", vf.checks_failed ? "bad" : ""),
        stat("Referee verdicts", nf.format(vf.verdicts)), stat("Slashes", nf.format(vf.slashes), "", vf.slashes ? "bad" : ""), stat("Overhead", `${num(vf.overhead * 100, 1)}%`, "verification leases per primary"));
      v.body.replaceChildren(eventsTable(ev.events, "No verification event yet. When the network checks work (canaries, replicas, referee verdicts, slashes) each one appears here, live."));
    };
    return v;
  }

  function postingsCell(postings) {
    const shown = postings.slice(0, 4).map(([a, d]) => h("div", { class: "posting", "data-testid": "posting", "data-account": a }, accountLink(a), " ", h("span", { class: d >= 0 ? "pos" : "neg" }, `${d >= 0 ? "+" : ""}${money(d)}`)));
    return h("div", {}, shown, postings.length > 4 ? h("div", { class: "muted" }, `+${postings.length - 4} more`) : null);
  }

  const PAGE = 30;
  function ledgerView() {
    const v = { nav: "ledger", charts: {}, before: null };  // before: null is the newest page
    v.mount = (root) => {
      v.cards = h("div", { class: "grid cols-3" }); v.body = h("div");
      v.pager = h("div", { class: "pager", "data-testid": "ledger-pager" });
      const input = h("input", { placeholder: "account id, fee, mint or escrow:job_…", "aria-label": "account" });
      const form = h("form", { class: "search", onsubmit: (e) => { e.preventDefault(); if (input.value.trim()) location.hash = `#/ledger/account/${encodeURIComponent(input.value.trim())}`; } }, input, h("button", { class: "btn", type: "submit" }, "Look up"));
      root.append(h("div", { class: "page-head" }, h("h1", {}, "Ledger"), h("div", { class: "sub" }, "The hash-chained journal: every movement of money is one balanced entry that anyone can replay.")),
        v.cards, card("Account", form), h("div", { style: "height:16px" }), card("Journal entries", [v.body, v.pager], { testid: "journal" }));
    };
    v.load = async () => {
      const q = v.before === null ? "" : `&before=${v.before}`;
      const [d, provs] = await Promise.all([api(`/api/explorer/ledger?limit=${PAGE}${q}`), providerList().catch(() => null)]);
      if (provs) provs.providers.forEach((p) => { state.names[p.id] = p.name; });
      if (!d.last_audit && !state.auditTried) { state.auditTried = true; d.last_audit = await api("/api/explorer/audit", { method: "POST" }); }
      return d;
    };
    const go = (before) => { v.before = before; scheduleRefresh(); };
    v.update = (d) => {
      const a = d.last_audit;
      const run = h("button", { class: "btn primary", type: "button", onclick: async (e) => { e.target.disabled = true; e.target.textContent = "Auditing…"; await api("/api/explorer/audit", { method: "POST" }).catch(() => {}); scheduleRefresh(); } }, "Run audit");
      v.cards.replaceChildren(
        card("Head", kv([["Entries", nf.format(d.head_seq)], ["Head hash", hashText(d.head_hash)], ["Supply", money(d.supply)]])),
        card("Last audit", a ? h("div", { "data-testid": "audit" }, h("div", { style: "margin-bottom:8px" }, badge(a.result.ok ? "ok" : "bad", a.result.ok ? "chain and balances check out" : "audit FAILED")),
          kv([["Ran", `${ago(a.at)} · ${num(a.seconds * 1000, 0)} ms`], ["Entries replayed", nf.format(a.result.entries)], ["Accounts", nf.format(a.result.accounts)]]),
          a.result.problems.length ? h("ul", { class: "neg" }, a.result.problems.slice(0, 5).map((p) => h("li", {}, p))) : null) : h("div", { class: "empty" }, "No audit has run yet.")),
        card("Replay it yourself", h("div", {}, h("p", { class: "muted", style: "margin-top:0" }, "The coordinator is not trusted: fetch the journal and check the chain, every balance and the supply on your own machine."), h("code", {}, "deai ledger audit"), h("div", { style: "margin-top:12px" }, run))));
      v.body.replaceChildren(table([
        { key: "seq", label: "#", num: true, render: (e) => nf.format(e.seq) },
        { key: "ts", label: "Time", render: (e) => ago(e.ts_ms / 1000) },
        { key: "kind", label: "Kind", render: (e) => h("span", { class: "kind" }, e.kind) },
        { key: "postings", label: "Postings", render: (e) => postingsCell(e.postings) },
        { key: "hash", label: "Hash", render: (e) => hashText(e.hash) },
        { key: "prev", label: "Previous", render: (e) => hashText(e.prev_hash) },
      ], d.entries, { empty: "The journal is empty.", rowTestid: "journal-row", rowId: (e) => e.seq }));
      const top = d.entries.length ? d.entries[0].seq : 0, bottom = d.entries.length ? d.entries[d.entries.length - 1].seq : 0;
      const newer = v.before === null ? null : (top + PAGE >= d.head_seq ? null : top + PAGE + 1);
      v.pager.replaceChildren(
        h("button", { class: "btn", type: "button", "data-testid": "ledger-newer", disabled: v.before === null, onclick: () => go(newer) }, "← Newer"),
        h("span", { class: "muted", "data-testid": "ledger-range" }, d.entries.length ? `#${nf.format(top)} – #${nf.format(bottom)} of ${nf.format(d.head_seq)}` : "no entries"),
        h("button", { class: "btn", type: "button", "data-testid": "ledger-older", disabled: bottom <= 1, onclick: () => go(bottom) }, "Older →"));
    };
    return v;
  }

  function accountView(account) {
    // before: null is the newest page; each answer searched a bounded range of the journal
    // and says where it stopped (searched_from), which is where "Older" asks next.
    const v = { nav: "ledger", charts: {}, before: null };
    const go = (before) => { v.before = before; scheduleRefresh(); };
    v.mount = (root) => {
      v.head = h("div", { class: "page-head" }, h("h1", {}, state.names[account] || accountName(account)), h("div", { class: "sub mono" }, account));
      v.cards = h("div", { class: "grid cols-3" }); v.body = h("div");
      v.pager = h("div", { class: "pager", "data-testid": "account-pager" });
      root.append(v.head, v.cards, card("History", [v.body, v.pager], { testid: "account-history" }));
    };
    v.load = async () => {
      const q = v.before === null ? "" : `&before=${v.before}`;
      const [d, provs] = await Promise.all([api(`/api/explorer/accounts/${encodeURIComponent(account)}?limit=100${q}`), providerList().catch(() => null)]);
      if (provs) provs.providers.forEach((p) => { state.names[p.id] = p.name; });
      return d;
    };
    v.update = (d) => {
      v.head.firstChild.textContent = state.names[account] || accountName(account);
      v.cards.replaceChildren(...Object.entries(d.ledger_accounts).map(([k, amt]) => stat(accountName(k), money(amt), h("span", { class: "mono", title: k }, short(k, 30)))));
      v.body.replaceChildren(table([
        { key: "seq", label: "#", num: true, render: (e) => nf.format(e.seq) },
        { key: "ts", label: "Time", render: (e) => ago(e.ts_ms / 1000) },
        { key: "kind", label: "Kind", render: (e) => h("span", { class: "kind" }, e.kind) },
        { key: "delta", label: "Change", num: true, render: (e) => h("span", { class: e.delta >= 0 ? "pos" : "neg" }, `${e.delta >= 0 ? "+" : ""}${money(e.delta)}`) },
        { key: "postings", label: "Postings", render: (e) => postingsCell(e.postings) },
        { key: "hash", label: "Entry hash", render: (e) => hashText(e.hash) },
      ], d.history, { empty: v.before === null && !d.searched_from ? "No entry has touched this account." : "No entry in this range of the journal touched this account." }));
      v.pager.replaceChildren(
        h("button", { class: "btn", type: "button", "data-testid": "account-newest", disabled: v.before === null, onclick: () => go(null) }, "← Newest"),
        h("span", { class: "muted", "data-testid": "account-range" }, d.searched_from ? `searched back to entry #${nf.format(d.searched_from)}` : "searched back to the journal's start"),
        h("button", { class: "btn", type: "button", "data-testid": "account-older", disabled: !d.searched_from, onclick: () => go(d.searched_from) }, "Older →"));
    };
    return v;
  }

  // --- verified hardware and the cloud index (api_hardware.py, docs/compute-units.md) -------

  function hardwareView() {
    const v = { nav: "hardware", charts: {} };
    const hwBadge = (s) => badge(s === "verified" ? "ok" : s === "flagged" ? "bad" : "pending", s);
    const usd = (x, d = 4) => (x === null || x === undefined ? "—" : `$${num(x, d)}`);
    v.mount = (root) => {
      v.claims = h("div"); v.network = h("div"); v.cloud = h("div");
      root.append(h("div", { class: "page-head" }, h("h1", {}, "Verified hardware"),
        h("div", { class: "sub" }, "Compute units proven by seeded, timed challenges (1 CU = 50 GFLOP/s of fp32 matmul); prices per verified unit, and an index against public cloud list prices.")),
        card("Providers", v.claims, { flush: true, testid: "hw-claims-card" }),
        card("Per hardware class", v.network, { flush: true, testid: "hw-network-card" }),
        card("Cloud list prices", v.cloud, { flush: true, testid: "cloud-index-card" }));
    };
    v.load = async () => {
      const [c, idx] = await Promise.all([pagedList("/api/hardware/claims", "claims"), api("/api/hardware/cloud-index")]);
      return { claims: c.claims, idx };
    };
    v.update = ({ claims, idx }) => {
      claims.forEach((c) => { if (c.name) state.names[c.provider] = c.name; });
      v.claims.replaceChildren(table([
        { key: "name", label: "Provider", render: (c) => providerLink(c.provider) },
        { key: "class", label: "Class", render: (c) => c.hardware_class },
        { key: "status", label: "Status", render: (c) => hwBadge(c.current ? c.status : "unverified") },
        { key: "claimed", label: "Claimed CU", num: true, render: (c) => num(c.claimed_units, 2) },
        { key: "verified", label: "Verified CU", num: true, render: (c) => num(c.verified_units, 2) },
        { key: "mem", label: "Verified memory", num: true, render: (c) => `${num(c.verified_memory_mb / 1024, 1)} GB` },
        { key: "ppvu", label: "µ/1k per verified CU", num: true, render: (c) => (c.price_per_verified_unit === null ? "—" : num(c.price_per_verified_unit, 1)) },
        { key: "record", label: "Passed / failed", num: true, render: (c) => `${c.passes} / ${c.fails}` },
        { key: "slashed", label: "Slashed", num: true, render: (c) => money(c.slashed) },
      ], claims, { testid: "hw-claims", rowTestid: "hw-claim-row", rowId: (c) => c.provider, empty: "No provider has registered yet." }));
      v.network.replaceChildren(table([
        { key: "cls", label: "Class", render: (r) => r.hardware_class },
        { key: "n", label: "Providers", num: true, render: (r) => nf.format(r.providers) },
        { key: "units", label: "Verified CU", num: true, render: (r) => num(r.verified_units, 2) },
        { key: "ppvu", label: "Median µ/1k per CU", num: true, render: (r) => (r.median_price_per_verified_unit === null ? "—" : num(r.median_price_per_verified_unit, 1)) },
        { key: "usd", label: "USD / CU-hour", num: true, render: (r) => usd(r.usd_per_unit_hour) },
        { key: "cloud", label: "Cheapest cloud", num: true, render: (r) => usd(r.cloud_best_usd_per_unit_hour) },
        { key: "index", label: "Index (DeAI / cloud)", num: true, render: (r) => (r.index === null ? "—" : num(r.index, 2)) },
      ], idx.network, { testid: "hw-network", empty: "No verified provider yet." }));
      v.cloud.replaceChildren(table([
        { key: "cls", label: "Class", render: (r) => r.hardware_class },
        { key: "prov", label: "Provider", render: (r) => r.provider },
        { key: "inst", label: "Instance", render: (r) => r.instance },
        { key: "usdh", label: "USD / hour", num: true, render: (r) => usd(r.usd_per_hour, 3) },
        { key: "cu", label: "CU", num: true, render: (r) => num(r.units, 1) },
        { key: "usdcu", label: "USD / CU-hour", num: true, render: (r) => usd(r.usd_per_unit_hour) },
        { key: "src", label: "Source (date)", wrap: true, render: (r) => `${r.source} (${r.date})` },
      ], idx.cloud, { testid: "cloud-index" }),
      h("div", { class: "hint", style: "padding:8px 12px" }, `1 DEAI = $${num(idx.usd_per_deai, 2)} (DEAI_USD_PER_DEAI); cloud CU from spec sheets derated to sustained rates.`));
    };
    return v;
  }

  // --- machines by the hour and clusters (api_explorer /explorer/leases, docs/leases.md) -------

  const leaseFate = (x) => badge(x.status === "ended" ? (x.end_reason === "owner ended" || x.end_reason === "time up" ? "done" : "failed") : (x.status === "pending" || x.status === "forming" ? "pending" : "running"), x.status === "ended" ? `ended: ${x.end_reason}` : x.status);
  const leasePrices = (m) => Object.entries(m).map(([k, p]) => `${k.replace("memory_gb", "GiB").replace("cpu", "core")} ${money(p)}`).join(" · ") || "—";
  const usageBar = (used, cap) => h("span", { title: `${nf.format(used)} of ${nf.format(cap)}` }, h("span", { class: "bar", style: `display:inline-block;width:60px;height:8px;border-radius:4px;background:linear-gradient(90deg,var(--accent,#4c8bf5) ${cap ? Math.round(100 * used / cap) : 0}%,rgba(127,127,127,.25) 0)` }), ` ${nf.format(used)} / ${nf.format(cap)}`);
  function leaseHostsTable(rows, withHost) {
    return table([
      withHost ? { key: "prov", label: "Host", render: (x) => providerLink(x.provider) } : null,
      { key: "online", label: "Status", render: (x) => badge(x.online ? "running" : "failed", x.online ? "online" : "offline") },
      { key: "prices", label: "Per hour (core, GiB, GPU)", wrap: true, render: (x) => leasePrices(x.prices) },
      { key: "cpu", label: "CPUs leased", render: (x) => usageBar(x.cpus_used, x.cpus) },
      { key: "mem", label: "Memory leased (MB)", render: (x) => usageBar(x.memory_used_mb, x.memory_mb) },
      { key: "gpu", label: "GPUs", render: (x) => (x.gpus ? `${nf.format(x.gpus_used)} / ${nf.format(x.gpus)}${x.gpu_model ? ` ${x.gpu_model}` : ""}` : "—") },
    ].filter(Boolean), rows, { empty: "No host yet. deai provider start --lease-prices cpu=P,memory_gb=P offers leases." });
  }
  function leaseTable(rows, withHost) {
    return table([
      { key: "id", label: "Lease", render: (x) => h("span", { class: "mono", title: x.id }, short(x.id, 16)) },
      withHost ? { key: "prov", label: "Host", render: (x) => providerLink(x.provider) } : null,
      { key: "status", label: "Status", render: leaseFate },
      { key: "res", label: "Resources", render: (x) => `${x.cpus} CPU · ${nf.format(x.memory_mb)} MB${x.gpus ? ` · ${x.gpus} GPU` : ""}${x.spot ? " · spot" : ""}` },
      { key: "price", label: "Price", num: true, render: (x) => h("span", {}, money(x.price_hour), h("small", { class: "unit" }, " /h")) },
      { key: "cluster", label: "Cluster", render: (x) => (x.cluster ? h("span", { class: "mono", title: x.cluster }, short(x.cluster, 12)) : "—") },
      { key: "age", label: "Created", render: (x) => ago(x.created_at) },
    ].filter(Boolean), rows, { empty: "No lease yet. deai lease create rents a machine by the hour." });
  }

  function leasesView() {
    const v = { nav: "leases", charts: {} };
    const reasons = (m) => Object.entries(m).map(([k, n]) => `${k} ${nf.format(n)}`).join(" · ") || "none yet";
    v.mount = (root) => {
      v.cards = h("div", { class: "grid cols-4" }); v.leases = h("div"); v.clusters = h("div"); v.hosts = h("div");
      root.append(h("div", { class: "page-head" }, h("h1", {}, "Leases"), h("div", { class: "sub" }, "Machines rented by the hour (a shell, files and ports in a sandbox on the provider) and Ray clusters made of several leases. Owners and escrow stay private.")),
        v.cards, card("Hosts and their prices per hour", v.hosts, { flush: true, testid: "lease-hosts" }), h("div", { style: "height:16px" }),
        card("Clusters", v.clusters, { flush: true, testid: "clusters" }), h("div", { style: "height:16px" }),
        card("Latest leases", v.leases, { flush: true, testid: "leases" }));
    };
    v.load = () => api("/api/explorer/leases?limit=50");
    v.update = (d) => {
      const n = (m, k) => nf.format(m[k] || 0);
      v.cards.replaceChildren(
        stat("Active leases", n(d.leases, "active"), `${n(d.leases, "pending")} starting · ${n(d.leases, "ended")} ended`, d.leases.active ? "good" : "", "stat-leases-active"),
        stat("Running clusters", n(d.clusters, "running"), `${nf.format(d.nodes_running)} nodes · ${n(d.clusters, "forming")} forming`, d.clusters.running ? "good" : "", "stat-clusters-running"),
        stat("How leases ended", nf.format(Object.values(d.lease_end_reasons).reduce((a, b) => a + b, 0)), reasons(d.lease_end_reasons), "", "stat-lease-ends"),
        stat("Host CPUs in use", `${num((d.utilisation || 0) * 100, 0)}%`, `${nf.format((d.hosts || []).length)} hosts`, "", "stat-lease-utilisation"));
      v.hosts.replaceChildren(leaseHostsTable(d.hosts || [], true));
      v.clusters.replaceChildren(table([
        { key: "id", label: "Cluster", render: (x) => h("span", { class: "mono", title: x.id }, short(x.id, 16)) },
        { key: "status", label: "Status", render: leaseFate },
        { key: "nodes", label: "Nodes", num: true, render: (x) => `${nf.format(x.nodes - x.lost)} / ${nf.format(x.nodes)}` },
        { key: "hosts", label: "Hosts (head first)", wrap: true, render: (x) => h("span", {}, x.providers.map((p, i) => [i ? ", " : "", providerLink(p)])) },
        { key: "age", label: "Created", render: (x) => ago(x.created_at) },
      ], d.recent_clusters, { empty: "No cluster yet. deai cluster up --nodes N makes one from N leases." }));
      v.leases.replaceChildren(leaseTable(d.recent_leases, true));
    };
    return v;
  }

  // --- settlement on a chain (api_chain.py, docs/chain.md) ------------------------------------

  function chainView() {
    const ownerLink = (id) => link(`#/ledger/account/${encodeURIComponent(id)}`, nameOf(id), id);
    const v = { nav: "chain", charts: {} };
    v.mount = (root) => {
      v.cards = h("div", { class: "grid cols-3" }); v.epochs = h("div"); v.deposits = h("div");
      v.withdrawals = h("div"); v.stake = h("div");
      root.append(h("div", { class: "page-head" }, h("h1", {}, "Chain"), h("div", { class: "sub" }, "Deposits, epoch commitments (journal head and the Merkle root of what each address may withdraw), withdrawals by proof, and stake as the chain holds it.")),
        v.cards, card("Epochs", v.epochs, { flush: true, testid: "chain-epochs" }),
        card("Deposits", v.deposits, { flush: true, testid: "chain-deposits" }),
        card("Withdrawals", v.withdrawals, { flush: true, testid: "chain-withdrawals" }),
        card("Stake: journal and vault", v.stake, { flush: true, testid: "chain-stake" }));
    };
    v.load = () => api("/api/chain");
    v.update = (d) => {
      if (!d.enabled) {
        v.cards.replaceChildren(card("No chain", h("div", { class: "empty", "data-testid": "chain-off" }, "This coordinator settles on no chain: its journal is the only ledger. Start one with deai devnet up --chain.")));
        return;
      }
      const e = d.latest_epoch, c = d.chain || {};
      v.cards.replaceChildren(
        card("Latest epoch", e ? kv([["Epoch", nf.format(e.epoch)], ["Journal head", `#${nf.format(e.head_seq)} ${short(e.head_hash, 14)}`], ["Root", hashText(e.root)], ["Block", e.block === null ? "—" : nf.format(e.block)], ["Withdrawable", money(e.total)]]) : h("div", { class: "empty" }, "No epoch committed yet."), { testid: "chain-latest" }),
        card("Settlement contract", kv([["Address", hashText(d.deployment.settlement)], ["Holds", money(c.held || 0)], ["Deposited", money(c.deposited || 0)], ["Claimed", money(c.withdrawn || 0)], ["Block", c.block === undefined ? "—" : nf.format(c.block)]])),
        card("Stake vault", kv([["Address", hashText(d.deployment.vault)], ["Staked", money(c.staked || 0)], ["Slashed", money(c.slashed || 0)], ["Challenge delay", `${d.deployment.challenge_delay} s`], ["Outbox", Object.entries(d.outbox).map(([k, n]) => `${k} ${n}`).join(", ") || "empty"]])));
      v.epochs.replaceChildren(table([
        { key: "epoch", label: "Epoch", num: true, render: (x) => (x.epoch !== null ? (x.status === "revoked" ? h("span", {}, nf.format(x.epoch), " ", h("span", { class: "badge bad", title: "revoked by the guardian: it pays nothing" }, "revoked")) : nf.format(x.epoch)) : x.attempts ? h("span", { class: "badge bad", title: x.error || "" }, `pending, ${nf.format(x.attempts)} failed`) : "pending") },
        { key: "head", label: "Journal head", num: true, render: (x) => nf.format(x.head_seq) },
        { key: "root", label: "Root", render: (x) => hashText(x.root) },
        { key: "addrs", label: "Addresses", num: true, render: (x) => nf.format(x.addresses) },
        { key: "total", label: "Withdrawable", num: true, render: (x) => money(x.total) },
        { key: "block", label: "Block", num: true, render: (x) => (x.block === null ? "—" : nf.format(x.block)) },
      ], d.epochs, { empty: "No epoch yet." }));
      v.deposits.replaceChildren(table([
        { key: "acct", label: "Account", render: (x) => ownerLink(x.account) },
        { key: "amount", label: "Amount", num: true, render: (x) => money(x.amount) },
        { key: "block", label: "Block", num: true, render: (x) => nf.format(x.block) },
        { key: "tx", label: "Transaction", render: (x) => hashText(x.tx) },
        { key: "seq", label: "Journal entry", num: true, render: (x) => nf.format(x.journal_seq) },
      ], d.deposits.recent, { empty: "No deposit yet." }));
      v.withdrawals.replaceChildren(table([
        { key: "acct", label: "Account", render: (x) => ownerLink(x.account) },
        { key: "amount", label: "Amount", num: true, render: (x) => money(x.amount) },
        { key: "to", label: "To address", render: (x) => hashText(x.address) },
        { key: "seq", label: "Journal entry", num: true, render: (x) => nf.format(x.journal_seq) },
      ], d.withdrawals.recent, { empty: "No withdrawal yet." }));
      v.stake.replaceChildren(table([
        { key: "p", label: "Provider", render: (x) => providerLink(x.provider) },
        { key: "j", label: "Journal", num: true, render: (x) => money(x.journal) },
        { key: "c", label: "Vault", num: true, render: (x) => h("span", { class: x.chain === x.journal ? "" : "neg" }, money(x.chain)) },
      ], d.stake || [], { empty: "No stake yet." }));
    };
    return v;
  }

  function datasetsView() {
    const v = { nav: "datasets", charts: {} };
    v.mount = (root) => {
      v.cards = h("div", { class: "grid cols-3" }); v.body = h("div");
      root.append(h("div", { class: "page-head" }, h("h1", {}, "Datasets"), h("div", { class: "sub" }, "Data offered under terms: each use pays its owner a royalty through the journal. Public metadata only; the content is encrypted under its owner's key.")),
        v.cards, card("Datasets", v.body, { flush: true, testid: "datasets" }));
    };
    v.load = () => api("/api/explorer/datasets?limit=200");
    v.update = (d) => {
      const all = d.datasets;
      const uses = all.reduce((a, x) => a + x.uses, 0), paid = all.reduce((a, x) => a + x.royalties, 0);
      v.cards.replaceChildren(
        stat("Datasets", nf.format(all.length), `${nf.format(all.filter((x) => !x.revoked_at).length)} active`, "", "stat-datasets"),
        stat("Uses", nf.format(uses), "jobs that trained on one", "", "stat-dataset-uses"),
        stat("Royalties paid", moneyEl(paid), "to dataset owners", "", "stat-royalties"));
      v.body.replaceChildren(table([
        { key: "name", label: "Dataset", render: (x) => h("span", { title: x.id }, x.name) },
        { key: "owner", label: "Owner", render: (x) => accountLink(x.owner) },
        { key: "terms", label: "Terms", wrap: true, render: (x) => `${money(x.terms.price_per_use)} per use · ${x.terms.allow.join(", ")}${x.terms.max_uses ? ` · at most ${nf.format(x.terms.max_uses)} uses` : ""}${x.terms.expires_at ? ` · until ${new Date(x.terms.expires_at * 1000).toISOString().slice(0, 10)}` : ""}${x.providers ? ` · runs on ${nf.format(x.providers.length)} named provider${x.providers.length === 1 ? "" : "s"}` : ""}` },
        { key: "size", label: "Size", num: true, render: (x) => `${nf.format(x.size)} B${x.train ? ` · ${nf.format(x.train.n)} rows` : ""}` },
        { key: "uses", label: "Uses", num: true, render: (x) => nf.format(x.uses) },
        { key: "royalties", label: "Royalties", num: true, render: (x) => money(x.royalties) },
        { key: "state", label: "State", render: (x) => badge(x.revoked_at ? "failed" : "running", x.revoked_at ? "revoked" : "active") },
      ], all, { testid: "datasets-table", rowTestid: "dataset-row", rowId: (x) => x.id, empty: "No dataset yet. deai dataset publish FILE --price-per-use P --allow train offers one." }));
    };
    return v;
  }

  // --- routing ---------------------------------------------------------------------------

  const ROUTES = [
    [/^#?\/?$/, overviewView], [/^#\/providers\/?$/, providersView], [/^#\/providers\/(.+)$/, providerView],
    [/^#\/jobs\/?$/, jobsView], [/^#\/jobs\/(.+)$/, jobView], [/^#\/verification\/?$/, verificationView],
    [/^#\/ledger\/?$/, ledgerView], [/^#\/ledger\/account\/(.+)$/, accountView],
    [/^#\/hardware\/?$/, hardwareView], [/^#\/chain\/?$/, chainView], [/^#\/leases\/?$/, leasesView],
    [/^#\/datasets\/?$/, datasetsView],
  ];

  function route() {
    const hash = location.hash || "#/";
    let view = null;
    for (const [re, make] of ROUTES) {
      const m = re.exec(hash);
      if (m) { view = make(...m.slice(1).map(decodeURIComponent)); break; }
    }
    if (!view) view = overviewView();
    if (state.view) Object.values(state.view.charts).forEach((c) => c.destroy());
    document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === view.nav));
    view.root = h("div", { "data-view": view.nav });
    main.replaceChildren(view.root);
    state.view = view;
    view.mount(view.root);
    window.scrollTo(0, 0);
    scheduleRefresh();
  }

  document.getElementById("theme").addEventListener("click", () => {
    const dark = getComputedStyle(document.documentElement).colorScheme !== "light";
    const next = dark ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try { localStorage.setItem("deai-theme", next); } catch (e) { /* private mode */ }
    route();
  });

  if (!HAS_CHARTS) {
    const n = document.getElementById("notice");
    n.hidden = false;
    n.textContent = "Charts are off: the charting library is not installed on this coordinator (run `make explorer`). Every number below is still live.";
  }

  providerList().then((d) => { d.providers.forEach((p) => { state.names[p.id] = p.name; }); scheduleRefresh(); }).catch(() => {});
  window.addEventListener("hashchange", route);
  setInterval(() => { if (!document.hidden) scheduleRefresh(); }, 10000);
  route();
  connect();
})();
