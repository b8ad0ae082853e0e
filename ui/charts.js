// Charts: the engine's own SVG inlined with hover/focus targets over its data
// points, and the one-minute sparklines of the Overview.

import { h } from './dom.js';

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// The chart SVG comes from the engine but may carry user text (labels): keep
// only drawing, drop anything that could run code.
function cleanSvg(text) {
  const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
  const root = doc.documentElement;
  if (root.nodeName !== 'svg') return null;
  for (const bad of root.querySelectorAll('script, foreignObject, iframe, a')) bad.remove();
  for (const el of [root, ...root.querySelectorAll('*')]) {
    for (const a of [...el.attributes]) {
      const n = a.name.toLowerCase();
      if (n.startsWith('on') || ((n === 'href' || n === 'xlink:href') && !a.value.startsWith('#'))) el.removeAttribute(a.name);
    }
  }
  return document.importNode(root, true);
}

function viewBox(el) {
  const vb = (el.getAttribute('viewBox') || '').split(/[\s,]+/).map(Number);
  if (vb.length === 4 && vb.every(Number.isFinite)) return vb;
  return [0, 0, parseFloat(el.getAttribute('width')) || 1200, parseFloat(el.getAttribute('height')) || 800];
}

// One chart: title, the SVG scaled to its box, and a focusable target on each
// point showing its exact label. Arrow keys move between points, so the chart
// is one tab stop rather than dozens.
export function chartFigure(chart) {
  const pic = cleanSvg(chart.svg || '');
  const fig = h('figure', { class: 'chart' }, h('figcaption', { text: chart.title || chart.name }));
  if (!pic) return fig;
  const [x0, y0, w, hgt] = viewBox(pic);
  pic.setAttribute('viewBox', `${x0} ${y0} ${w} ${hgt}`);
  pic.removeAttribute('width');
  pic.removeAttribute('height');
  pic.setAttribute('role', 'img');
  pic.setAttribute('aria-label', chart.title || chart.name);

  const tip = h('div', { class: 'tip', role: 'tooltip', hidden: true });
  const plane = h('div', { class: 'plane', style: `aspect-ratio: ${w} / ${hgt}` }, pic, tip);
  const points = (chart.points || []).map((p, i) => {
    const text = p.series ? `${p.series}: ${p.label}` : p.label;
    const b = h('button', {
      type: 'button', class: 'pt', tabindex: i === 0 ? '0' : '-1', 'aria-label': text,
      style: `left:${((p.x - x0) / w) * 100}%;top:${((p.y - y0) / hgt) * 100}%`,
    });
    const show = () => {
      tip.textContent = p.label;
      if (p.series) tip.prepend(h('span', { class: 'series', text: p.series }));
      tip.style.left = b.style.left;
      tip.style.top = b.style.top;
      tip.classList.toggle('flip', (p.x - x0) / w > 0.7);
      tip.hidden = false;
    };
    const hide = () => { tip.hidden = true; };
    b.addEventListener('pointerenter', show);
    b.addEventListener('pointerleave', hide);
    b.addEventListener('focus', show);
    b.addEventListener('blur', hide);
    b.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') return hide();
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
      if (!step) return;
      e.preventDefault();
      const next = points[(i + step + points.length) % points.length];
      b.tabIndex = -1;
      next.tabIndex = 0;
      next.focus();
    });
    return b;
  });
  plane.append(...points);
  fig.append(plane);
  return fig;
}

// A sparkline of `values` (oldest first) at times `ts` (ms) over the last
// minute ending at `end`; the caller keeps the element and calls it again.
export function sparkline(line, values, ts, end, max) {
  const top = max > 0 ? max : 1;
  const pts = values.map((v, i) => `${(60 - (end - ts[i]) / 1000).toFixed(2)},${(19 - (v / top) * 17).toFixed(2)}`);
  line.setAttribute('points', pts.join(' '));
}

export function sparkBox(label) {
  const line = svg('polyline', { fill: 'none', 'vector-effect': 'non-scaling-stroke' });
  const box = svg('svg', { viewBox: '0 0 60 20', preserveAspectRatio: 'none', class: 'spark', role: 'img', 'aria-label': label });
  box.append(line);
  return { box, line };
}
