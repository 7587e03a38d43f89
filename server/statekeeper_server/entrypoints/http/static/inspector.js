// The statekeeper inspector's only script: the live event feed, self-refreshing panels, and
// confirmations. Pages work without it, except the live feed. Every value from the server is
// put into the page with textContent, never as HTML.
"use strict";

(function () {
  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function eventRow(tbody, e) {
    const row = tbody.insertRow(0);
    row.className = "fresh";
    cell(row, e.revision + "." + e.index, "num");
    cell(row, e.time);
    const kind = cell(row, "");
    const span = document.createElement("span");
    span.className = "kind " + e.kind;
    span.textContent = e.kind;
    kind.appendChild(span);
    const node = cell(row, "");
    if (e.node) {
      const a = document.createElement("a");
      a.href = "/node?" + e.node_query;
      a.textContent = e.node;
      node.appendChild(a);
    } else if (e.type) {
      node.textContent = e.type;
    }
    let change = e.from ? e.from + " → " : "";
    change += e.to || "";
    if (e.transition) change += " via " + e.transition;
    cell(row, change);
    cell(row, e.count ? String(e.count) : "", "num");
    cell(row, e.task);
    cell(row, e.detail);
  }

  const MAX_ROWS = 1000;

  function liveFeed(table) {
    const tbody = table.tBodies[0];
    const status = document.getElementById("feed-status");
    const toggle = document.getElementById("feed-toggle");
    let next = parseInt(table.dataset.from, 10) || 0; // first revision still to show
    let lastShown = [0, -1]; // (revision, index) of the newest event shown
    let source = null;
    let paused = false;

    function say(text) {
      status.textContent = text;
    }

    function open() {
      const url = table.dataset.stream + (table.dataset.stream.includes("?") ? "&" : "?") + "from=" + next;
      source = new EventSource(url);
      source.addEventListener("open", () => say("live, from revision " + next));
      source.addEventListener("events", (m) => {
        const data = JSON.parse(m.data);
        for (const e of data.events) {
          if (e.revision < lastShown[0] || (e.revision === lastShown[0] && e.index <= lastShown[1])) continue;
          eventRow(tbody, e);
          lastShown = [e.revision, e.index];
        }
        while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
        next = data.progress + 1;
        say("live, at revision " + data.progress);
      });
      source.addEventListener("progress", (m) => {
        next = JSON.parse(m.data) + 1;
        say("live, at revision " + (next - 1));
      });
      source.addEventListener("failure", (m) => {
        const f = JSON.parse(m.data);
        source.close();
        say("stopped: " + f.code + " " + f.reason + " " + f.message);
        toggle.textContent = "Retry";
        paused = true;
      });
      source.addEventListener("error", () => {
        if (source.readyState === EventSource.CLOSED) say("disconnected");
        else say("reconnecting…");
      });
    }

    toggle.addEventListener("click", () => {
      if (paused) {
        paused = false;
        toggle.textContent = "Pause";
        open();
      } else {
        paused = true;
        if (source) source.close();
        toggle.textContent = "Resume";
        say("paused at revision " + (next - 1) + ": resuming shows everything since");
      }
    });
    open();
  }

  function refresher(box) {
    const seconds = parseInt(box.dataset.refreshSeconds, 10) || 5;
    setInterval(async () => {
      try {
        const response = await fetch(box.dataset.refresh, { credentials: "same-origin" });
        if (response.ok) box.innerHTML = await response.text(); // our own escaped HTML fragment
      } catch (e) {
        /* the next tick tries again */
      }
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const feed = document.getElementById("feed");
    if (feed) liveFeed(feed);
    document.querySelectorAll("[data-refresh]").forEach(refresher);
    document.querySelectorAll("form[data-confirm]").forEach((form) => {
      form.addEventListener("submit", (ev) => {
        if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
      });
    });
  });
})();
