// Words, colours and number formats for the engine's enums and figures, in one
// place so every view says the same thing the same way.

// Studio status: WorkerView.status / WorkerStats.state, plus `busy`, which the
// UI derives (ready with requests in flight). `tone` picks the colour in CSS.
const STUDIO = {
  ready: { word: 'Ready', tone: 'ok' },
  busy: { word: 'Busy', tone: 'busy' },
  starting: { word: 'Starting', tone: 'wait' },
  probing: { word: 'Probing', tone: 'wait' },
  draining: { word: 'Draining', tone: 'wait' },
  ejected: { word: 'Ejected', tone: 'bad' },
  disabled: { word: 'Disabled', tone: 'off' },
  removed: { word: 'Removed', tone: 'off' },
  stopped: { word: 'Stopped', tone: 'off' }, // the balancer is not running
};

export function studioStatus(status, inFlight) {
  const key = status === 'ready' && inFlight > 0 ? 'busy' : status;
  return { key, ...(STUDIO[key] || { word: String(status || 'Unknown'), tone: 'off' }) };
}

// Preflight check and report verdicts (src/preflight/mod.rs `Status`).
const CHECK = {
  pass: { word: 'Pass', tone: 'ok' },
  warn: { word: 'Warn', tone: 'wait' },
  fail: { word: 'Fail', tone: 'bad' },
  skip: { word: 'Skip', tone: 'off' },
};
export const checkStatus = (s) => CHECK[s] || { word: String(s), tone: 'off' };

// Why a studio was ejected (balancer `Failure`).
const FAILURE = {
  connect: 'connection failed',
  timeout: 'timed out',
  status_5xx: 'server errors (5xx)',
  status5xx: 'server errors (5xx)', // as the engine spells it
  stream: 'answer cut off',
  probe: 'health probe failed',
};
export const failureWord = (f) => FAILURE[f] || String(f);

const JOB = {
  running: { word: 'Running', tone: 'busy' },
  finished: { word: 'Finished', tone: 'ok' },
  failed: { word: 'Failed', tone: 'bad' },
  cancelled: { word: 'Cancelled', tone: 'off' },
};
export const jobStatus = (s) => JOB[s] || { word: String(s), tone: 'off' };

const KIND = {
  lm_studio: 'LM Studio',
  ollama: 'Ollama',
  llama_cpp: 'llama.cpp',
  mlx: 'MLX',
  vllm: 'vLLM',
  exo: 'exo',
  openai: 'OpenAI-compatible',
};
export const KINDS = Object.keys(KIND);
export const kindName = (k) => KIND[k] || String(k);

const SEVERITY = { high: 'bad', critical: 'bad', error: 'bad', medium: 'wait', warning: 'wait', warn: 'wait' };
export const severityTone = (s) => SEVERITY[String(s).toLowerCase()] || 'off';

const finite = (v) => typeof v === 'number' && Number.isFinite(v);

// Figures: one decimal under 100, none above, so columns stay short.
export function num(v, digits) {
  if (!finite(v)) return '–';
  const d = digits ?? (Math.abs(v) < 100 ? 1 : 0);
  return v.toLocaleString(undefined, { minimumFractionDigits: d, maximumFractionDigits: d });
}
export const int = (v) => (finite(v) ? Math.round(v).toLocaleString() : '–');
export const pct = (fraction, digits = 0) => (finite(fraction) ? `${num(fraction * 100, digits)}%` : '–');
export function ms(v) {
  if (!finite(v) || v <= 0) return '–';
  return v >= 1000 ? `${num(v / 1000, 2)} s` : `${num(v, v < 10 ? 1 : 0)} ms`;
}
export const secs = (v) => (finite(v) ? ms(v * 1000) : '–');
export const speedup = (v) => (finite(v) ? `${num(v, 2)}×` : '–');

export function when(unixSeconds) {
  if (!finite(unixSeconds) || unixSeconds <= 0) return '';
  return new Date(unixSeconds * 1000).toLocaleString(undefined, {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
  });
}
