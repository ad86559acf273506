// Petals swarm dashboard: polls api/v1/swarm and redraws. Every string from the swarm is untrusted (any server
// can announce any public name), so text goes in through textContent only, never as HTML.
"use strict";

const REFRESH_MS = 1000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k === "id" || k === "title" || k === "style") e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

const fmt = {
  num: (v, digits = 0) => Number(v).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }),
  // Times are measured against the snapshot's own clock, so a browser whose clock is off still reads right.
  ago(iso, now) {
    const s = Math.round((Date.parse(now) - Date.parse(iso)) / 1000);
    return s < 1 ? "just now" : s < 60 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
  },
  until(iso, now) {
    const s = Math.round((Date.parse(iso) - Date.parse(now)) / 1000);
    return s <= 0 ? "expired" : s < 60 ? `in ${s} s` : `in ${Math.round(s / 60)} min`;
  },
};

function summary(view) {
  const servers = view.models.flatMap(m => m.servers);
  const online = servers.filter(s => s.state === "ONLINE").length;
  const stat = (id, value, label) => el("div", { class: "stat", id }, el("div", { class: "value", text: String(value) }), el("div", { class: "label", text: label }));
  return [
    stat("stat-models", view.models.length, "models"),
    stat("stat-online", online, "servers online"),
    stat("stat-other", servers.length - online, "joining / offline / gone"),
    stat("stat-min", view.min_coverage, "min coverage"),
  ];
}

function warning(w) {
  return el("li", { class: "warning", "data-kind": w.kind, "data-severity": w.severity, "data-model": w.model, "data-peer-id": w.peer_id ?? "", text: w.message });
}

function coverageStrip(m) {
  const strip = el("div", { class: "coverage", "data-model": m.dht_prefix });
  for (const b of m.blocks) {
    strip.append(el("div", {
      class: "block", "data-block": String(b.block), "data-servers": String(b.servers), "data-status": b.status,
      title: `block ${b.block}: ${b.servers} online server(s), ${fmt.num(b.throughput, 1)} tok/s`,
    }, String(b.servers), el("small", { text: String(b.block) })));
  }
  const legend = el("div", { class: "legend" },
    el("span", { style: "--c: var(--ok)", text: "covered" }),
    el("span", { style: "--c: var(--low)", text: "below min coverage" }),
    el("span", { style: "--c: var(--bad)", text: "uncovered" }),
    el("span", { text: "number = online servers, small = block index" }));
  return [strip, legend];
}

function spanBar(s, numBlocks) {
  const left = (100 * s.start) / numBlocks, width = (100 * (s.end - s.start)) / numBlocks;
  return el("div", { class: "spanbar" }, el("div", { style: `left:${left}%;width:${width}%` }));
}

function serversTable(m, now) {
  if (m.servers.length === 0) return el("p", { class: "empty", text: "no servers" });
  const head = el("tr", {}, ...["state", "name", "address", "reached", "blocks", "throughput", "inference", "cache left", "version", "dtype", "quant", "adapters", "records"]
    .map(h => el("th", { text: h })));
  const rows = m.servers.map(s => el("tr", { "data-peer-id": s.peer_id, "data-state": s.state, "data-address": s.address },
    el("td", {}, el("span", { class: "badge", "data-state": s.state, text: s.state })),
    el("td", { class: "name", title: s.peer_id, text: s.public_name || s.peer_id.slice(0, 12) }),
    el("td", { class: "mono", text: s.address }),
    el("td", { "data-reachability": s.reachability ?? "direct", title: s.relay || "", text: s.relay ? `via relay ${s.relay.split("/")[0]}` : "direct" }),
    el("td", { "data-span": `${s.start}:${s.end}` }, el("span", { class: "mono", text: `${s.start}:${s.end}` }), spanBar(s, m.num_blocks)),
    el("td", { class: "num", text: `${fmt.num(s.throughput, 1)} tok/s` }),
    el("td", { class: "num", text: `${fmt.num(s.inference_rps, 1)} rps` }),
    el("td", { class: "num", text: `${fmt.num(s.cache_tokens_left)} tok` }),
    el("td", { class: "mono", text: s.version }),
    el("td", { text: s.dtype }),
    el("td", { text: s.quant ?? "none" }),
    el("td", { text: s.adapters.length ? s.adapters.join(", ") : "—" }),
    el("td", { text: s.state === "GONE" ? `last seen ${fmt.ago(s.last_seen, now)}` : `expires ${fmt.until(s.expires, now)}` })));
  return el("table", { class: "servers", "data-model": m.dht_prefix }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function pingsTable(m) {
  if (m.pings.length === 0) return el("p", { class: "empty", text: "no pings announced yet" });
  const names = new Map(m.servers.map(s => [s.address, s.public_name || s.address]));
  const rows = m.pings.map(p => el("tr", { "data-from": p.from, "data-to": p.to, "data-unreachable": String(p.unreachable) },
    el("td", { class: "mono", text: names.get(p.from) ?? p.from }),
    el("td", { class: "mono", text: names.get(p.to) ?? p.to }),
    el("td", { class: "num", text: p.unreachable ? "unreachable" : `${fmt.num(p.ms, 2)} ms` })));
  return el("table", { class: "pings", "data-model": m.dht_prefix },
    el("thead", {}, el("tr", {}, el("th", { text: "from" }), el("th", { text: "to (next server)" }), el("th", { text: "round trip" }))),
    el("tbody", {}, ...rows));
}

function model(m, now) {
  const online = m.servers.filter(s => s.state === "ONLINE").length;
  return el("section", { class: "model", "data-model": m.dht_prefix },
    el("h2", { text: m.dht_prefix }),
    el("div", { class: "meta", text: `${m.repository || m.dht_prefix} · ${m.model_type || "?"} · ${m.num_blocks} blocks · ${online} of ${m.servers.length} servers online` }),
    el("h3", { text: "coverage by block" }), ...coverageStrip(m),
    el("h3", { text: "servers" }), serversTable(m, now),
    el("h3", { text: "pings to next servers" }), pingsTable(m));
}

function render(view) {
  document.getElementById("summary").replaceChildren(...summary(view));
  document.getElementById("warnings").replaceChildren(...view.warnings.map(warning));
  document.getElementById("models").replaceChildren(...view.models.map(m => model(m, view.generated_at)));
  document.body.dataset.generatedAt = view.generated_at;
}

function setStatus(state, text) {
  const s = document.getElementById("status");
  s.dataset.state = state;
  document.getElementById("status-text").textContent = text;
}

async function refresh() {
  try {
    const r = await fetch("api/v1/swarm", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const view = await r.json();
    render(view);
    if (view.error) setStatus("stale", view.error);
    else setStatus("live", `live · updated ${new Date(view.generated_at).toLocaleTimeString()}`);
  } catch (e) {
    setStatus("stale", `dashboard unreachable (${e.message})`);
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
