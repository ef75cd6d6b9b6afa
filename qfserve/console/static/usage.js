// The app page's usage chart: requests and tokens per service over time (from usage_by_app).
(function () {
  "use strict";
  const raw = document.getElementById("usage-data");
  if (!raw) return;
  const rows = JSON.parse(raw.textContent);
  const services = [...new Set(rows.map((r) => r.service))].sort();
  const times = [...new Set(rows.map((r) => r.period_start))].sort((a, b) => a - b);
  const series = [];
  services.forEach((s) => { series.push(s + " requests"); series.push(s + " tokens"); });
  const chart = window.qfCharts.line(document.getElementById("usage-chart"), series, {});
  const cols = [times];
  services.forEach((s) => {
    const find = (t) => rows.find((r) => r.service === s && r.period_start === t);
    cols.push(times.map((t) => (find(t) || {}).requests || 0));
    cols.push(times.map((t) => (find(t) || {}).tokens || 0));
  });
  chart.setData(cols);
})();
