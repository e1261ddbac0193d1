// Forge web page: sign in (with a second factor where enabled), see who you are, manage your
// API tokens and two-factor login. The console (console.js)
// uses this file's session: `window.forge` (API helper, status line, the user) and a
// `forge:session` event on sign-in and sign-out.
// Plain DOM code: every value from the server is set with textContent, never as HTML.
'use strict';

(() => {
  const $ = (id) => {
    const el = document.getElementById(id);
    if (!el) throw new Error(`missing element #${id}`);
    return el;
  };

  const el = {
    loading: $('loading'),
    loginView: $('login-view'),
    loginForm: $('login-form'),
    loginAuth: $('login-auth'),
    loginPassword: $('login-password'),
    loginError: $('login-error'),
    loginSubmit: $('login-submit'),
    accountBar: $('account-bar'),
    signedIn: $('signed-in'),
    logout: $('logout'),
    tokensView: $('tokens-view'),
    createToken: $('create-token'),
    newToken: $('new-token'),
    newTokenValue: $('new-token-value'),
    newTokenHandle: $('new-token-handle'),
    copyToken: $('copy-token'),
    tokensBody: $('tokens-body'),
    tokensEmpty: $('tokens-empty'),
    status: $('status'),
    verifyView: $('verify-view'),
    verifyForm: $('verify-form'),
    verifyCode: $('verify-code'),
    verifyError: $('verify-error'),
    verifySubmit: $('verify-submit'),
    verifyCancel: $('verify-cancel'),
    totpView: $('totp-view'),
    totpEnable: $('totp-enable'),
    totpDisable: $('totp-disable'),
    totpState: $('totp-state'),
    totpSetup: $('totp-setup'),
    totpQr: $('totp-qr'),
    totpConfirmForm: $('totp-confirm-form'),
    totpConfirmCode: $('totp-confirm-code'),
    totpError: $('totp-error'),
    totpCancel: $('totp-cancel'),
    totpCodes: $('totp-codes'),
    totpCodesList: $('totp-codes-list'),
    totpDone: $('totp-done'),
  };

  /** An answer other than 2xx, carrying the server's `{"error": ...}` message. */
  class ApiError extends Error {
    constructor(status, message, retryAfter, data) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
      // `"totp"` on the 401 of a session that still awaits its second factor.
      this.verify = data && data.verify;
    }
  }

  const FALLBACK = {
    400: 'bad request',
    401: 'authentication required',
    403: 'permission denied',
    404: 'not found',
    408: 'request timed out',
    413: 'request too large',
    429: 'too many requests, try again later',
    500: 'internal server error',
    502: 'bad gateway',
    503: 'server busy, try again shortly',
    504: 'gateway timeout',
  };

  /** One API call; resolves to the parsed JSON body (or null), rejects with ApiError. */
  async function api(method, path, body) {
    const init = {
      method,
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { Accept: 'application/json', 'X-Requested-With': 'forge' },
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, `cannot reach the server (${e.message})`);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) {
      const message =
        data && typeof data.error === 'string' && data.error
          ? data.error
          : FALLBACK[res.status] || `HTTP ${res.status}`;
      throw new ApiError(res.status, message, res.headers.get('Retry-After'), data);
    }
    return data;
  }

  /** The message shown for a failed call, with the status and any Retry-After. */
  function describe(err) {
    if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
    let msg = err.message;
    if (err.status) msg += ` (HTTP ${err.status})`;
    const secs = Number(err.retryAfter);
    if (err.retryAfter && Number.isFinite(secs)) msg += `; retry in ${formatSeconds(secs)}`;
    return msg;
  }

  function formatSeconds(secs) {
    if (secs < 120) return `${secs} s`;
    return `${Math.ceil(secs / 60)} min`;
  }

  function setStatus(text, kind) {
    el.status.textContent = text || '';
    el.status.classList.toggle('error', kind === 'error');
    el.status.classList.toggle('ok', kind === 'ok');
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  /** `2025-05-21T02:35:12Z` → `2025-05-21 02:35:12 UTC`. */
  function formatTime(iso) {
    const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?Z$/.exec(String(iso));
    return m ? `${m[1]} ${m[2]} UTC` : String(iso);
  }

  // ---- views -------------------------------------------------------------------------------

  /** Tells the console (console.js) who is signed in now (null: nobody). */
  function announce(user) {
    window.forge.user = user;
    document.dispatchEvent(new CustomEvent('forge:session', { detail: user }));
  }

  function showLogin(message) {
    announce(null);
    show(el.loading, false);
    show(el.accountBar, false);
    show(el.tokensView, false);
    show(el.verifyView, false);
    resetTotp();
    show(el.totpView, false);
    show(el.newToken, false);
    el.newTokenValue.value = '';
    el.newTokenHandle.textContent = '';
    el.signedIn.textContent = '';
    el.tokensBody.replaceChildren();
    el.loginPassword.value = '';
    setLoginError(message);
    show(el.loginView, true);
    (el.loginAuth.value ? el.loginPassword : el.loginAuth).focus();
  }

  function setLoginError(message) {
    el.loginError.textContent = message || '';
    show(el.loginError, Boolean(message));
  }

  function showAccount(user) {
    show(el.loading, false);
    show(el.loginView, false);
    show(el.verifyView, false);
    setVerifyError('');
    setLoginError('');
    const name = user.name || user.username;
    el.signedIn.textContent = `Signed in as ${name} (${user.username})`;
    show(el.accountBar, true);
    show(el.tokensView, true);
    renderTotp(user);
    show(el.totpView, true);
    announce(user);
  }

  /** The second step of a login: the session can do nothing else until a code is verified. */
  function showVerify(message) {
    announce(null);
    show(el.loading, false);
    show(el.loginView, false);
    show(el.accountBar, false);
    show(el.tokensView, false);
    show(el.totpView, false);
    el.verifyCode.value = '';
    setVerifyError(message);
    show(el.verifyView, true);
    el.verifyCode.focus();
  }

  function setVerifyError(message) {
    el.verifyError.textContent = message || '';
    show(el.verifyError, Boolean(message));
  }

  /** Whether a failed call says the session awaits its second factor. */
  function needsCode(e) {
    return e instanceof ApiError && e.status === 401 && e.verify === 'totp';
  }

  /** A call made while signed in: a 401 means the session ended, back to the login form. */
  async function authed(method, path, body) {
    try {
      return await api(method, path, body);
    } catch (e) {
      if (needsCode(e)) {
        setStatus('');
        showVerify('');
      } else if (e instanceof ApiError && e.status === 401) {
        setStatus('');
        showLogin('Your session has ended. Please sign in again.');
      }
      throw e;
    }
  }

  // ---- tokens ------------------------------------------------------------------------------

  let highlight = null; // handle of the token created last, marked in the list

  function renderTokens(tokens) {
    const rows = [...tokens].reverse().map((t) => {
      const tr = document.createElement('tr');
      tr.dataset.testid = 'token-row';
      tr.dataset.tokenId = t.id;
      tr.dataset.expired = String(Boolean(t.expired));
      if (t.expired) tr.classList.add('expired');
      if (highlight && t.id === highlight) {
        tr.classList.add('is-new');
        tr.dataset.new = 'true';
      }

      const handle = document.createElement('td');
      const code = document.createElement('code');
      code.dataset.testid = 'token-handle';
      code.textContent = t.id;
      handle.append(code);

      const created = document.createElement('td');
      const time = document.createElement('time');
      time.dateTime = t.created;
      time.dataset.testid = 'token-created';
      const [day, ...clock] = formatTime(t.created).split(' ');
      const daySpan = document.createElement('span');
      daySpan.textContent = day;
      const clockSpan = document.createElement('span');
      clockSpan.textContent = clock.join(' ');
      time.append(daySpan, ' ', clockSpan);
      created.append(time);

      const expired = document.createElement('td');
      const badge = document.createElement('span');
      badge.dataset.testid = 'token-expired';
      badge.className = t.expired ? 'badge badge-expired' : 'badge badge-live';
      badge.textContent = t.expired ? 'yes' : 'no';
      expired.append(badge);

      const actions = document.createElement('td');
      actions.className = 'actions';
      if (!t.expired) {
        const btn = document.createElement('button');
        btn.type = 'button';
        btn.className = 'danger small';
        btn.dataset.testid = 'expire-token';
        btn.dataset.tokenId = t.id;
        btn.textContent = 'Expire';
        btn.setAttribute('aria-label', `Expire token ${t.id}`);
        btn.addEventListener('click', () => expireToken(t.id, btn));
        actions.append(btn);
      }

      tr.append(handle, created, expired, actions);
      return tr;
    });
    el.tokensBody.replaceChildren(...rows);
    show(el.tokensEmpty, tokens.length === 0);
  }

  async function loadTokens() {
    const tokens = await authed('GET', '/api/user/tokens');
    const list = Array.isArray(tokens) ? tokens : [];
    renderTokens(list);
    return list;
  }

  /** The handle the server lists for `token`: 16 hex digits of its SHA-256. */
  async function handleOf(token) {
    if (!(globalThis.crypto && crypto.subtle)) return null; // not a secure context
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(token));
    return [...new Uint8Array(digest).slice(0, 8)]
      .map((b) => b.toString(16).padStart(2, '0'))
      .join('');
  }

  async function createToken() {
    el.createToken.disabled = true;
    setStatus('Creating a token…');
    try {
      const before = new Set([...el.tokensBody.querySelectorAll('tr')].map((r) => r.dataset.tokenId));
      const created = await authed('POST', '/api/user/tokens', {});
      if (!created || typeof created.id !== 'string') throw new Error('unexpected answer from the server');
      let handle = null;
      try {
        handle = await handleOf(created.id);
      } catch {
        handle = null;
      }
      highlight = handle;
      el.newTokenValue.value = created.id;
      show(el.newToken, true);
      const list = await loadTokens();
      if (!handle) {
        // Without WebCrypto: the new handle is the one that was not listed before.
        const fresh = list.filter((t) => !before.has(t.id));
        if (fresh.length === 1) {
          highlight = fresh[0].id;
          renderTokens(list);
        }
      }
      el.newTokenHandle.textContent = highlight || 'the newest row';
      el.newTokenValue.focus();
      el.newTokenValue.select();
      setStatus('Token created. Copy it now: it will not be shown again.', 'ok');
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) {
        setStatus(`Could not create a token: ${describe(e)}`, 'error');
      }
    } finally {
      el.createToken.disabled = false;
    }
  }

  async function expireToken(id, btn) {
    btn.disabled = true;
    setStatus(`Expiring token ${id}…`);
    try {
      await authed('DELETE', `/api/user/tokens/${encodeURIComponent(id)}`);
      if (highlight === id) {
        show(el.newToken, false);
        el.newTokenValue.value = '';
      }
      await loadTokens();
      setStatus(`Token ${id} expired.`, 'ok');
    } catch (e) {
      btn.disabled = false;
      if (!(e instanceof ApiError && e.status === 401)) {
        setStatus(`Could not expire token ${id}: ${describe(e)}`, 'error');
      }
    }
  }

  async function copyToken() {
    const value = el.newTokenValue.value;
    if (!value) return;
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(value);
        copied = true;
      } catch {
        copied = false;
      }
    }
    if (!copied) {
      el.newTokenValue.focus();
      el.newTokenValue.select();
      try {
        copied = document.execCommand('copy');
      } catch {
        copied = false;
      }
    }
    setStatus(
      copied ? 'Token copied to the clipboard.' : 'Could not copy: the token is selected, press Ctrl+C.',
      copied ? 'ok' : 'error',
    );
  }

  // ---- session -----------------------------------------------------------------------------

  async function login(event) {
    event.preventDefault();
    const auth = el.loginAuth.value.trim();
    const password = el.loginPassword.value;
    if (!auth || !password) {
      setLoginError('Enter your username or email and your password.');
      return;
    }
    el.loginSubmit.disabled = true;
    setLoginError('');
    setStatus('Signing in…');
    try {
      await api('POST', '/api/auth/login', { auth, password });
      el.loginPassword.value = '';
      highlight = null;
      let user;
      try {
        user = await api('GET', '/api/user');
      } catch (e) {
        if (!needsCode(e)) throw e;
        setStatus('');
        showVerify('');
        return;
      }
      await enter(user);
    } catch (e) {
      setStatus('');
      el.loginPassword.value = '';
      let msg = `Sign-in failed: ${describe(e)}.`;
      if (e instanceof ApiError && e.status === 401) msg += ' Check your username and password.';
      setLoginError(msg);
      el.loginPassword.focus();
    } finally {
      el.loginSubmit.disabled = false;
    }
  }

  /** Shows the signed-in page for `user`, with their tokens. */
  async function enter(user) {
    showAccount(user);
    await loadTokens();
    setStatus('Signed in.', 'ok');
    el.createToken.focus();
  }

  /** A code as typed: 6 digits (spaces allowed) go to verify, anything else is a recovery code. */
  function secondFactor(code) {
    return /^[0-9 ]+$/.test(code)
      ? ['/api/auth/verify', { passcode: code }]
      : ['/api/auth/recovery', { recovery_code: code }];
  }

  async function verify(event) {
    event.preventDefault();
    const code = el.verifyCode.value.trim();
    if (!code) {
      setVerifyError('Enter the code from your authenticator app or a recovery code.');
      return;
    }
    el.verifySubmit.disabled = true;
    setVerifyError('');
    setStatus('Verifying…');
    try {
      const [path, body] = secondFactor(code);
      await api('POST', path, body);
      await enter(await authed('GET', '/api/user'));
    } catch (e) {
      setStatus('');
      el.verifyCode.value = '';
      if (e instanceof ApiError && e.status === 401 && !e.verify) {
        setVerifyError('That code is not right (or was already used). Try the next one.');
      } else {
        setVerifyError(`Verification failed: ${describe(e)}.`);
      }
      el.verifyCode.focus();
    } finally {
      el.verifySubmit.disabled = false;
    }
  }

  // ---- two-factor settings -----------------------------------------------------------------

  let totp = null; // { user, id } while enabled or being set up

  function resetTotp() {
    totp = null;
    show(el.totpSetup, false);
    show(el.totpCodes, false);
    el.totpCodesList.replaceChildren();
    el.totpQr.removeAttribute('src');
    el.totpConfirmCode.value = '';
    el.totpError.textContent = '';
    show(el.totpError, false);
  }

  /** The two-factor card for `user` (`user.totp` is present while it is on). */
  function renderTotp(user) {
    resetTotp();
    const on = Boolean(user.totp);
    if (on) totp = { user: user.id, id: user.totp.id };
    el.totpState.textContent = on
      ? 'On: signing in asks for a code from your authenticator app.'
      : 'Off: signing in needs only your password.';
    show(el.totpEnable, !on);
    show(el.totpDisable, on);
  }

  async function enableTotp() {
    const user = window.forge.user;
    el.totpEnable.disabled = true;
    try {
      const r = await authed('POST', `/api/users/${user.id}/2fas/totp`, {});
      totp = { user: user.id, id: r.id, codes: r.recovery_codes || [r.recovery_code] };
      el.totpQr.src = `/api/users/${user.id}/2fas/totp/${r.id}/qr`;
      show(el.totpEnable, false);
      show(el.totpSetup, true);
      el.totpState.textContent = 'Almost on: confirm with a code.';
      el.totpConfirmCode.focus();
    } catch (e) {
      setStatus(`Could not enable two-factor login: ${describe(e)}`, 'error');
    } finally {
      el.totpEnable.disabled = false;
    }
  }

  async function confirmTotp(event) {
    event.preventDefault();
    const passcode = el.totpConfirmCode.value.trim();
    try {
      // Not `authed`: a wrong code answers 401 without ending the session.
      await api('POST', '/api/auth/verify', { passcode });
      show(el.totpSetup, false);
      el.totpQr.removeAttribute('src');
      el.totpCodesList.replaceChildren(
        ...totp.codes.map((code) => {
          const li = document.createElement('li');
          li.textContent = code;
          return li;
        }),
      );
      show(el.totpCodes, true);
      show(el.totpDisable, true);
      el.totpState.textContent = 'On: signing in asks for a code from your authenticator app.';
      setStatus('Two-factor login is on.', 'ok');
      el.totpDone.focus();
    } catch (e) {
      el.totpError.textContent = `That code did not work: ${describe(e)}.`;
      show(el.totpError, true);
      el.totpConfirmCode.value = '';
      el.totpConfirmCode.focus();
    }
  }

  async function disableTotp(confirmFirst) {
    if (!totp) return;
    if (confirmFirst && !window.confirm('Turn two-factor login off?')) return;
    try {
      await authed('DELETE', `/api/users/${totp.user}/2fas/totp/${totp.id}`);
      renderTotp({ id: totp.user });
      setStatus('Two-factor login is off.', 'ok');
    } catch (e) {
      setStatus(`Could not disable two-factor login: ${describe(e)}`, 'error');
    }
  }

  function totpDone() {
    el.totpCodesList.replaceChildren();
    show(el.totpCodes, false);
    if (totp) delete totp.codes;
  }

  async function logout() {
    el.logout.disabled = true;
    try {
      await api('POST', '/api/auth/logout', {});
      highlight = null;
      showLogin('');
      setStatus('Signed out.', 'ok');
    } catch (e) {
      setStatus(`Could not sign out: ${describe(e)}`, 'error');
    } finally {
      el.logout.disabled = false;
    }
  }

  window.forge = { api: authed, describe, setStatus, user: null };

  async function start() {
    el.loginForm.addEventListener('submit', login);
    el.logout.addEventListener('click', logout);
    el.createToken.addEventListener('click', createToken);
    el.copyToken.addEventListener('click', copyToken);
    el.verifyForm.addEventListener('submit', verify);
    el.verifyCancel.addEventListener('click', logout);
    el.totpEnable.addEventListener('click', enableTotp);
    el.totpDisable.addEventListener('click', () => disableTotp(true));
    el.totpCancel.addEventListener('click', () => disableTotp(false));
    el.totpConfirmForm.addEventListener('submit', confirmTotp);
    el.totpDone.addEventListener('click', totpDone);
    let user;
    try {
      user = await api('GET', '/api/user');
    } catch (e) {
      if (needsCode(e)) {
        showVerify('');
        return;
      }
      showLogin('');
      if (!(e instanceof ApiError && e.status === 401)) {
        setStatus(`Could not load your account: ${describe(e)}`, 'error');
      }
      return;
    }
    showAccount(user);
    try {
      await loadTokens();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) {
        setStatus(`Could not list your tokens: ${describe(e)}`, 'error');
      }
    }
  }

  start();
})();
