// ninefold dashboard: plain JavaScript, no build step, no network beyond the
// agent that served it. All URLs are relative, so any agent's /ui/ works.
"use strict";

(() => {
  const API = "../v1";
  const METRICS = "../metrics";
  const POLL_MS = 1000;
  const WINDOW_MS = 120 * 1000; // chart history
  const MAX_EVENTS = 200;
  const FILL_EVENTS = 50;

  const $ = (id) => document.getElementById(id);
  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);

  // Replace an element's content only when it changed, so buttons are not
  // rebuilt under the pointer every second.
  function setHTML(el, html) {
    if (el.dataset.rendered !== html) {
      el.innerHTML = html;
      el.dataset.rendered = html;
    }
  }

  // -- token: kept for this tab only; a `#token=...` link sets it -------------------
  let token = sessionStorage.getItem("ninefold-token") || "";
  if (location.hash.startsWith("#token=")) {
    token = decodeURIComponent(location.hash.slice(7));
    sessionStorage.setItem("ninefold-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});

  function askForToken() {
    const form = $("token-form");
    if (!form.hidden) return;
    form.hidden = false;
    connection("down", "needs a token");
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token-input").value.trim();
    sessionStorage.setItem("ninefold-token", token);
    $("token-input").value = "";
    $("token-form").hidden = true;
    tick();
    streamEvents();
  });

  let status = null; // last answer of /v1/status
  const pending = new Set(); // "action:target" of requests in flight

  // -- connection indicator ---------------------------------------------------------
  function connection(state, text) {
    const el = $("conn");
    el.dataset.conn = state;
    $("conn-text").textContent = text;
  }

  const clock = (ms) => {
    const d = new Date(ms);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };

  // -- messages (results of actions) ------------------------------------------------
  function message(kind, text) {
    const box = $("messages");
    const div = document.createElement("div");
    div.className = `message ${kind}`;
    div.dataset.kind = kind;
    div.innerHTML = `<span>${esc(text)}</span><button class="close" title="dismiss">×</button>`;
    div.querySelector(".close").addEventListener("click", () => div.remove());
    box.prepend(div);
    while (box.children.length > 4) box.lastElementChild.remove();
    if (kind === "ok") setTimeout(() => div.remove(), 8000);
  }

  // -- classes for states -------------------------------------------------------------
  function stateClass(state) {
    if (["up", "running", "healthy", "active"].includes(state)) return "ok";
    if (["drained", "starting", "seeding", "pending", "stopping", "standby", "draining"].includes(state))
      return "warn";
    if (["down", "failed", "lost", "unhealthy", "stopped", "crashed"].includes(state)) return "bad";
    return "neutral";
  }

  function button(action, target, label, extra = "") {
    const busy = pending.has(`${action}:${target}`);
    return (
      `<button class="btn ${action}" data-action="${esc(action)}" data-target="${esc(target)}"` +
      `${busy ? " disabled" : ""} ${extra}>${busy ? "…" : esc(label)}</button>`
    );
  }

  // -- nodes ----------------------------------------------------------------------------
  function renderNodes(s) {
    const zones = new Map();
    for (const n of s.nodes) {
      const zone = n.zone || "(no zone)";
      if (!zones.has(zone)) zones.set(zone, []);
      zones.get(zone).push(n);
    }
    const on = new Map();
    for (const i of s.instances) {
      if (!on.has(i.node)) on.set(i.node, []);
      on.get(i.node).push(i);
    }
    const html = [...zones.keys()]
      .sort()
      .map((zone) => {
        const cards = zones.get(zone).map((n) => nodeCard(n, on.get(n.name) || []));
        return (
          `<div class="zone" data-zone="${esc(zone)}"><h3>zone ${esc(zone)}</h3>` +
          `${cards.join("")}</div>`
        );
      })
      .join("");
    setHTML($("zones"), html || `<p class="muted">no nodes</p>`);
  }

  function nodeCard(n, instances) {
    const drained = n.state === "drained";
    const tags = [];
    if (n.leader) tags.push(`<span class="tag leader">leader</span>`);
    if (n.store_member) tags.push(`<span class="tag">store member</span>`);
    if (n.role === "witness") tags.push(`<span class="tag" title="votes in the store, runs no instances and no gateway">witness</span>`);
    if (drained) tags.push(`<span class="tag warn">drained</span>`);
    const chips = instances
      .map((i) => {
        const cls = i.state === "running" ? stateClass(i.health === "none" ? "healthy" : i.health) : stateClass(i.state);
        const role = i.role ? ` ${i.role}` : "";
        return `<span class="chip ${cls}" title="${esc(`${i.state}, ${i.health}${role}`)}">${esc(i.instance)}</span>`;
      })
      .join("");
    const act = drained
      ? button("undrain", n.name, "undrain")
      : button("drain", n.name, "drain", n.state === "down" ? "disabled" : "");
    return (
      `<article class="node ${stateClass(n.state)}" data-node="${esc(n.name)}" ` +
      `data-state="${esc(n.state)}" data-leader="${n.leader ? "true" : "false"}">` +
      `<header><span class="dot"></span><b class="name">${esc(n.name)}</b>` +
      `${n.leader ? `<span class="star" title="leader">★</span>` : ""}` +
      `<span class="state-label">${esc(n.state)}</span></header>` +
      `<div class="addr">${esc(n.address)}</div>` +
      `<div class="tags">${tags.join("")}</div>` +
      `<div class="chips">${chips || `<span class="muted small">no instances</span>`}</div>` +
      `<div class="actions">${act}</div></article>`
    );
  }

  // -- services and instances ---------------------------------------------------------
  function renderServices(s) {
    const rows = s.services.map((svc) => {
      const ap = svc.mode === "active-passive";
      const health = svc.healthy >= svc.desired ? "ok" : svc.healthy > 0 ? "warn" : "bad";
      const pct = svc.desired ? Math.min(100, Math.round((100 * svc.healthy) / svc.desired)) : 0;
      const active = ap
        ? svc.active
          ? `<span class="active-node" data-active="${esc(svc.active)}">${esc(svc.active)}</span>`
          : `<span class="bad-text">none</span>`
        : `<span class="muted">–</span>`;
      const token = ap && svc.fencing_token != null ? `<code>${esc(svc.fencing_token)}</code>` : `<span class="muted">–</span>`;
      const actions = svc.mode === "external" ? [] : [button("restart", svc.name, "restart")];
      if (ap) actions.push(button("switchover", svc.name, "switchover"));
      return (
        `<tr data-service="${esc(svc.name)}" data-mode="${esc(svc.mode)}" ` +
        `data-healthy="${esc(svc.healthy)}" data-desired="${esc(svc.desired)}">` +
        `<td><b>${esc(svc.name)}</b></td><td>${esc(svc.mode)}</td>` +
        `<td><div class="count ${health}"><span class="bar"><span style="width:${pct}%"></span></span>` +
        `<span class="num">${esc(svc.healthy)} / ${esc(svc.desired)}</span></div></td>` +
        `<td>${active}</td><td>${token}</td>` +
        `<td class="right">${actions.join(" ")}</td></tr>`
      );
    });
    setHTML($("services"), rows.join("") || `<tr><td colspan="6" class="muted">no services</td></tr>`);
  }

  function endpoint(i) {
    const ports = Object.entries(i.ports || {});
    if (!i.address && !ports.length) return "";
    if (ports.length === 1) return `${i.address}:${ports[0][1]}`;
    return `${i.address} ${ports.map(([k, v]) => `${k}=${v}`).join(" ")}`.trim();
  }

  function renderInstances(s) {
    const rows = s.instances.map((i) => {
      const health = i.health === "none" ? "neutral" : stateClass(i.health);
      const role = i.role
        ? `<span class="pill ${i.role === "active" ? "ok" : "neutral"}">${esc(i.role)}</span>`
        : `<span class="muted">–</span>`;
      const draining = i.draining ? ` <span class="pill warn">draining</span>` : "";
      const token = i.fencing_token != null && i.role === "active" ? ` <code class="small">#${esc(i.fencing_token)}</code>` : "";
      return (
        `<tr data-instance="${esc(i.instance)}" data-service="${esc(i.service)}" data-node="${esc(i.node)}" data-state="${esc(i.state)}">` +
        `<td><b>${esc(i.instance)}</b></td><td>${esc(i.node)}</td>` +
        `<td><span class="pill ${stateClass(i.state)}">${esc(i.state)}</span>${draining}</td>` +
        `<td><span class="pill ${health}">${esc(i.health)}</span></td>` +
        `<td>${role}${token}</td><td><code>${esc(endpoint(i))}</code></td>` +
        `<td class="right">${esc(i.restarts ?? 0)}</td></tr>`
      );
    });
    setHTML($("instances"), rows.join("") || `<tr><td colspan="7" class="muted">no instances</td></tr>`);
  }

  // -- external services' endpoints: the cluster's word and every node's own verdict --
  const ENDPOINT_CLASS = { healthy: "ok", partial: "warn", starting: "warn" };

  function renderExternal(s) {
    const endpoints = s.external || [];
    $("external-panel").hidden = !endpoints.length;
    const rows = endpoints.map((e) => {
      const nodes = Object.entries(e.nodes || {})
        .map(([n, v]) => `<span class="pill ${ENDPOINT_CLASS[v] || "bad"}" data-node="${esc(n)}">${esc(n)}</span>`)
        .join(" ");
      return (
        `<tr data-endpoint="${esc(e.endpoint)}" data-service="${esc(e.service)}" data-health="${esc(e.health)}">` +
        `<td><b>${esc(e.service)}</b></td><td><code>${esc(e.endpoint)}</code></td>` +
        `<td><span class="pill ${ENDPOINT_CLASS[e.health] || "bad"}">${esc(e.health)}</span></td>` +
        `<td>${nodes || `<span class="muted">–</span>`}</td><td class="small">${esc(e.detail || "")}</td></tr>`
      );
    });
    setHTML($("external"), rows.join(""));
  }

  // -- VIPs (read from status when the agent reports them) --------------------------
  function collectVips(s) {
    const out = [];
    const add = (address, service, holder) => {
      if (address) out.push({ address, service: service || "", holder: holder || "" });
    };
    if (Array.isArray(s.vips)) {
      for (const v of s.vips) {
        if (typeof v === "string") add(v, "", "");
        else add(v.address || v.vip, v.service, v.holder || v.node);
      }
    }
    for (const svc of s.services || []) {
      if (!svc.vip) continue;
      if (typeof svc.vip === "string") add(svc.vip, svc.name, svc.vip_holder);
      else add(svc.vip.address, svc.name, svc.vip.holder || svc.vip_holder);
    }
    return out;
  }

  function renderVips(s) {
    const vips = collectVips(s);
    if (!vips.length) {
      setHTML($("vips"), `<p class="muted" data-vips="none">none configured</p>`);
      return;
    }
    const rows = vips.map(
      (v) =>
        `<tr data-vip="${esc(v.address)}"><td><code>${esc(v.address)}</code></td>` +
        `<td>${esc(v.service) || `<span class="muted">–</span>`}</td>` +
        `<td>${v.holder ? `<b>${esc(v.holder)}</b>` : `<span class="bad-text">unheld</span>`}</td></tr>`,
    );
    setHTML(
      $("vips"),
      `<table class="grid"><thead><tr><th>address</th><th>service</th><th>holder</th></tr></thead>` +
        `<tbody>${rows.join("")}</tbody></table>`,
    );
  }

  function renderStatus(s) {
    $("cluster-name").textContent = s.cluster ? `· ${s.cluster}` : "";
    $("leader-name").textContent = s.leader || "none";
    document.title = s.cluster ? `ninefold · ${s.cluster}` : "ninefold";
    renderNodes(s);
    renderServices(s);
    renderInstances(s);
    renderExternal(s);
    renderVips(s);
  }

  // -- volumes: the replicated volumes' copies (GET /v1/volumes) ----------------------
  const COPY_CLASS = {
    source: "neutral",
    "in-sync": "ok",
    behind: "warn",
    seeding: "warn",
    failing: "bad",
    down: "bad",
  };

  function humanBytes(n) {
    let value = Number(n) || 0;
    for (const unit of ["B", "kB", "MB", "GB", "TB"]) {
      if (Math.abs(value) < 1000 || unit === "TB") {
        if (unit === "B") return `${Math.trunc(value)} B`;
        return `${Math.abs(value) < 10 ? value.toFixed(1) : value.toFixed(0)} ${unit}`;
      }
      value /= 1000;
    }
    return "";
  }

  function humanSeconds(s) {
    const secs = Math.max(0, Number(s) || 0);
    if (secs < 10) return `${secs.toFixed(1)}s`;
    const w = Math.trunc(secs);
    const pad = (n) => String(n).padStart(2, "0");
    if (w < 60) return `${w}s`;
    if (w < 3600) return `${Math.trunc(w / 60)}m${pad(w % 60)}s`;
    if (w < 86400) return `${Math.trunc(w / 3600)}h${pad(Math.trunc((w % 3600) / 60))}m`;
    return `${Math.trunc(w / 86400)}d${pad(Math.trunc((w % 86400) / 3600))}h`;
  }

  const ago = (then, now) => (then ? `${humanSeconds(now - then)} ago` : "never");

  function copyState(c) {
    if (c.state !== "seeding") return c.state;
    if (c.seed_total > 0) {
      const pct = Math.min(100, Math.trunc((100 * c.seed_done) / c.seed_total));
      return `seeding ${pct}% (${humanBytes(c.seed_done)} of ${humanBytes(c.seed_total)})`;
    }
    return c.seed_done ? `seeding (${humanBytes(c.seed_done)} so far)` : "seeding";
  }

  function copyRow(v, c, now) {
    const source = c.role === "source";
    let verified = ago(c.verified_at, now);
    if (c.diverged) verified += `, ${c.diverged} repaired`;
    let detail = c.error || "";
    if (!detail && !source && c.sent_by && c.sent_by !== v.source) detail = `last sent by ${c.sent_by}`;
    const dash = `<span class="muted">–</span>`;
    return (
      `<tr data-volume="${esc(`${v.service}/${v.volume}`)}" data-node="${esc(c.node)}" ` +
      `data-state="${esc(c.state)}">` +
      `<td><b>${esc(v.service)}</b>/${esc(v.volume)}</td><td>${esc(c.node)}</td>` +
      `<td>${source ? `<span class="pill ok">source</span>` : "copy"}</td>` +
      `<td><span class="pill ${COPY_CLASS[c.state] || "neutral"}">${esc(copyState(c))}</span></td>` +
      `<td class="right">${source ? dash : esc(humanSeconds(c.lag_seconds))}</td>` +
      `<td class="right">${source ? dash : esc(humanBytes(c.bytes_behind))}</td>` +
      `<td>${esc(ago(c.last_sync, now))}</td><td>${esc(verified)}</td>` +
      `<td class="${c.error ? "bad-text" : "muted"} small">${esc(detail)}</td></tr>`
    );
  }

  function renderVolumes(answer) {
    const volumes = answer?.volumes || [];
    $("volumes-panel").hidden = !volumes.length;
    if (!volumes.length) return;
    const now = answer.time || Date.now() / 1000;
    const rows = [];
    for (const v of volumes) {
      if (!v.copies?.length) {
        rows.push(
          `<tr data-volume="${esc(`${v.service}/${v.volume}`)}"><td><b>${esc(v.service)}</b>/${esc(v.volume)}</td>` +
            `<td colspan="8" class="muted">no copies yet</td></tr>`,
        );
      }
      for (const c of v.copies || []) rows.push(copyRow(v, c, now));
    }
    setHTML($("volumes"), rows.join(""));
  }

  async function pollVolumes() {
    try {
      renderVolumes(await getJSON(`${API}/volumes`));
    } catch (_) {
      // No answer: the last table stays (pollStatus shows the connection); an
      // agent without the route never shows the panel.
    }
  }

  // -- availability: GET /v1/availability (docs/availability.md) ------------------------
  const AVAILABILITY_MS = 5000;

  function percent(w) {
    if (!w || w.availability_percent === null || w.availability_percent === undefined) return "—";
    return `${w.availability_percent.toFixed(w.availability_percent >= 99.99 ? 4 : 2)} %`;
  }

  function renderAvailability(answer) {
    const services = answer.services || [];
    $("availability-panel").hidden = !services.length;
    const rows = services.map((s) => {
      const w = s.windows || {};
      const month = w["30d"] || {};
      const last = (s.incidents || []).at(-1);
      const incident = last
        ? `${last.ongoing ? '<span class="bad-text">ongoing</span> · ' : ""}` +
          `${esc(new Date(last.start * 1000).toLocaleString())} · ` +
          `${esc(humanSeconds(last.duration_seconds))} · ${esc(last.cause)}`
        : '<span class="muted">none</span>';
      return (
        `<tr data-availability-service="${esc(s.service)}"><td>${esc(s.service)}</td>` +
        `<td class="right">${percent(w["1h"])}</td><td class="right">${percent(w["24h"])}</td>` +
        `<td class="right">${percent(month)}</td>` +
        `<td class="right">${month.nines === null || month.nines === undefined ? "—" : month.nines.toFixed(2)}</td>` +
        `<td class="right">${esc(humanSeconds(month.downtime_seconds || 0))}</td>` +
        `<td class="small">${incident}</td></tr>`
      );
    });
    setHTML($("availability"), rows.join(""));
  }

  async function pollAvailability() {
    try {
      renderAvailability(await getJSON(`${API}/availability`));
    } catch (_) {
      // No answer (or an agent without the route): the last table stays.
    }
    setTimeout(pollAvailability, AVAILABILITY_MS);
  }

  // -- metrics: Prometheus text -> per-service rates ----------------------------------
  const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

  function parseMetrics(text) {
    const totals = new Map(); // service -> {req, err}
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = LINE.exec(line);
      if (!m) continue;
      const name = m[1];
      if (name !== "ninefold_gateway_requests_total" && name !== "ninefold_gateway_responses_total")
        continue;
      const labels = {};
      for (const l of (m[2] || "").matchAll(LABEL)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
      if ((labels.backend ?? "") !== "" || !labels.service) continue;
      const value = Number(m[3]);
      if (!Number.isFinite(value)) continue;
      if (!totals.has(labels.service)) totals.set(labels.service, { req: 0, err: 0 });
      const t = totals.get(labels.service);
      if (name === "ninefold_gateway_requests_total") t.req += value;
      else if (labels.code === "5xx" || labels.code === "error") t.err += value;
    }
    return totals;
  }

  const series = new Map(); // service -> {points: [{t, req, err}], last: {t, req, err}}
  let metricsState = "waiting"; // waiting | ok | unavailable

  function recordMetrics(totals, now) {
    for (const [service, t] of totals) {
      if (!series.has(service)) series.set(service, { points: [], last: null });
      const s = series.get(service);
      if (s.last) {
        const dt = (now - s.last.t) / 1000;
        if (dt > 0) {
          // A counter that went down means the gateway restarted: start over.
          const req = t.req >= s.last.req ? (t.req - s.last.req) / dt : 0;
          const err = t.err >= s.last.err ? (t.err - s.last.err) / dt : 0;
          s.points.push({ t: now, req, err });
        }
      }
      s.last = { t: now, req: t.req, err: t.err };
      while (s.points.length && s.points[0].t < now - WINDOW_MS) s.points.shift();
    }
  }

  const fmt = (r) => (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2));

  function sparkline(points, key, now, cls) {
    const W = 240;
    const H = 46;
    const top = Math.max(1, ...points.map((p) => p[key]));
    // The time axis grows with the history until it spans the whole window.
    const span = Math.min(WINDOW_MS, Math.max(10 * 1000, now - (points[0]?.t ?? now)));
    const x = (t) => (W * (t - (now - span))) / span;
    const y = (v) => H - 2 - ((H - 6) * v) / top;
    let line = "";
    let area = "";
    if (points.length) {
      const xy = points.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
      line = `<polyline class="line" points="${xy.join(" ")}"/>`;
      const first = x(points[0].t).toFixed(1);
      const last = x(points[points.length - 1].t).toFixed(1);
      area = `<polygon class="area" points="${first},${H} ${xy.join(" ")} ${last},${H}"/>`;
    }
    return (
      `<svg class="spark ${cls}" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img">` +
      `<line class="base" x1="0" y1="${H - 1}" x2="${W}" y2="${H - 1}"/>${area}${line}</svg>`
    );
  }

  function renderCharts(now) {
    const names = new Set((status?.services || []).map((s) => s.name));
    for (const name of series.keys()) names.add(name);
    if (!names.size) {
      setHTML($("charts"), `<p class="muted">no services</p>`);
      return;
    }
    const blocks = [...names].sort().map((name) => {
      const s = series.get(name);
      if (!s) {
        const why = metricsState === "unavailable" ? "metrics unavailable" : "no traffic through this gateway (no route?)";
        return `<div class="chart" data-chart="${esc(name)}"><h4>${esc(name)}</h4><p class="muted small">${why}</p></div>`;
      }
      const cur = s.points[s.points.length - 1] || { req: 0, err: 0 };
      const peak = (key) => fmt(Math.max(0, ...s.points.map((p) => p[key])));
      return (
        `<div class="chart" data-chart="${esc(name)}"><h4>${esc(name)}</h4>` +
        `<div class="metric"><span class="label">requests/s <b data-rate="requests">${fmt(cur.req)}</b></span>` +
        `<span class="peak">peak ${peak("req")}</span>` +
        `${sparkline(s.points, "req", now, "req")}</div>` +
        `<div class="metric"><span class="label">errors/s <b data-rate="errors" class="${cur.err > 0 ? "bad-text" : ""}">${fmt(cur.err)}</b></span>` +
        `<span class="peak">peak ${peak("err")}</span>` +
        `${sparkline(s.points, "err", now, "err")}</div></div>`
      );
    });
    setHTML($("charts"), blocks.join(""));
  }

  // -- history: every node's sampled series (GET /v1/history?scope=cluster) ----------
  // Plots of node CPU and memory, each service's requests/s, errors/s, p99 latency
  // and healthy instances, and volume lag: one line per node, over 15 min, 1 h or 24 h.
  const WINDOWS = { "15m": 900, "1h": 3600, "24h": 86400 };
  const PLOTS = {
    cpu_ratio: { title: "CPU", unit: "ratio" },
    memory_ratio: { title: "memory used", unit: "ratio" },
    requests_per_second: { title: "requests/s", unit: "rate" },
    errors_per_second: { title: "errors/s", unit: "rate" },
    p99_seconds: { title: "p99 latency", unit: "seconds" },
    healthy_instances: { title: "healthy instances", unit: "count" },
  };
  const SERVICE_ORDER = ["requests_per_second", "errors_per_second", "p99_seconds", "healthy_instances"];
  let historyWindow = sessionStorage.getItem("ninefold-history-window") || "15m";
  if (!WINDOWS[historyWindow]) historyWindow = "15m";
  let historyTimer = null;
  let historyAsked = 0; // ignores answers to an earlier window's request

  function plotValue(v, unit) {
    if (v == null || !Number.isFinite(v)) return "–";
    if (unit === "ratio") return `${(100 * v).toFixed(v < 0.1 ? 1 : 0)}%`;
    if (unit === "seconds") return v < 1 ? `${(1000 * v).toFixed(v < 0.01 ? 1 : 0)} ms` : `${v.toFixed(2)} s`;
    if (unit === "count") return String(Math.round(v * 10) / 10);
    return fmt(v);
  }

  // One plot: an SVG with a line per node (gaps where a node has no value or no samples).
  function plot(key, title, unit, lines, start, end, step) {
    const W = 300;
    const H = 70;
    const values = lines.flatMap((l) => l.points.map((p) => p[1]).filter((v) => v != null));
    const top = unit === "ratio" ? 1 : Math.max(unit === "count" ? 1 : 1e-9, ...values) * 1.1;
    const x = (t) => (W * (t - start)) / Math.max(1, end - start);
    const y = (v) => H - 2 - ((H - 6) * v) / top;
    const paths = lines.map((l) => {
      // A point alone (the first of a node, or after a gap) is drawn as a dot.
      let d = "";
      let prev = null;
      let alone = false;
      for (const [t, v] of l.points) {
        if (v == null) {
          prev = null;
          continue;
        }
        const jump = prev == null || t - prev > 2.5 * step;
        if (jump && alone) d += "h0.5";
        d += `${jump ? "M" : "L"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        alone = jump;
        prev = t;
      }
      if (alone) d += "h0.5";
      return `<path class="line c${l.color}" data-node="${esc(l.node)}" d="${d}"/>`;
    });
    const count = lines.reduce((n, l) => n + l.points.filter((p) => p[1] != null).length, 0);
    const latest = lines
      .map((l) => {
        const last = [...l.points].reverse().find((p) => p[1] != null);
        return last ? `<span class="c${l.color}" title="${esc(l.node)}">${esc(plotValue(last[1], unit))}</span>` : "";
      })
      .filter(Boolean)
      .join(" ");
    return (
      `<div class="plot" data-plot="${esc(key)}" data-points="${count}">` +
      `<div class="plot-head"><span class="label">${esc(title)}</span><span class="latest">${latest}</span></div>` +
      `<svg class="history-svg" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="${esc(title)}">` +
      `<line class="base" x1="0" y1="${H - 1}" x2="${W}" y2="${H - 1}"/>${paths.join("")}</svg>` +
      `<div class="plot-axis"><span>${esc(clock(start * 1000))}</span><span>top ${esc(plotValue(top / (unit === "ratio" ? 1 : 1.1), unit))}</span>` +
      `<span>${esc(clock(end * 1000))}</span></div></div>`
    );
  }

  function renderHistory(answer) {
    $("history-panel").dataset.window = answer.window; // what the plots show now
    const nodes = (answer.nodes || []).slice().sort((a, b) => a.node.localeCompare(b.node));
    const color = new Map(nodes.map((n, i) => [n.node, i % 6]));
    const plots = new Map(); // "kind|subject|metric" -> {kind, subject, metric, lines}
    let end = 0;
    let first = Infinity;
    let step = 10;
    for (const n of nodes) {
      end = Math.max(end, n.time || 0);
      step = n.step || step;
      if (n.times.length) first = Math.min(first, n.times[0]);
      for (const s of n.series) {
        // A node's own CPU and memory go on one plot for all nodes.
        const subject = s.kind === "node" ? "" : s.subject;
        const key = `${s.kind}|${subject}|${s.metric}`;
        if (!plots.has(key)) plots.set(key, { kind: s.kind, subject, metric: s.metric, lines: [] });
        plots.get(key).lines.push({
          node: n.node,
          color: color.get(n.node),
          points: n.times.map((t, i) => [t, s.values[i]]),
        });
      }
    }
    if (!end) end = Date.now() / 1000;
    // The time axis grows with the history until it spans the whole window.
    const span = Math.min(WINDOWS[answer.window] || 900, Math.max(60, end - (Number.isFinite(first) ? first : end)));
    const start = end - span;
    const draw = (p, title) => {
      const info = PLOTS[p.metric] || { title: p.metric.replace(/_/g, " "), unit: /seconds$/.test(p.metric) ? "seconds" : "rate" };
      return plot(`${p.kind}:${p.subject ? `${p.subject}:` : ""}${p.metric}`, title || info.title, info.unit, p.lines, start, end, step);
    };
    const all = [...plots.values()];
    const nodePlots = ["cpu_ratio", "memory_ratio"]
      .map((m) => all.find((p) => p.kind === "node" && p.metric === m))
      .filter(Boolean)
      .map((p) => draw(p));
    setHTML($("history-nodes"), nodePlots.join("") || `<p class="muted small">no samples yet</p>`);
    const services = [...new Set(all.filter((p) => p.kind === "service").map((p) => p.subject))].sort();
    const serviceBlocks = services.map((name) => {
      const mine = all.filter((p) => p.kind === "service" && p.subject === name);
      mine.sort((a, b) => SERVICE_ORDER.indexOf(a.metric) - SERVICE_ORDER.indexOf(b.metric));
      return `<div class="plot-group" data-history-service="${esc(name)}"><h4>${esc(name)}</h4><div class="plots">${mine.map((p) => draw(p)).join("")}</div></div>`;
    });
    setHTML($("history-services"), serviceBlocks.join("") || `<p class="muted small">no services on these nodes yet</p>`);
    const volumes = all.filter((p) => p.kind === "volume").sort((a, b) => a.subject.localeCompare(b.subject));
    $("history-volumes-block").hidden = !volumes.length;
    setHTML($("history-volumes"), volumes.map((p) => draw(p, `${p.subject} · ${p.metric.replace(/_/g, " ")}`)).join(""));
    const legend = nodes.map((n) => `<span class="key c${color.get(n.node)}" data-legend="${esc(n.node)}"><i></i>${esc(n.node)}</span>`);
    const missing = (answer.unreachable || []).map((u) => `${u.node}: ${u.error}`);
    setHTML(
      $("history-legend"),
      legend.join("") +
        (missing.length ? ` <span class="warn-text small" title="${esc(missing.join("\n"))}">no answer from ${esc((answer.unreachable || []).map((u) => u.node).join(", "))}</span>` : ""),
    );
    const memory = nodes.reduce((sum, n) => sum + (n.memory_bytes || 0), 0);
    setHTML(
      $("history-note"),
      `one point per ${esc(humanSeconds(step))} · sampled every ${esc(humanSeconds(nodes[0]?.interval || 10))} by each agent · ` +
        `${esc(humanBytes(memory))} of history on ${nodes.length} node(s)`,
    );
  }

  async function pollHistory() {
    clearTimeout(historyTimer);
    const asked = ++historyAsked;
    const chosen = historyWindow;
    let step = 10;
    try {
      const answer = await getJSON(`${API}/history?window=${chosen}&scope=cluster`);
      if (asked !== historyAsked) return;
      renderHistory(answer);
      step = answer.step || step;
    } catch (e) {
      if (asked !== historyAsked) return;
      setHTML($("history-note"), `<span class="bad-text">history unavailable: ${esc(e.message)}</span>`);
    }
    // Fresh points come once a step: ask about as often, between 2 s and a minute.
    historyTimer = setTimeout(pollHistory, Math.min(60000, Math.max(2000, step * 1000)));
  }

  function chooseWindow(w) {
    historyWindow = w;
    sessionStorage.setItem("ninefold-history-window", w);
    for (const b of document.querySelectorAll("#history-window button")) {
      b.classList.toggle("on", b.dataset.window === w);
      b.setAttribute("aria-pressed", b.dataset.window === w ? "true" : "false");
    }
    pollHistory();
  }

  $("history-window").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-window]");
    if (b) chooseWindow(b.dataset.window);
  });

  // -- polling ---------------------------------------------------------------------------
  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store", headers: authHeaders() });
    if (r.status === 401) askForToken();
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      /* not JSON */
    }
    if (!r.ok) {
      const msg = body?.error?.message || `${r.status} ${r.statusText}`;
      throw new Error(msg);
    }
    return body;
  }

  async function pollStatus() {
    try {
      status = await getJSON(`${API}/status`);
      renderStatus(status);
      connection("live", `updated ${clock(Date.now())}`);
    } catch (e) {
      connection(status ? "stale" : "down", `API: ${e.message}`);
    }
  }

  async function pollMetrics() {
    const now = Date.now();
    try {
      const r = await fetch(METRICS, { cache: "no-store", headers: authHeaders() });
      if (!r.ok) throw new Error(`${r.status}`);
      recordMetrics(parseMetrics(await r.text()), now);
      metricsState = "ok";
    } catch (_) {
      metricsState = "unavailable";
    }
    renderCharts(now);
  }

  let timer = null;
  let running = false;
  let again = false;

  async function tick() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    try {
      await Promise.all([pollStatus(), pollVolumes(), pollMetrics()]);
    } finally {
      running = false;
      if (again) {
        again = false;
        tick();
      } else {
        timer = setTimeout(tick, POLL_MS);
      }
    }
  }

  async function whoServes() {
    try {
      const h = await getJSON(`${API}/health`);
      $("served-by").textContent = h.node || "?";
    } catch (_) {
      setTimeout(whoServes, 5000);
    }
  }

  // -- actions ---------------------------------------------------------------------------
  const ACTIONS = {
    drain: (n) => ({ url: `${API}/nodes/${encodeURIComponent(n)}/drain` }),
    undrain: (n) => ({ url: `${API}/nodes/${encodeURIComponent(n)}/undrain` }),
    restart: (s) => ({ url: `${API}/services/${encodeURIComponent(s)}/restart` }),
    switchover: (s) => ({ url: `${API}/services/${encodeURIComponent(s)}/switchover`, body: {} }),
  };

  async function act(action, target) {
    const key = `${action}:${target}`;
    if (pending.has(key) || !ACTIONS[action]) return;
    const { url, body } = ACTIONS[action](target);
    pending.add(key);
    if (status) renderStatus(status);
    try {
      const r = await fetch(url, {
        method: "POST",
        headers: { ...authHeaders(), ...(body ? { "content-type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      let answer = null;
      try {
        answer = await r.json();
      } catch (_) {
        /* empty */
      }
      if (r.ok) message("ok", answer?.message || `${action} ${target}: accepted`);
      else message("error", `${action} ${target} failed: ${answer?.error?.message || `${r.status} ${r.statusText}`}`);
    } catch (e) {
      message("error", `${action} ${target} failed: ${e.message}`);
    } finally {
      pending.delete(key);
      if (status) renderStatus(status);
      tick();
    }
  }

  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (btn && !btn.disabled) act(btn.dataset.action, btn.dataset.target);
  });

  // -- events: initial fill, then the live stream ------------------------------------
  const seen = new Set();

  function eventTone(kind) {
    if (/failover|switchover/.test(kind)) return "warn";
    if (/lost|fail|fenc|crash|died|unplaced|kill|error|unhealthy|exit/.test(kind)) return "bad";
    if (/drain|demot|stop|remov|rolling|switch|restart|moved/.test(kind)) return "warn";
    if (/join|start|promot|placed|healthy|leader|elected/.test(kind)) return "ok";
    return "neutral";
  }

  function addEvent(e) {
    const key = `${e.time}|${e.node}|${e.kind}|${e.subject}`;
    if (seen.has(key)) return;
    seen.add(key);
    const list = $("events");
    const li = document.createElement("li");
    li.className = `event ${eventTone(e.kind || "")}`;
    li.dataset.kind = e.kind || "";
    li.dataset.time = String(e.time || 0);
    li.dataset.key = key;
    const ms = (e.time || 0) * 1000;
    const data = Object.entries(e.data || {})
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
      .join(" ");
    li.innerHTML =
      `<time title="${esc(new Date(ms).toISOString())}">${clock(ms)}</time>` +
      `<span class="kind">${esc(e.kind)}</span> <b class="subject">${esc(e.subject)}</b>` +
      `${e.reason ? ` <span class="reason">${esc(e.reason)}</span>` : ""}` +
      `${data ? ` <span class="data">${esc(data)}</span>` : ""}` +
      `${e.node ? ` <span class="by">by ${esc(e.node)}</span>` : ""}`;
    // Newest first; an event that arrives late still lands in time order.
    let before = list.firstElementChild;
    while (before && Number(before.dataset.time) > (e.time || 0)) before = before.nextElementSibling;
    list.insertBefore(li, before);
    while (list.children.length > MAX_EVENTS) {
      seen.delete(list.lastElementChild.dataset.key);
      list.lastElementChild.remove();
    }
  }

  async function fillEvents() {
    try {
      const events = await getJSON(`${API}/events?limit=${FILL_EVENTS}`);
      for (const e of events || []) addEvent(e);
      return true;
    } catch (_) {
      return false;
    }
  }

  // Every (re)connection fills what may have been missed; the set of seen
  // events drops the duplicates and addEvent keeps time order.
  function streamEvents() {
    fillEvents();
    if (!window.EventSource) {
      setInterval(fillEvents, 2000);
      return;
    }
    // EventSource cannot send headers: the token goes in the query (RFC 6750).
    const query = token ? `?access_token=${encodeURIComponent(token)}` : "";
    const source = new EventSource(`${API}/events/stream${query}`);
    source.onmessage = (msg) => {
      try {
        addEvent(JSON.parse(msg.data));
      } catch (_) {
        /* not an event */
      }
    };
    source.onopen = () => fillEvents();
    source.onerror = () => {
      // A closed stream (an error status) is not retried by the browser.
      if (source.readyState === EventSource.CLOSED) setTimeout(streamEvents, 5000);
    };
  }

  whoServes();
  tick();
  pollAvailability();
  streamEvents();
  chooseWindow(historyWindow);
})();
