// The job page: a live loss chart and progress bar, from /console/api/jobs/<id>, until the job ends.
(function () {
  "use strict";
  const box = document.getElementById("job-status");
  if (!box) return;
  const id = box.dataset.job;
  const chart = window.qfCharts.line(document.getElementById("loss-chart"), ["loss"], { time: false, xAxis: "step", yAxis: "loss", xLabel: "step" });
  async function poll() {
    let job;
    try {
      const r = await fetch("/console/api/jobs/" + id, { credentials: "same-origin" });
      job = await r.json();
    } catch (e) { setTimeout(poll, 3000); return; }
    chart.setData([job.steps, job.losses]);
    const bar = document.getElementById("job-progress");
    if (job.total_steps) bar.max = job.total_steps;
    bar.value = job.steps.length;
    document.getElementById("progress-text").textContent = "step " + job.steps.length + (job.total_steps ? " of " + job.total_steps : "");
    const badge = document.getElementById("status-badge");
    badge.textContent = job.status; badge.className = "badge " + job.status;
    if (job.status === "running" || job.status === "queued") setTimeout(poll, 2000);
    else if (box.dataset.status !== job.status) location.reload();  // show the result and the publish form
  }
  poll();
})();
