// cued's own script: the login form and every action as a call of the API (JSON, with
// the CSRF token of the session cookie), and live pages: on each message of the API's
// event stream, the page's live regions are fetched again with htmx.
(() => {
  "use strict";
  const csrf = () => decodeURIComponent((document.cookie.match(/(?:^|; )cued_csrf=([^;]*)/) || [])[1] || "");

  document.addEventListener("htmx:configRequest", (e) => {
    const token = csrf();
    if (token) e.detail.headers["X-CSRF-Token"] = token;
  });

  function flash(text, kind) {
    const el = document.getElementById("flash");
    el.textContent = text;
    el.dataset.kind = kind;
    clearTimeout(flash.timer);
    if (kind === "ok") flash.timer = setTimeout(() => { el.textContent = ""; }, 5000);
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((data.error && data.error.message) || `${response.status} ${response.statusText}`);
    return data;
  }

  // a form's fields as JSON: "inputs.day" nests, data-type="json" parses (else the text)
  function body(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.type === "submit") continue;
      let value = el.type === "checkbox" ? el.checked : el.value;
      if (value === "" && "omitEmpty" in el.dataset) continue;
      if (el.dataset.type === "json") { try { value = JSON.parse(value); } catch { /* the text */ } }
      const path = el.name.split(".");
      let into = out;
      for (const part of path.slice(0, -1)) into = into[part] ??= {};
      into[path[path.length - 1]] = value;
    }
    return out;
  }

  document.addEventListener("submit", async (e) => {
    const form = e.target;
    const action = (e.submitter && e.submitter.dataset.api) || form.dataset.api;
    if (!action) return;
    e.preventDefault();
    if (form.dataset.confirm && !confirm(form.dataset.confirm)) return;
    const [method, url] = action.split(" ");
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const data = await api(method, url, body(form));
      if (form.dataset.then) {
        location.assign(form.dataset.then.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(data[k])));
        return;
      }
      flash(form.dataset.done || "Done", "ok");
      refresh();
    } catch (err) {
      flash(err.message, "error");
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  });

  document.addEventListener("change", (e) => {
    const form = e.target.form;
    if (form && "autosubmit" in form.dataset) form.requestSubmit();
  });

  // live regions: [data-live="run task ..."] hx-get=... hx-trigger="refresh"; each is
  // fetched again at most once per data-throttle ms, whatever the messages carry
  const pending = new Map();
  function refresh(type) {
    for (const el of document.querySelectorAll("[data-live]")) {
      if (type && !el.dataset.live.split(" ").includes(type)) continue;
      if (pending.has(el.id)) continue;
      pending.set(el.id, setTimeout(() => {
        pending.delete(el.id);
        const now = document.getElementById(el.id);
        if (now) htmx.trigger(now, "refresh");
      }, Number(el.dataset.throttle || 250)));
    }
  }

  // a run's live log ([data-logs]): the lines after data-after, appended as text; one
  // fetch at a time, and one more if lines came meanwhile
  let logsBusy = false, logsAgain = false;
  async function moreLogs() {
    const el = document.querySelector("[data-logs]");
    if (!el) return;
    if (logsBusy) { logsAgain = true; return; }
    logsBusy = true;
    try {
      do {
        logsAgain = false;
        const r = await fetch(`${el.dataset.logs}?after=${el.dataset.after}`, { headers: { Accept: "application/json" } });
        if (!r.ok) break;
        const page = await r.json();
        const pre = document.getElementById("log-lines");
        for (const l of page.lines) {
          const span = document.createElement("span");
          span.className = "log-line";
          span.dataset.seq = l.seq;
          span.dataset.stream = l.stream;
          span.textContent = `${l.key}#${l.attempt} ${l.stream}: ${l.line}\n`;
          pre.appendChild(span);
        }
        if (page.lines.length) document.getElementById("logs-empty").hidden = true;
        el.dataset.after = page.after;
        if (page.lines.length) logsAgain = true; // a full page: there may be more
      } while (logsAgain);
    } finally { logsBusy = false; }
  }

  // The stream ends with "reset" when this page fell behind or came back after a break
  // (the browser reconnects with Last-Event-ID): fetch everything again, then listen on a
  // new stream. One the server refuses (401, 404) is not retried by the browser: poll then.
  let poll = null;
  function listen(delay) {
    const conn = document.getElementById("conn");
    setTimeout(() => {
      const stream = new EventSource("/api/v1/stream");
      for (const type of ["run", "task", "event", "approval"]) stream.addEventListener(type, () => refresh(type));
      stream.addEventListener("decision", () => refresh("approval"));
      stream.addEventListener("log", (e) => {
        const el = document.querySelector("[data-logs]");
        if (el && JSON.parse(e.data).run_id === el.dataset.run) moreLogs();
      });
      stream.addEventListener("reset", () => { stream.close(); refresh(); moreLogs(); listen(1000); });
      // what changed between rendering the page and subscribing is fetched once more
      stream.onopen = () => { conn.dataset.state = "live"; refresh(); moreLogs(); };
      stream.onerror = () => {
        conn.dataset.state = "off";
        refresh(); // updates may have been missed while it was down
        if (stream.readyState === EventSource.CLOSED && !poll) {
          conn.dataset.state = "polling";
          poll = setInterval(() => { refresh(); moreLogs(); }, 3000);
        }
      };
      window.addEventListener("pagehide", () => stream.close());
    }, delay);
  }

  window.cued = { api, refresh };
  const live = () => { if (document.querySelector("[data-live]") && window.EventSource) listen(0); };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", live);
  else live();
})();
