// The metrics page: polls /console/api/metrics, turns counters into per-second rates, plots per service.
(function () {
  "use strict";
  const WINDOW = 150;  // points kept: 5 minutes at one per 2 s
  let services = null, charts = {}, data = {}, previous = null;
  const kinds = ["rps", "tps", "ttft", "queue"];

  function setup(names) {
    services = names;
    kinds.forEach((k) => {
      const el = document.getElementById("chart-" + k);
      el.textContent = "";
      // TTFT exists only for intervals with a first token: its points are drawn and joined across gaps.
      charts[k] = window.qfCharts.line(el, names.length ? names : ["–"], { points: k === "ttft", spanGaps: k === "ttft" });
      data[k] = [[]].concat((names.length ? names : ["–"]).map(() => []));
    });
  }

  function push(kind, t, values) {
    const d = data[kind];
    d[0].push(t);
    values.forEach((v, i) => d[i + 1].push(v));
    if (d[0].length > WINDOW) d.forEach((col) => col.shift());
    charts[kind].setData(d);
  }

  function engines(rows) {
    const body = document.getElementById("engine-rows");
    body.textContent = "";
    rows.forEach((e) => {
      const tr = document.createElement("tr");
      const cells = [e.model, null, e.stats.running, e.stats.waiting, e.stats.parallel, e.stats.queue_size];
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        if (i === 1) { const b = document.createElement("span"); b.className = "badge " + (e.ready ? "succeeded" : "failed"); b.textContent = e.ready ? "ready" : "not ready"; td.append(b); }
        else td.textContent = c;
        tr.append(td);
      });
      body.append(tr);
    });
  }

  async function poll() {
    try {
      const r = await fetch("/console/api/metrics", { credentials: "same-origin" });
      const snap = await r.json();
      const names = Object.keys(snap.services).sort();
      if (!services || names.join() !== services.join()) { setup(names); previous = null; }
      if (previous) {
        const dt = Math.max(1e-3, snap.time - previous.time);
        const per = (f) => names.map((n) => f(snap.services[n], previous.services[n] || snap.services[n]));
        push("rps", snap.time, per((a, b) => (a.requests - b.requests) / dt));
        push("tps", snap.time, per((a, b) => (a.tokens - b.tokens) / dt));
        push("ttft", snap.time, per((a, b) => (a.ttft_count > b.ttft_count ? (a.ttft_sum - b.ttft_sum) / (a.ttft_count - b.ttft_count) : null)));
        push("queue", snap.time, per((a) => a.waiting));
        const total = names.reduce((s, n) => s + snap.services[n].requests, 0);
        const el = document.getElementById("metrics-updated");
        el.textContent = "Updated " + new Date(snap.time * 1000).toLocaleTimeString() + " · " + total + " requests answered in all";
        el.dataset.points = String(data.rps[0].length);
        el.dataset.requests = String(total);
      }
      previous = snap;
      engines(snap.engines);
    } catch (e) { /* the next poll retries */ }
    setTimeout(poll, 2000);
  }
  poll();
})();
