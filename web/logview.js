// Task output for the console: ANSI colours turned into spans (never HTML: every piece of
// text is a text node), and a virtualised view that keeps only the visible lines in the DOM, so a
// task of 100 000 lines or more scrolls as lightly as one of ten.

/** SGR state: foreground/background (palette index 0..15, `#rrggbb`, or null) and flags. */
const PLAIN = Object.freeze({ fg: null, bg: null, bold: false, dim: false, italic: false, underline: false });

// CSI sequences (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), other escapes (ESC,
// intermediate bytes, a final byte: charset selection and the like),
// and the C0 controls a terminal would not print (tab is kept).
// eslint-disable-next-line no-control-regex
const ESCAPE = /\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?|[\x00-\x08\x0b-\x1f\x7f]/g;

/** The 256-colour palette entry `n` (16..255) as `#rrggbb`. */
function xterm(n) {
  if (n >= 232) {
    const v = (8 + (n - 232) * 10).toString(16).padStart(2, '0');
    return `#${v}${v}${v}`;
  }
  const c = n - 16;
  const level = (x) => (x === 0 ? 0 : 55 + x * 40).toString(16).padStart(2, '0');
  return `#${level(Math.floor(c / 36))}${level(Math.floor(c / 6) % 6)}${level(c % 6)}`;
}

/** A colour from `38;5;n` / `38;2;r;g;b` at `codes[i]` (the 5 or 2); returns [colour, next i]. */
function extended(codes, i) {
  if (codes[i] === 5 && codes.length > i + 1) {
    const n = codes[i + 1];
    if (n >= 0 && n < 16) return [n, i + 2];
    if (n < 256) return [xterm(n), i + 2];
    return [null, i + 2];
  }
  if (codes[i] === 2 && codes.length > i + 3) {
    const hex = codes
      .slice(i + 1, i + 4)
      .map((v) => Math.max(0, Math.min(255, v)).toString(16).padStart(2, '0'))
      .join('');
    return [`#${hex}`, i + 4];
  }
  return [null, codes.length];
}

/** `state` after the SGR parameters `params` (e.g. "1;31"). */
function applySgr(state, params) {
  const codes = params === '' ? [0] : params.split(';').map((p) => (p === '' ? 0 : Number(p)));
  const s = { ...state };
  for (let i = 0; i < codes.length; i += 1) {
    const c = codes[i];
    if (c === 0) Object.assign(s, PLAIN);
    else if (c === 1) s.bold = true;
    else if (c === 2) s.dim = true;
    else if (c === 3) s.italic = true;
    else if (c === 4) s.underline = true;
    else if (c === 22) {
      s.bold = false;
      s.dim = false;
    } else if (c === 23) s.italic = false;
    else if (c === 24) s.underline = false;
    else if (c >= 30 && c <= 37) s.fg = c - 30;
    else if (c >= 90 && c <= 97) s.fg = c - 90 + 8;
    else if (c === 39) s.fg = null;
    else if (c >= 40 && c <= 47) s.bg = c - 40;
    else if (c >= 100 && c <= 107) s.bg = c - 100 + 8;
    else if (c === 49) s.bg = null;
    else if (c === 38 || c === 48) {
      const [colour, next] = extended(codes, i + 1);
      if (c === 38) s.fg = colour;
      else s.bg = colour;
      i = next - 1;
    }
  }
  return isPlain(s) ? PLAIN : Object.freeze(s);
}

const isPlain = (s) => s.fg === null && s.bg === null && !s.bold && !s.dim && !s.italic && !s.underline;

/**
 * Splits one output line into styled runs: `[{text, state}]`, escapes removed. `start` is the
 * state carried over from the previous line; the state at the line's end is returned too.
 */
export function parseAnsi(line, start = PLAIN) {
  const runs = [];
  let state = start;
  let last = 0;
  const text = String(line);
  // A carriage return rewrites the line: keep what was written last.
  const cr = text.lastIndexOf('\r');
  const body = cr >= 0 && cr < text.length - 1 ? text.slice(cr + 1) : text.replace(/\r$/, '');
  ESCAPE.lastIndex = 0;
  for (let m = ESCAPE.exec(body); m; m = ESCAPE.exec(body)) {
    if (m.index > last) runs.push({ text: body.slice(last, m.index), state });
    if (m[2] === 'm') state = applySgr(state, m[1]);
    last = ESCAPE.lastIndex;
  }
  if (last < body.length) runs.push({ text: body.slice(last), state });
  return { runs, end: state };
}

/** The spans (or bare text nodes) of one line's runs, appended to `row`. */
export function renderRuns(row, runs) {
  for (const run of runs) {
    const s = run.state;
    if (isPlain(s)) {
      row.append(document.createTextNode(run.text));
      continue;
    }
    const span = document.createElement('span');
    span.textContent = run.text;
    if (typeof s.fg === 'number') span.classList.add(`ansi-fg-${s.fg}`);
    else if (s.fg) span.style.color = s.fg; // CSSOM, allowed under style-src 'self'
    if (typeof s.bg === 'number') span.classList.add(`ansi-bg-${s.bg}`);
    else if (s.bg) span.style.backgroundColor = s.bg;
    if (s.bold) span.classList.add('ansi-bold');
    if (s.dim) span.classList.add('ansi-dim');
    if (s.italic) span.classList.add('ansi-italic');
    if (s.underline) span.classList.add('ansi-underline');
    row.append(span);
  }
}

/** Lines kept above and below the visible ones. */
const OVERSCAN = 30;

/**
 * A scrolling box of output lines. Only the lines in view (plus a margin) exist as DOM nodes;
 * the rest are strings in an array. It follows the tail while the reader is at the bottom and
 * stays put once they scroll up; `onFollowChange(following)` reports the switch.
 */
export class LogView {
  constructor(box, { onFollowChange } = {}) {
    this.box = box;
    this.lines = []; // raw text
    this.starts = []; // SGR state at each line's start
    this.endState = PLAIN;
    this.follow = true;
    this.onFollowChange = onFollowChange || (() => {});
    this.lineHeight = 0;
    this.frame = 0;
    this.rendered = { first: -1, last: -1, count: -1 };
    this.spacer = document.createElement('div');
    this.spacer.className = 'log-spacer';
    this.rows = document.createElement('div');
    this.rows.className = 'log-rows';
    this.spacer.append(this.rows);
    box.replaceChildren(this.spacer);
    box.addEventListener('scroll', () => this.onScroll(), { passive: true });
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(box);
  }

  get count() {
    return this.lines.length;
  }

  /** Adds lines at the end (strings). */
  append(lines) {
    if (lines.length === 0) return;
    let state = this.endState;
    for (const line of lines) {
      const text = String(line);
      this.lines.push(text);
      this.starts.push(state);
      // Only lines holding an escape can change the state.
      if (text.includes('\x1b')) state = parseAnsi(text, state).end;
    }
    this.endState = state;
    this.box.dataset.lines = String(this.lines.length);
    this.schedule();
  }

  /** Drops every line (a resync). */
  clear() {
    this.lines = [];
    this.starts = [];
    this.endState = PLAIN;
    this.box.dataset.lines = '0';
    this.rendered = { first: -1, last: -1, count: -1 };
    this.schedule();
  }

  /** Scrolls to the end and follows it again. */
  jumpToEnd() {
    this.setFollow(true);
    this.schedule();
  }

  setFollow(on) {
    if (this.follow === on) return;
    this.follow = on;
    this.box.dataset.follow = String(on);
    this.onFollowChange(on);
  }

  onScroll() {
    // The view only scrolls itself to the very end, and sets the height in the same frame, so a
    // position short of the end is the reader's doing.
    const slack = Math.max(this.lineHeight, 4) * 1.5;
    const atEnd = this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - slack;
    this.setFollow(atEnd);
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  measure() {
    if (this.lineHeight) return this.lineHeight;
    const probe = document.createElement('div');
    probe.className = 'log-line';
    probe.textContent = 'M';
    this.rows.append(probe);
    this.lineHeight = probe.getBoundingClientRect().height || 18;
    probe.remove();
    return this.lineHeight;
  }

  render() {
    const lh = this.measure();
    const n = this.lines.length;
    this.spacer.style.height = `${n * lh}px`;
    if (this.follow) {
      const bottom = Math.max(0, n * lh - this.box.clientHeight);
      if (Math.abs(this.box.scrollTop - bottom) > 1) {
        this.box.scrollTop = bottom;
      }
    }
    const top = this.box.scrollTop;
    const visible = Math.ceil(this.box.clientHeight / lh) + 1;
    const first = Math.max(0, Math.floor(top / lh) - OVERSCAN);
    const last = Math.min(n, Math.floor(top / lh) + visible + OVERSCAN);
    const r = this.rendered;
    if (r.first === first && r.last === last && r.count === n) return;
    this.rendered = { first, last, count: n };
    const rows = [];
    for (let i = first; i < last; i += 1) {
      const row = document.createElement('div');
      row.className = 'log-line';
      row.dataset.n = String(i + 1);
      const text = this.lines[i];
      const start = this.starts[i];
      if (start === PLAIN && !text.includes('\x1b') && !text.includes('\r')) {
        row.textContent = text;
      } else {
        renderRuns(row, parseAnsi(text, start).runs);
      }
      rows.push(row);
    }
    this.rows.style.transform = `translateY(${first * lh}px)`;
    this.rows.replaceChildren(...rows);
  }

  destroy() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.resize.disconnect();
  }
}
