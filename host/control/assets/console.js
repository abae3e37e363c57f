// plumber console: keeps the server-rendered pages live and performs the
// actions through the admin API. No framework, no inline code (the pages'
// content security policy allows only this file), nothing from elsewhere.
"use strict";

(() => {
  const BASE_MS = 2000; // a poll every 2 s while the server answers
  const MAX_MS = 30000; // backing off to this while it does not
  const HIDDEN_MS = 15000; // a tab in the background polls rarely
  const KEEP = 90; // points of a sparkline: 3 minutes at 2 s
  const TOKEN_KEY = "plumber-admin-token";

  const body = document.body;
  const live = document.getElementById("live");

  const text = (element, value) => {
    if (element && element.textContent !== String(value)) {
      element.textContent = String(value);
    }
  };
  const field = (root, name) => root.querySelector(`[data-field="${name}"]`);

  // The same readings as the server's pages (src/console/html.rs).
  const duration = (ms) => {
    const s = Math.floor(ms / 1000);
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    if (ms < 3600000) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (ms < 86400000) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  };
  const millis = (micros) => `${(micros / 1000).toFixed(1)} ms`;
  const utc = (ms) => `${new Date(ms).toISOString().slice(0, 19).replace("T", " ")} UTC`;
  const orDash = (value, format) => (value === null || value === undefined ? "–" : format(value));
  const rate = (value) => (value >= 100 ? Math.round(value).toString() : value.toFixed(1));
  const checkpoint = (p) =>
    p.last_checkpoint_epoch === null || p.last_checkpoint_epoch === undefined
      ? "none yet"
      : `#${p.last_checkpoint_epoch}, ${duration(p.last_checkpoint_age_ms)} ago`;

  const setState = (cell, state) => {
    if (!cell) return;
    const badge = cell.querySelector(".state");
    if (badge && badge.textContent === state) return;
    const span = document.createElement("span");
    span.className = `state state-${state}`;
    span.textContent = state;
    cell.replaceChildren(span);
  };

  // Polls `url` and hands each answer to `apply`; doubles the wait after
  // each failure (up to MAX_MS) and says so in the status line. Returns a
  // function that polls at once.
  const poll = (url, apply) => {
    let delay = BASE_MS;
    let timer = null;
    const tick = async () => {
      clearTimeout(timer);
      try {
        const started = performance.now();
        const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
        if (!response.ok) throw new Error(`the server answered ${response.status}`);
        const answer = await response.json();
        const fetched = performance.now();
        apply(answer);
        const applied = performance.now();
        delay = BASE_MS;
        // What an update costs: the answer's round trip, then the page's work.
        text(live, `Live: updated ${new Date().toLocaleTimeString()} ` +
          `(fetched in ${Math.round(fetched - started)} ms, shown in ${Math.round(applied - fetched)} ms).`);
      } catch (error) {
        delay = Math.min(delay * 2, MAX_MS);
        text(live, `Not updated (${error.message}); trying again in ${Math.round(delay / 1000)} s.`);
      }
      timer = setTimeout(tick, document.hidden ? Math.max(delay, HIDDEN_MS) : delay);
    };
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    tick();
    return tick;
  };

  // Per-second rates between two readings of counters.
  const rates = () => {
    let previous = null;
    return (at, counters) => {
      const result = {};
      if (previous && at > previous.at) {
        const seconds = (at - previous.at) / 1000;
        for (const [key, value] of Object.entries(counters)) {
          if (key in previous.counters) {
            result[key] = Math.max(0, value - previous.counters[key]) / seconds;
          }
        }
      }
      previous = { at, counters };
      return result;
    };
  };

  const SVG = "http://www.w3.org/2000/svg";
  const sparkline = (cell, points) => {
    if (!cell) return;
    let svg = cell.querySelector("svg");
    if (!svg) {
      svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", `0 0 ${KEEP} 20`);
      svg.setAttribute("preserveAspectRatio", "none");
      svg.appendChild(document.createElementNS(SVG, "polyline"));
      cell.replaceChildren(svg);
    }
    const top = Math.max(1, ...points);
    // Spread over the whole width: the line's age grows to KEEP points.
    const step = (KEEP - 1) / Math.max(1, points.length - 1);
    const coordinates = points.map((v, i) => `${(i * step).toFixed(1)},${(19 - (v / top) * 18).toFixed(1)}`);
    svg.firstChild.setAttribute("points", coordinates.join(" "));
  };

  const overview = () => {
    const tbody = document.querySelector("#pipelines tbody");
    const summary = document.getElementById("summary");
    const rateOf = rates();
    const series = new Map();
    const rowOf = (p) => {
      let row = tbody.querySelector(`tr[data-pipeline="${CSS.escape(p.name)}"]`);
      if (row) return row;
      // A pipeline started since the page was rendered.
      row = document.createElement("tr");
      row.dataset.pipeline = p.name;
      const head = document.createElement("th");
      head.scope = "row";
      const link = document.createElement("a");
      link.href = `/console/pipelines/${encodeURIComponent(p.name)}`;
      link.textContent = p.name;
      head.appendChild(link);
      row.appendChild(head);
      for (const name of ["tenant", "state", "uptime", "rate_in", "rate_out", "events_in", "events_out",
        "lag", "checkpoint", "checkpoint_duration", "errors", "spark"]) {
        const cell = document.createElement("td");
        cell.dataset.field = name;
        row.appendChild(cell);
      }
      tbody.appendChild(row);
      return row;
    };
    poll("/console/api/overview", (overview) => {
      const counters = {};
      for (const p of overview.pipelines) {
        counters[`${p.name}\u0000in`] = p.events_in;
        counters[`${p.name}\u0000out`] = p.events_out;
      }
      const perSecond = rateOf(overview.at_ms, counters);
      let running = 0;
      for (const p of overview.pipelines) {
        if (p.state === "running") running += 1;
        const row = rowOf(p);
        const rateIn = perSecond[`${p.name}\u0000in`];
        const rateOut = perSecond[`${p.name}\u0000out`];
        text(field(row, "tenant"), p.tenant);
        setState(field(row, "state"), p.state);
        text(field(row, "uptime"), orDash(p.uptime_ms, duration));
        text(field(row, "rate_in"), orDash(rateIn, rate));
        text(field(row, "rate_out"), orDash(rateOut, rate));
        text(field(row, "events_in"), p.events_in);
        text(field(row, "events_out"), p.events_out);
        text(field(row, "lag"), orDash(p.lag, String));
        text(field(row, "checkpoint"), checkpoint(p));
        text(field(row, "checkpoint_duration"), orDash(p.last_checkpoint_micros, millis));
        text(field(row, "errors"), p.errors);
        // The server's samples of the last minutes, on first sight.
        if (!series.has(p.name) && Array.isArray(p.rates_in) && p.rates_in.length > 0) {
          series.set(p.name, p.rates_in.slice(-KEEP));
          if (p.rates_in.length >= 2) sparkline(field(row, "spark"), series.get(p.name));
        }
        if (rateIn !== undefined) {
          const points = series.get(p.name) || [];
          points.push(rateIn);
          if (points.length > KEEP) points.shift();
          series.set(p.name, points);
          // A line needs two points.
          if (points.length >= 2) sparkline(field(row, "spark"), points);
        }
      }
      text(summary, `${overview.pipelines.length} pipelines, ${running} running.`);
    });
  };

  const cell = (row, value, numeric) => {
    const td = document.createElement("td");
    if (numeric) td.className = "num";
    td.textContent = value;
    row.appendChild(td);
    return td;
  };

  const pipeline = () => {
    const name = body.dataset.pipeline;
    const url = `/console/api/pipelines/${encodeURIComponent(name)}`;
    const facts = document.getElementById("facts");
    const rateOf = rates();
    let newestEpoch = null;
    const swapsSeen = new Map();
    let lettersSeen = null;
    let logSeen = null;
    const code = (row, value, wrap) => {
      const td = cell(row, "");
      if (wrap) td.className = "wrap";
      const element = document.createElement("code");
      element.textContent = value;
      td.appendChild(element);
      return td;
    };
    const refresh = poll(url, (detail) => {
      setState(field(facts, "state"), detail.state);
      text(field(facts, "uptime"), orDash(detail.uptime_ms, duration));
      text(field(facts, "events_in"), detail.events_in);
      text(field(facts, "events_out"), detail.events_out);
      text(field(facts, "lag"), orDash(detail.lag, String));
      text(field(facts, "checkpoint"), checkpoint(detail));
      text(field(facts, "errors"), detail.errors);

      const counters = {};
      for (const stage of detail.stages) counters[stage.name] = stage.events_in;
      const perSecond = rateOf(Date.now(), counters);
      for (const stage of detail.stages) {
        const node = document.querySelector(`li[data-stage="${CSS.escape(stage.name)}"]`);
        if (!node) continue;
        for (const key of ["events_in", "events_out", "buffered", "errors", "dead_lettered", "log_dropped"]) {
          text(field(node, key), stage[key]);
        }
        text(field(node, "rate"), orDash(perSecond[stage.name], rate));
      }

      const newest = detail.checkpoints.length ? detail.checkpoints[detail.checkpoints.length - 1].epoch : null;
      if (newest !== newestEpoch) {
        newestEpoch = newest;
        const tbody = document.querySelector("#checkpoints tbody");
        const rows = detail.checkpoints.slice().reverse().map((entry) => {
          const row = document.createElement("tr");
          row.dataset.epoch = entry.epoch;
          cell(row, entry.epoch, true);
          cell(row, utc(entry.at_ms));
          cell(row, millis(entry.pause_micros), true);
          cell(row, millis(entry.commit_micros), true);
          cell(row, entry.keys, true);
          return row;
        });
        if (rows.length) tbody.replaceChildren(...rows);
      }

      const lettersKey = JSON.stringify(detail.dead_letters.map((letter) => letter.at_ms));
      if (lettersKey !== lettersSeen && detail.dead_letters.length) {
        lettersSeen = lettersKey;
        document.querySelector("#dead-letters tbody").replaceChildren(
          ...detail.dead_letters.slice().reverse().map((letter) => {
            const row = document.createElement("tr");
            row.className = "letter";
            cell(row, utc(letter.at_ms));
            code(row, letter.key === null ? "–" : letter.key);
            code(row, letter.value, true);
            const headers = document.createElement("ul");
            headers.className = "headers";
            for (const [header, value] of letter.headers) {
              const item = document.createElement("li");
              const label = document.createElement("code");
              label.textContent = header;
              item.append(label, `: ${value}`);
              headers.appendChild(item);
            }
            cell(row, "").append(headers);
            row.lastChild.className = "wrap";
            return row;
          }));
      }
      const logKey = JSON.stringify(detail.log.map((line) => [line.at_ms, line.step]));
      if (logKey !== logSeen && detail.log.length) {
        logSeen = logKey;
        document.querySelector("#guest-log tbody").replaceChildren(
          ...detail.log.slice().reverse().map((line) => {
            const row = document.createElement("tr");
            row.className = "line";
            cell(row, utc(line.at_ms));
            cell(row, line.step);
            cell(row, line.source);
            code(row, line.text, true);
            return row;
          }));
      }

      for (const pipe of detail.pipes) {
        text(document.querySelector(`[data-pipe-version="${CSS.escape(pipe.name)}"]`), pipe.version);
        const key = JSON.stringify(pipe.swaps.map((swap) => swap.at_ms));
        if (swapsSeen.get(pipe.name) === key) continue;
        swapsSeen.set(pipe.name, key);
        const tbody = document.querySelector(`table.swaps[data-pipe="${CSS.escape(pipe.name)}"] tbody`);
        if (!tbody || !pipe.swaps.length) continue;
        tbody.replaceChildren(...pipe.swaps.slice().reverse().map((swap) => {
          const row = document.createElement("tr");
          cell(row, utc(swap.at_ms));
          cell(row, swap.from);
          cell(row, swap.to || "–");
          const outcome = cell(row, swap.refused ? `refused: ${swap.refused}`
            : swap.migration ? `switched in; ${swap.migration}` : "switched in");
          if (swap.refused) outcome.className = "refused";
          return row;
        }));
      }
    });
    actions(name, refresh);
  };

  // The buttons of the pipeline page: each sends the admin API's request
  // (a POST with a JSON or WebAssembly body, the token as a bearer token)
  // and shows the answer, or the refusal and its reason.
  const actions = (name, refresh) => {
    const result = document.getElementById("action-result");
    const tokenInput = document.getElementById("token");
    if (tokenInput) {
      tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
      tokenInput.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, tokenInput.value));
    }
    const base = `/pipelines/${encodeURIComponent(name)}`;
    const say = (message, kind) => {
      result.textContent = message;
      result.className = kind;
    };
    const send = async (label, path, contentType, payload, done) => {
      say(`${label}…`, "pending");
      const headers = { "Content-Type": contentType };
      if (tokenInput && tokenInput.value) headers.Authorization = `Bearer ${tokenInput.value}`;
      try {
        const response = await fetch(path, { method: "POST", headers, body: payload, cache: "no-store" });
        let answer = {};
        try {
          answer = await response.json();
        } catch (_) {
          // No JSON body: the status says it.
        }
        if (response.ok) {
          say(done(answer), "ok");
        } else {
          say(`${label} refused (${response.status}): ${answer.error || response.statusText}`, "refused");
        }
      } catch (error) {
        say(`${label} failed: ${error.message}`, "refused");
      }
      refresh();
    };
    const button = (id, handler) => {
      const element = document.getElementById(id);
      if (element) element.addEventListener("click", () => handler(element));
    };
    button("checkpoint", () =>
      send("Checkpoint", `${base}/checkpoint`, "application/json", "", (done) =>
        `Checkpoint ${done.epoch} committed.`));
    let confirmTimer = null;
    button("stop", (element) => {
      // A second press within 5 s confirms.
      if (!element.dataset.armed) {
        element.dataset.armed = "yes";
        element.textContent = "Press again to drain and stop";
        confirmTimer = setTimeout(() => {
          delete element.dataset.armed;
          element.textContent = "Drain and stop";
        }, 5000);
        return;
      }
      clearTimeout(confirmTimer);
      delete element.dataset.armed;
      element.textContent = "Drain and stop";
      send("Stop", `${base}/stop`, "application/json", "", () =>
        "Stopping: a final checkpoint, then the pipeline ends.");
    });
    button("upload", async () => {
      const pipe = document.getElementById("upload-pipe").value;
      const file = document.getElementById("upload-file").files[0];
      if (!file) {
        say("Choose a component (.wasm) first.", "refused");
        return;
      }
      const bytes = await file.arrayBuffer();
      send(`Module upload for ${pipe}`, `${base}/pipes/${encodeURIComponent(pipe)}/module`,
        "application/wasm", bytes, (done) =>
          `Module of ${done.pipe} replaced: ${done.previous_version} → ${done.version}.`);
    });
  };

  // Quotas as the server writes them: `used of max`, or `used (no quota)`.
  const quota = (td, used, max) => {
    if (!td) return;
    const wanted = max === null ? `${used} (no quota)` : `${used} of ${max}`;
    if (td.textContent === wanted) return;
    if (max !== null) {
      td.textContent = wanted;
      return;
    }
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.textContent = "(no quota)";
    td.replaceChildren(`${used} `, hint);
  };

  const tenants = () => {
    poll("/console/api/tenants", (list) => {
      for (const tenant of list) {
        const row = document.querySelector(`tr[data-tenant="${CSS.escape(tenant.tenant)}"]`);
        if (!row) continue;
        quota(field(row, "pipelines"), tenant.pipelines, tenant.max_pipelines);
        quota(field(row, "state_bytes"), tenant.state_bytes, tenant.max_state_bytes);
        text(field(row, "events_in"), tenant.events_in);
        text(field(row, "events_out"), tenant.events_out);
        text(field(row, "errors"), tenant.errors);
      }
    });
  };

  const page = body.dataset.page;
  if (page === "overview") overview();
  else if (page === "pipeline") pipeline();
  else if (page === "tenants") tenants();
  // What the server rendered is all there is: say so, not that JavaScript is off.
  else if (live) text(live, "As loaded; reload for newer figures.");
})();
