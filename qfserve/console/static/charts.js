// A small wrapper over uPlot (vendored): line charts that fill their box and follow its width.
window.qfCharts = (function () {
  "use strict";
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  function line(el, seriesNames, opts) {
    opts = opts || {};
    const width = () => Math.max(260, el.clientWidth || 600);
    const series = [{ label: opts.xLabel || "time" }].concat(seriesNames.map((name, i) => ({
      label: name, stroke: palette[i % palette.length], width: 2, spanGaps: !!opts.spanGaps,
      points: { show: opts.points !== false, size: 5 },
    })));
    const chart = new uPlot({
      width: width(), height: opts.height || 220, series: series,
      scales: { x: { time: opts.time !== false } },
      axes: [{ label: opts.xAxis || "" }, { label: opts.yAxis || "" }],
    }, [[]].concat(seriesNames.map(() => [])), el);
    window.addEventListener("resize", () => chart.setSize({ width: width(), height: opts.height || 220 }));
    return chart;
  }
  return { line: line };
})();
