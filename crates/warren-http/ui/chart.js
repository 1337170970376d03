// A small SVG line chart of rates over time: no library.

const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/**
 * Draws series ({label, color, points: [[t, v]]}) into an <svg>; the time axis spans the
 * points' times, the value axis 0 to a rounded maximum.
 */
export function drawChart(svg, series) {
  const W = 600, H = 220, L = 48, R = 10, T = 10, B = 24;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points);
  const t0 = all.length ? Math.min(...all.map((p) => p[0])) : 0;
  const t1 = all.length ? Math.max(...all.map((p) => p[0])) : 1;
  const span = Math.max(t1 - t0, 1);
  const max = niceMax(Math.max(1, ...all.map((p) => p[1])));
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    svg.append(el('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#e3e6ec' }));
    const label = el('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#5d6678' });
    label.textContent = fmtRate(v);
    svg.append(label);
  }
  const ends = t1 > t0 ? [[t0, 'start'], [t1, 'end']] : [[t1, 'end']];
  for (const [t, anchor] of ends) {
    const label = el('text', { x: x(t), y: H - 6, 'text-anchor': anchor, 'font-size': 11, fill: '#5d6678' });
    label.textContent = all.length ? new Date(t).toLocaleTimeString() : '';
    if (t1 === t0) label.setAttribute('x', W - R);
    svg.append(label);
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join('');
    svg.append(el('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 2 }));
  }
}

function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function fmtRate(v) {
  return v >= 100 ? Math.round(v).toString() : v.toFixed(v >= 10 ? 1 : 2).replace(/\.?0+$/, '') || '0';
}
