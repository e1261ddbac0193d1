// Forge console: projects, templates (Run, with the survey as a form), the task list and a task's
// output, live over `/api/ws`. Hash routes in this one page:
//   #/                               projects (and the token list below, from app.js)
//   #/project/{p}                    templates, tasks, schedules, integrations of a project
//   #/project/{p}/template/{t}/run   the run form (survey variables)
//   #/project/{p}/task/{t}           one task: status, Stop, raw output, live output
// The session, the API helper and the status line come from app.js (`window.forge`). Every value
// from the server goes into the page as text (textContent / text nodes), never as HTML.

import { LogView } from './logview.js';

const root = document.getElementById('console-view');
const tokensView = document.getElementById('tokens-view');

const ACTIVE = new Set(['waiting', 'starting', 'waiting_confirmation', 'confirmed', 'running', 'stopping']);
const FINISHED = new Set(['success', 'error', 'stopped']);
/** How far along a status is: a task never goes back (but for terraform's confirmation loop). */
const STAGE = { waiting: 0, starting: 1, waiting_confirmation: 2, confirmed: 3, running: 4, stopping: 5 };
const stage = (status) => (FINISHED.has(status) ? 6 : STAGE[status] ?? 0);

/**
 * A task as fetched, with `live` (the last socket update for it: `{status, start, end}`) laid
 * over it when that is further along: a reply that left the server before the update must not
 * turn the task back.
 */
function freshest(fetched, live) {
  if (!live || stage(live.status) <= stage(fetched.status)) return fetched;
  return { ...fetched, status: live.status, start: live.start, end: live.end };
}
/** Lines asked for per `/output` request while catching up. */
const OUTPUT_PAGE = 20000;
/** Tasks shown in a project's list. */
const TASKS_SHOWN = 50;

const forge = () => window.forge;
const api = (method, path, body) => forge().api(method, path, body);
const say = (text, kind) => forge().setStatus(text, kind);
const describe = (e) => forge().describe(e);

// ---- DOM helpers ------------------------------------------------------------------------------

/**
 * `h('a', {href, className, dataset, on: {click}, attrs: {...}}, ...children)`: an element whose
 * children are nodes or strings (strings become text nodes).
 */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === 'attrs') {
      for (const [a, av] of Object.entries(v)) if (av !== null && av !== undefined) node.setAttribute(a, av);
    }
    else node[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** `2025-05-21T02:35:12Z` → `2025-05-21 02:35:12`. */
function when(iso) {
  if (!iso) return '—';
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(String(iso));
  return m ? `${m[1]} ${m[2]}` : String(iso);
}

/** Seconds between `start` and `end` (or now while running), as `1h 02m`, `3m 05s`, `12s`. */
function duration(task) {
  if (!task.start) return '—';
  const from = Date.parse(task.start);
  const to = task.end ? Date.parse(task.end) : Date.now();
  if (!Number.isFinite(from) || !Number.isFinite(to)) return '—';
  const s = Math.max(0, Math.round((to - from) / 1000));
  const pad = (n) => String(n).padStart(2, '0');
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${pad(Math.floor(s / 60) % 60)}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${s}s`;
}

function badge(status) {
  return h(
    'span',
    { className: `badge status status-${status}`, dataset: { testid: 'task-status', status } },
    status.replace('_', ' '),
  );
}

function heading(text, testid) {
  // Focus lands here on navigation, so a screen reader announces the new view.
  return h('h2', { tabIndex: -1, dataset: { testid } }, text);
}

/**
 * Breadcrumbs "Projects / <project> [/ here]"; the project's name replaces its id when it
 * arrives (and goes to `onName`, and the window title), unless `alive()` says the view is gone.
 */
function projectCrumbs(p, here, alive, onName) {
  const current = { attrs: { 'aria-current': 'page' } };
  const name = here ? h('a', { href: `#/project/${p}` }, `Project ${p}`) : h('span', current, `Project ${p}`);
  const items = [h('li', {}, h('a', { href: '#/' }, 'Projects')), h('li', {}, name)];
  if (here) items.push(h('li', {}, h('span', current, here)));
  api('GET', `/api/project/${p}`)
    .then((project) => {
      if (!alive() || !project) return;
      name.textContent = project.name;
      document.title = `${here ? `${here} — ` : ''}${project.name} — Forge`;
      if (onName) onName(project.name);
    })
    .catch(() => {});
  return h('nav', { className: 'crumbs', attrs: { 'aria-label': 'Breadcrumb' } }, h('ol', {}, items));
}

/** A section card with a title and a body that shows an error in place when loading fails. */
function card(title, testid, ...body) {
  return h(
    'section',
    { className: 'card console-card', dataset: { testid }, attrs: { 'aria-label': title } },
    h('h3', {}, title),
    ...body,
  );
}

function failure(where, e) {
  return h('p', { className: 'error', attrs: { role: 'alert' } }, `Could not load ${where}: ${describe(e)}`);
}

/** A table: `cols` = [header, ...]; rows appended to the returned tbody. */
function table(caption, cols, testid) {
  const tbody = h('tbody', { dataset: { testid } });
  const t = h(
    'table',
    { className: 'console-table' },
    h('caption', { className: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))),
    tbody,
  );
  return { wrap: h('div', { className: 'table-wrap' }, t), tbody };
}

const cell = (label, ...children) => h('td', { dataset: { label } }, ...children);

/**
 * What the user may do in project `p`: `{role, canRun}` (Run and Stop need the role's "run
 * tasks" permission; admins may always). When the role cannot be read the server decides.
 */
async function projectRole(p) {
  const user = forge().user;
  try {
    const r = await api('GET', `/api/project/${p}/role`);
    const role = (r && r.role) || (user && user.admin ? 'admin' : '');
    return { role, canRun: Boolean(user && user.admin) || Boolean(r && r.permissions & 1) };
  } catch {
    return { role: '', canRun: true };
  }
}

// ---- live updates -------------------------------------------------------------------------------

/** One WebSocket to `/api/ws` while signed in; reconnects with backoff; tells the view. */
const live = {
  ws: null,
  wanted: false,
  retry: 0,
  timer: 0,

  start() {
    this.wanted = true;
    if (!this.ws) this.connect();
  },

  stop() {
    this.wanted = false;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close();
    }
    root.dataset.live = 'closed';
  },

  connect() {
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${window.location.host}/api/ws`);
    this.ws = ws;
    root.dataset.live = 'connecting';
    ws.addEventListener('open', () => {
      if (this.ws !== ws) return;
      this.retry = 0;
      root.dataset.live = 'open';
      // Whatever happened while we were not listening: the view reloads what it shows.
      if (current && current.resync) current.resync();
    });
    ws.addEventListener('message', (ev) => {
      if (this.ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (current && current.message) current.message(msg);
    });
    ws.addEventListener('close', () => {
      if (this.ws !== ws) return;
      this.ws = null;
      root.dataset.live = 'closed';
      if (!this.wanted) return;
      // The server drops a reader that falls behind (a flood of output): come back and resync.
      const delay = Math.min(10000, 500 * 2 ** this.retry);
      this.retry += 1;
      this.timer = setTimeout(() => {
        if (this.wanted && !this.ws) this.connect();
      }, delay);
    });
  },
};

/** While the socket is down (a proxy that refuses WebSockets, a restart), the view reloads what
 * it shows every few seconds; once it is back, updates come from it again. */
const FALLBACK_EVERY_MS = 5000;
setInterval(() => {
  const down = !live.ws || live.ws.readyState !== WebSocket.OPEN;
  if (live.wanted && down && current && current.resync) current.resync();
}, FALLBACK_EVERY_MS);

// ---- views ------------------------------------------------------------------------------------

/** The view on screen: `{ destroy(), resync(), message(msg) }`, each optional. */
let current = null;

function projectsView() {
  const body = h('div', {}, h('p', { className: 'muted' }, 'Loading projects…'));
  root.replaceChildren(heading('Projects', 'projects-title'), card('Your projects', 'projects', body));
  let alive = true;
  const load = async () => {
    try {
      const projects = (await api('GET', '/api/projects')) || [];
      if (!alive) return;
      if (projects.length === 0) {
        body.replaceChildren(h('p', { className: 'muted', dataset: { testid: 'projects-empty' } }, 'You are not a member of any project yet.'));
        return;
      }
      const list = h('ul', { className: 'link-list', dataset: { testid: 'project-list' } });
      for (const p of [...projects].sort((a, b) => String(a.name).localeCompare(String(b.name)))) {
        list.append(
          h('li', {}, h('a', { href: `#/project/${p.id}`, dataset: { testid: 'project-link', projectId: String(p.id) } }, p.name)),
        );
      }
      body.replaceChildren(list);
    } catch (e) {
      if (alive) body.replaceChildren(failure('your projects', e));
    }
  };
  load();
  return {
    destroy() {
      alive = false;
    },
  };
}

/** A row of the task list for `task` (TaskWithTpl); `cells` are kept to update in place. */
function taskRow(p, task) {
  const status = cell('Status', badge(task.status));
  const dur = cell('Duration', duration(task));
  dur.dataset.testid = 'task-duration';
  let who = task.user_name || '';
  if (!who) who = task.schedule_id ? 'schedule' : task.integration_id ? 'integration' : '—';
  const tr = h(
    'tr',
    { dataset: { testid: 'task-row', taskId: String(task.id), status: task.status } },
    cell('Task', h('a', { href: `#/project/${p}/task/${task.id}`, dataset: { testid: 'task-link' } }, `#${task.id}`)),
    cell('Template', task.tpl_alias || `template ${task.template_id}`),
    status,
    cell('By', who),
    cell('Started', h('time', { dateTime: task.created || '' }, when(task.created))),
    dur,
  );
  return {
    tr,
    task,
    update(fields) {
      Object.assign(this.task, fields);
      tr.dataset.status = this.task.status;
      status.replaceChildren(badge(this.task.status));
      this.tick();
    },
    tick() {
      dur.textContent = duration(this.task);
    },
  };
}

function projectView(p) {
  let alive = true;
  const title = heading(`Project ${p}`, 'project-title');
  const crumb = projectCrumbs(p, null, () => alive, (name) => {
    title.textContent = name;
  });
  const templatesBody = h('div', {}, h('p', { className: 'muted' }, 'Loading templates…'));
  const tasksBody = h('div', {}, h('p', { className: 'muted' }, 'Loading tasks…'));
  const schedulesBody = h('div', {}, h('p', { className: 'muted' }, 'Loading schedules…'));
  const integrationsBody = h('div', {}, h('p', { className: 'muted' }, 'Loading integrations…'));
  root.replaceChildren(
    crumb,
    title,
    card('Templates', 'templates', templatesBody),
    card('Tasks', 'tasks', tasksBody),
    card('Schedules', 'schedules', schedulesBody),
    card('Integrations', 'integrations', integrationsBody),
  );
  const rows = new Map(); // task id → row
  const latest = new Map(); // task id → its last socket update
  const { wrap, tbody } = table('Tasks of this project, newest first', ['Task', 'Template', 'Status', 'By', 'Started', 'Duration'], 'task-list');
  const ticker = setInterval(() => {
    for (const r of rows.values()) if (r.task.start && !r.task.end) r.tick();
  }, 1000);

  const role = projectRole(p);

  async function loadTemplates() {
    try {
      const templates = (await api('GET', `/api/project/${p}/templates`)) || [];
      const { role: name, canRun } = await role;
      if (!alive) return;
      if (templates.length === 0) {
        templatesBody.replaceChildren(h('p', { className: 'muted' }, 'No templates yet.'));
        return;
      }
      const t = table('Templates', ['Name', 'App', 'Last task', h('span', { className: 'visually-hidden' }, 'Actions')], 'template-list');
      for (const tpl of templates) {
        const last = tpl.last_task;
        t.tbody.append(
          h(
            'tr',
            { dataset: { testid: 'template-row', templateId: String(tpl.id), name: tpl.name } },
            cell('Name', h('span', { className: 'strong' }, tpl.name), tpl.description ? h('span', { className: 'muted small block' }, tpl.description) : null),
            cell('App', tpl.app || '—'),
            cell('Last task', last ? h('span', {}, h('a', { href: `#/project/${p}/task/${last.id}` }, `#${last.id}`), ' ', badge(last.status)) : '—'),
            h(
              'td',
              { className: 'actions' },
              h(
                'button',
                {
                  type: 'button',
                  disabled: !canRun,
                  dataset: { testid: 'run-template', templateId: String(tpl.id) },
                  attrs: { 'aria-label': `Run ${tpl.name}`, 'aria-describedby': canRun ? null : 'run-denied' },
                  on: { click: (ev) => run(tpl, ev.currentTarget) },
                },
                'Run',
              ),
            ),
          ),
        );
      }
      const denied = canRun
        ? null
        : h('p', { id: 'run-denied', className: 'muted', dataset: { testid: 'run-denied' } }, `Your role in this project (${name || 'none'}) cannot run tasks.`);
      templatesBody.replaceChildren(...[denied, t.wrap].filter(Boolean));
    } catch (e) {
      if (alive) templatesBody.replaceChildren(failure('the templates', e));
    }
  }

  /** Run: straight away without a survey, else the run form. */
  async function run(tpl, button) {
    if (Array.isArray(tpl.survey_vars) && tpl.survey_vars.length > 0) {
      window.location.hash = `#/project/${p}/template/${tpl.id}/run`;
      return;
    }
    button.disabled = true;
    say(`Starting ${tpl.name}…`);
    try {
      const task = await api('POST', `/api/project/${p}/tasks`, { template_id: tpl.id });
      say(`Task #${task.id} of ${tpl.name} queued.`, 'ok');
      window.location.hash = `#/project/${p}/task/${task.id}`;
    } catch (e) {
      button.disabled = false;
      say(`Could not run ${tpl.name}: ${describe(e)}`, 'error');
    }
  }

  let loading = null;
  let again = false;
  /** Reloads the task list; calls made meanwhile fold into one more reload. */
  async function loadTasks() {
    if (loading) {
      again = true;
      return loading;
    }
    loading = (async () => {
      do {
        again = false;
        try {
          const tasks = (await api('GET', `/api/project/${p}/tasks/last?limit=${TASKS_SHOWN}`)) || [];
          if (!alive) return;
          rows.clear();
          const trs = tasks.map((t) => {
            const r = taskRow(p, freshest(t, latest.get(t.id)));
            rows.set(t.id, r);
            return r.tr;
          });
          tbody.replaceChildren(...trs);
          tasksBody.replaceChildren(
            tasks.length ? wrap : h('p', { className: 'muted', dataset: { testid: 'tasks-empty' } }, 'No tasks yet.'),
          );
        } catch (e) {
          if (alive) tasksBody.replaceChildren(failure('the tasks', e));
        }
      } while (again && alive);
    })();
    try {
      await loading;
    } finally {
      loading = null;
    }
    return undefined;
  }

  async function loadSchedules() {
    try {
      const schedules = (await api('GET', `/api/project/${p}/schedules`)) || [];
      if (!alive) return;
      if (schedules.length === 0) {
        schedulesBody.replaceChildren(h('p', { className: 'muted' }, 'No schedules.'));
        return;
      }
      const t = table('Schedules', ['Name', 'Template', 'When (cron)', 'Active'], 'schedule-list');
      for (const s of schedules) {
        t.tbody.append(
          h(
            'tr',
            { dataset: { testid: 'schedule-row', scheduleId: String(s.id) } },
            cell('Name', s.name || `schedule ${s.id}`),
            cell('Template', s.tpl_name || `template ${s.template_id}`),
            cell('When (cron)', h('code', {}, s.cron_format)),
            cell('Active', h('span', { className: s.active ? 'badge badge-live' : 'badge badge-expired' }, s.active ? 'yes' : 'no')),
          ),
        );
      }
      schedulesBody.replaceChildren(t.wrap);
    } catch (e) {
      if (alive) schedulesBody.replaceChildren(failure('the schedules', e));
    }
  }

  /** What the last delivery to an integration came to, as people debug webhooks with it. */
  function deliveryText(d) {
    if (!d) return 'none yet';
    const at = when(d.time);
    switch (d.outcome) {
      case 'launched':
        return h('span', {}, h('a', { href: `#/project/${p}/task/${d.task_id}` }, `task #${d.task_id}`), ` · ${at}`);
      case 'filtered':
        return `filtered by “${d.matcher}” · ${at}`;
      case 'bad_signature':
        return `bad signature from ${d.source} · ${at}`;
      default:
        return `error: ${d.error || d.outcome} · ${at}`;
    }
  }

  async function loadIntegrations() {
    try {
      const [integrations, templates] = await Promise.all([
        api('GET', `/api/project/${p}/integrations`),
        api('GET', `/api/project/${p}/templates`),
      ]);
      if (!alive) return;
      if (!integrations || integrations.length === 0) {
        integrationsBody.replaceChildren(h('p', { className: 'muted' }, 'No integrations.'));
        return;
      }
      const names = new Map((templates || []).map((t) => [t.id, t.name]));
      const lasts = await Promise.all(
        integrations.map((i) =>
          api('GET', `/api/project/${p}/integrations/${i.id}/deliveries`).then((d) => (d || [])[0], () => undefined),
        ),
      );
      if (!alive) return;
      const t = table('Integrations', ['Name', 'Template', 'Authentication', 'Last delivery'], 'integration-list');
      integrations.forEach((i, n) => {
        t.tbody.append(
          h(
            'tr',
            { dataset: { testid: 'integration-row', integrationId: String(i.id) } },
            cell('Name', i.name),
            cell('Template', names.get(i.template_id) || `template ${i.template_id}`),
            cell('Authentication', i.auth_method || 'none'),
            cell('Last delivery', deliveryText(lasts[n])),
          ),
        );
      });
      integrationsBody.replaceChildren(t.wrap);
    } catch (e) {
      if (alive) integrationsBody.replaceChildren(failure('the integrations', e));
    }
  }

  loadTemplates();
  loadTasks();
  loadSchedules();
  loadIntegrations();

  return {
    destroy() {
      alive = false;
      clearInterval(ticker);
    },
    resync() {
      loadTasks();
    },
    message(msg) {
      if (msg.type !== 'update' || msg.project_id !== p) return;
      latest.set(msg.task_id, { status: msg.status, start: msg.start, end: msg.end });
      const r = rows.get(msg.task_id);
      if (!r) {
        loadTasks(); // a task we do not list yet
        return;
      }
      r.update({ status: msg.status, start: msg.start, end: msg.end });
      if (FINISHED.has(msg.status)) loadTemplates();
    },
  };
}

/** The input for one survey variable (`type`: "" string, int, enum, secret). */
function surveyField(v, i) {
  const id = `survey-${i}`;
  const label = h('label', { htmlFor: id }, v.title || v.name, v.required ? h('span', { className: 'required', attrs: { 'aria-hidden': 'true' } }, ' *') : null);
  let input;
  if (v.type === 'enum') {
    input = h('select', { id, name: v.name, required: Boolean(v.required) });
    if (!v.required) input.append(h('option', { value: '' }, '—'));
    for (const opt of v.values || []) input.append(h('option', { value: String(opt.value) }, opt.name || String(opt.value)));
  } else {
    input = h('input', {
      id,
      name: v.name,
      type: v.type === 'int' ? 'number' : v.type === 'secret' ? 'password' : 'text',
      required: Boolean(v.required),
      autocomplete: 'off',
    });
    if (v.type === 'int') input.step = '1';
  }
  input.dataset.testid = 'survey-input';
  input.dataset.var = v.name;
  input.dataset.kind = v.type || 'string';
  const parts = [label, input];
  if (v.description) {
    const hint = h('p', { id: `${id}-hint`, className: 'hint' }, v.description);
    input.setAttribute('aria-describedby', hint.id);
    parts.push(hint);
  }
  return h('div', { className: 'field' }, parts);
}

function runView(p, t) {
  let alive = true;
  const title = heading('Run template', 'run-title');
  const nav = projectCrumbs(p, 'Run', () => alive);
  const body = h('div', {}, h('p', { className: 'muted' }, 'Loading the template…'));
  root.replaceChildren(nav, title, h('section', { className: 'card console-card' }, body));

  (async () => {
    let tpl;
    try {
      tpl = await api('GET', `/api/project/${p}/templates/${t}`);
    } catch (e) {
      if (alive) body.replaceChildren(failure('the template', e));
      return;
    }
    if (!alive) return;
    title.textContent = `Run ${tpl.name}`;
    const vars = Array.isArray(tpl.survey_vars) ? tpl.survey_vars : [];
    const error = h('p', { className: 'error', hidden: true, attrs: { role: 'alert' }, dataset: { testid: 'run-error' } });
    const message = h('input', { id: 'run-message', name: 'message', type: 'text', autocomplete: 'off', dataset: { testid: 'run-message' } });
    const submit = h('button', { type: 'submit', dataset: { testid: 'run-submit' } }, 'Run');
    const form = h(
      'form',
      { className: 'run-form', dataset: { testid: 'run-form' }, noValidate: true },
      vars.length ? h('p', { className: 'muted' }, 'Survey variables are passed to the task as extra variables.') : null,
      vars.map(surveyField),
      h('div', { className: 'field' }, h('label', { htmlFor: 'run-message' }, 'Message (optional)'), message),
      error,
      h('div', { className: 'form-actions' }, submit, h('a', { href: `#/project/${p}`, className: 'button-link' }, 'Cancel')),
    );
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const environment = {};
      const secret = {};
      for (const [i, v] of vars.entries()) {
        const input = form.querySelector(`#survey-${i}`);
        const raw = input.value;
        if (raw === '') {
          if (v.required) {
            error.textContent = `${v.title || v.name} is required.`;
            error.hidden = false;
            input.focus();
            return;
          }
          continue;
        }
        let value = raw;
        if (v.type === 'int') {
          value = Number(raw);
          if (!Number.isInteger(value)) {
            error.textContent = `${v.title || v.name} must be a whole number.`;
            error.hidden = false;
            input.focus();
            return;
          }
        }
        (v.type === 'secret' ? secret : environment)[v.name] = value;
      }
      error.hidden = true;
      submit.disabled = true;
      say(`Starting ${tpl.name}…`);
      const body = { template_id: tpl.id, environment: JSON.stringify(environment) };
      if (Object.keys(secret).length) body.secret = JSON.stringify(secret);
      if (message.value.trim()) body.message = message.value.trim();
      try {
        const task = await api('POST', `/api/project/${p}/tasks`, body);
        say(`Task #${task.id} of ${tpl.name} queued.`, 'ok');
        window.location.hash = `#/project/${p}/task/${task.id}`;
      } catch (e) {
        submit.disabled = false;
        error.textContent = `Could not run ${tpl.name}: ${describe(e)}`;
        error.hidden = false;
      }
    });
    body.replaceChildren(form);
    const first = form.querySelector('input, select');
    if (first) first.focus();
  })();
  return {
    destroy() {
      alive = false;
    },
  };
}

function taskView(p, t) {
  let alive = true;
  const title = heading(`Task #${t}`, 'task-title');
  const nav = projectCrumbs(p, `Task #${t}`, () => alive);
  const statusBox = h('span', { dataset: { testid: 'task-page-status' }, attrs: { role: 'status', 'aria-live': 'polite' } }, '…');
  const tplName = h('dd', {}, '…');
  const who = h('dd', {}, '…');
  const created = h('dd', {}, '…');
  const dur = h('dd', { dataset: { testid: 'task-page-duration' } }, '—');
  const stop = h('button', { type: 'button', className: 'danger', hidden: true, dataset: { testid: 'stop-task' } }, 'Stop');
  const raw = h('a', { href: `/api/project/${p}/tasks/${t}/raw_output`, target: '_blank', rel: 'noopener', dataset: { testid: 'raw-output' } }, 'Raw output');
  const follow = h('button', { type: 'button', className: 'small', hidden: true, dataset: { testid: 'follow-output' } }, 'Follow the end ↓');
  const box = h('div', {
    className: 'log',
    tabIndex: 0,
    dataset: { testid: 'task-output', lines: '0', follow: 'true' },
    attrs: { role: 'log', 'aria-label': `Output of task ${t}`, 'aria-live': 'off' },
  });
  root.replaceChildren(
    nav,
    h('div', { className: 'section-head' }, title, h('div', { className: 'task-actions' }, stop, raw)),
    h(
      'section',
      { className: 'card console-card', attrs: { 'aria-label': 'Task details' } },
      h('dl', { className: 'facts' },
        h('div', {}, h('dt', {}, 'Status'), h('dd', {}, statusBox)),
        h('div', {}, h('dt', {}, 'Template'), tplName),
        h('div', {}, h('dt', {}, 'By'), who),
        h('div', {}, h('dt', {}, 'Created'), created),
        h('div', {}, h('dt', {}, 'Duration'), dur)),
    ),
    h('section', { className: 'card console-card log-card', attrs: { 'aria-label': 'Output' } },
      h('div', { className: 'section-head' }, h('h3', {}, 'Output'), follow),
      box),
  );

  let task = null;
  let latest = null; // the last socket update
  let canStop = false;
  projectRole(p).then((r) => {
    canStop = r.canRun;
    if (alive && task) show({});
  });
  const view = new LogView(box, { onFollowChange: (on) => { follow.hidden = on; } });
  follow.addEventListener('click', () => {
    view.jumpToEnd();
    box.focus();
  });

  function show(fields) {
    if (!alive) return;
    task = { ...(task || {}), ...fields };
    statusBox.replaceChildren(badge(task.status));
    root.dataset.taskStatus = task.status;
    dur.textContent = duration(task);
    stop.hidden = !canStop || !ACTIVE.has(task.status);
    if (task.status === 'stopping') stop.disabled = true;
  }
  const ticker = setInterval(() => {
    if (task && task.start && !task.end) dur.textContent = duration(task);
  }, 1000);

  // Output: what is stored past the lines we hold, asked for whenever the socket says there is
  // more (coalesced: one request at a time, one more after it if lines came meanwhile).
  let syncing = null;
  let more = false;
  async function sync() {
    if (syncing) {
      more = true;
      return;
    }
    syncing = (async () => {
      do {
        more = false;
        for (;;) {
          let lines;
          try {
            lines = await api('GET', `/api/project/${p}/tasks/${t}/output?offset=${view.count}&limit=${OUTPUT_PAGE}`);
          } catch (e) {
            if (alive) say(`Could not load the output: ${describe(e)}`, 'error');
            return;
          }
          if (!alive || !Array.isArray(lines)) return;
          view.append(lines.map((l) => l.output));
          if (lines.length < OUTPUT_PAGE) break;
        }
      } while (more && alive);
      if (alive && task && FINISHED.has(task.status)) box.dataset.complete = 'true';
    })();
    try {
      await syncing;
    } finally {
      syncing = null;
    }
  }

  async function load() {
    try {
      const fetched = await api('GET', `/api/project/${p}/tasks/${t}`);
      show(freshest(fetched, latest));
    } catch (e) {
      if (alive) {
        statusBox.textContent = 'unknown';
        say(`Could not load task #${t}: ${describe(e)}`, 'error');
      }
      return;
    }
    created.textContent = when(task.created);
    sync();
    api('GET', `/api/project/${p}/templates/${task.template_id}`)
      .then((tpl) => {
        if (alive) tplName.replaceChildren(h('a', { href: `#/project/${p}` }, tpl.name));
      })
      .catch(() => {
        if (alive) tplName.textContent = `template ${task.template_id}`;
      });
    if (!task.user_id) {
      who.textContent = task.schedule_id ? 'schedule' : task.integration_id ? 'integration' : '—';
    } else {
      api('GET', `/api/project/${p}/users`)
        .then((users) => {
          const u = (users || []).find((x) => x.id === task.user_id);
          if (alive) who.textContent = u ? u.name || u.username : `user ${task.user_id}`;
        })
        .catch(() => {
          if (alive) who.textContent = `user ${task.user_id}`;
        });
    }
  }
  stop.addEventListener('click', async () => {
    stop.disabled = true;
    say(`Stopping task #${t}…`);
    try {
      await api('POST', `/api/project/${p}/tasks/${t}/stop`, { force: false });
      say(`Task #${t} is stopping.`, 'ok');
    } catch (e) {
      stop.disabled = false;
      say(`Could not stop task #${t}: ${describe(e)}`, 'error');
    }
  });

  load();

  return {
    destroy() {
      alive = false;
      clearInterval(ticker);
      view.destroy();
    },
    resync() {
      if (!task) return;
      api('GET', `/api/project/${p}/tasks/${t}`)
        .then((fresh) => {
          if (!alive) return;
          show(freshest(fresh, latest));
          sync();
        })
        .catch(() => sync());
    },
    message(msg) {
      if (msg.task_id !== t || msg.project_id !== p) return;
      if (msg.type === 'log') {
        sync();
      } else if (msg.type === 'update') {
        latest = { status: msg.status, start: msg.start, end: msg.end };
        show(latest);
        if (FINISHED.has(msg.status)) {
          say(`Task #${t} ended: ${msg.status}.`, msg.status === 'success' ? 'ok' : 'error');
          sync();
        }
      }
    },
  };
}

function notFound() {
  root.replaceChildren(heading('Not found', 'not-found'), h('p', {}, 'There is no such page. ', h('a', { href: '#/' }, 'Back to your projects')));
  return null;
}

// ---- routing ----------------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, () => projectsView(), 'home'],
  [/^#\/project\/(\d+)\/?$/, (m) => projectView(Number(m[1])), 'project'],
  [/^#\/project\/(\d+)\/template\/(\d+)\/run$/, (m) => runView(Number(m[1]), Number(m[2])), 'run'],
  [/^#\/project\/(\d+)\/task\/(\d+)$/, (m) => taskView(Number(m[1]), Number(m[2])), 'task'],
];

let signedIn = false;
let first = true;

function route() {
  if (current && current.destroy) current.destroy();
  current = null;
  if (!signedIn) {
    root.hidden = true;
    root.replaceChildren();
    return;
  }
  const hash = window.location.hash;
  let name = 'missing';
  document.title = 'Forge';
  delete root.dataset.taskStatus;
  for (const [re, make, n] of ROUTES) {
    const m = re.exec(hash);
    if (m) {
      name = n;
      current = make(m);
      break;
    }
  }
  if (name === 'missing') current = notFound();
  document.body.dataset.route = name;
  root.dataset.route = name;
  root.hidden = false;
  tokensView.hidden = name !== 'home';
  if (!first) {
    const h2 = root.querySelector('h2');
    if (h2) h2.focus();
  }
  first = false;
}

function session(user) {
  const now = Boolean(user);
  if (now === signedIn) {
    if (now) tokensView.hidden = document.body.dataset.route !== 'home';
    return;
  }
  signedIn = now;
  if (now) live.start();
  else live.stop();
  route();
}

window.addEventListener('hashchange', () => {
  if (signedIn) first = false;
  route();
});
document.addEventListener('forge:session', (ev) => session(ev.detail));
if (window.forge && window.forge.user) session(window.forge.user);
