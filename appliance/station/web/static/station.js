// neopain station: live updates over server-sent events, ages ticking, stale beds turned stale in place.
// The station renders every tile (the same template as the first paint); this script only swaps them in,
// keeps each score's age current and applies the station's stale rule as a score ages between updates.
(function () {
  "use strict";
  const body = document.body;
  const staleAfter = parseFloat(body.dataset.staleAfter || "30");
  const page = body.dataset.page;
  const ownBed = body.dataset.bed || null;
  const tiles = new Map();  // key -> {el, ageBase, t0}
  const lastCreated = new Map();
  // Read by tests and by appliance/devtools/station_bench.py: events seen and score-to-page latencies (ms).
  const stats = window.neopainStation = {events: 0, scores: 0, latencies: [], connected: false};

  function formatAge(s) {
    s = Math.floor(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
  }

  function register(el) {
    const age = parseFloat(el.dataset.age);
    tiles.set(el.dataset.bed, {el: el, ageBase: age, t0: performance.now()});
  }
  document.querySelectorAll(".tile[data-bed]").forEach(register);

  function field(el, name) { return el.querySelector('[data-f="' + name + '"]'); }

  function markStale(el) {
    el.dataset.stale = "true";
    el.className = el.className.replace(/\bband-\S+/g, "band-stale");
    field(el, "nips").textContent = "STALE";
    field(el, "trend").textContent = "";
    field(el, "band").textContent = "stale: no current score";
    field(el, "intensity").textContent = "";
    const mods = el.querySelector(".mods");
    if (mods) { mods.classList.add("old"); mods.querySelector("b").textContent = "inputs of last score:"; }
  }

  function tick() {
    const now = performance.now();
    tiles.forEach(function (t) {
      if (isNaN(t.ageBase)) return;
      const age = t.ageBase + (now - t.t0) / 1000;
      if (age > staleAfter && t.el.dataset.stale !== "true") markStale(t.el);
      field(t.el, "age").textContent = t.el.dataset.stale === "true" ? "last score " + formatAge(age) + " ago"
                                                                     : "scored " + formatAge(age) + " ago";
    });
  }
  setInterval(tick, 1000);

  function upsert(key, item) {
    const old = tiles.has(key) ? tiles.get(key).el : null;
    const holder = document.createElement("div");
    holder.innerHTML = item.html;
    const el = holder.firstElementChild;
    if (old) {
      if (old.classList.contains("big")) el.classList.add("big");
      old.replaceWith(el);
    } else {
      if (page !== "board") return;
      document.getElementById("beds").appendChild(el);
      const none = document.getElementById("no-beds");
      if (none) none.remove();
      document.getElementById("bed-count").textContent = tiles.size + 1 + " beds";
    }
    register(el);
  }

  function setBroker(ev) {
    if (ev.broker_up === undefined) return;
    const banner = document.getElementById("link-down");
    banner.hidden = ev.broker_up;
    if (!ev.broker_up) banner.textContent = "NOT CONNECTED to the ward broker" +
      (ev.broker_error ? ": " + ev.broker_error : "") + ". Scores turn stale as they age.";
  }

  // The bed page's chart: redrawn by the station, fetched at most every data-refresh seconds.
  let chartDue = null, chartAt = 0;
  function refreshChart() {
    if (page !== "bed" || chartDue) return;
    const wait = Math.max(0, chartAt + parseFloat(body.dataset.refresh) * 1000 - Date.now());
    chartDue = setTimeout(function () {
      chartDue = null;
      chartAt = Date.now();
      fetch(body.dataset.chartUrl, {credentials: "same-origin"}).then(function (r) {
        if (r.ok) return r.text();
        throw new Error(r.status);
      }).then(function (svg) { document.getElementById("chart").innerHTML = svg; }).catch(function () {});
    }, wait);
  }

  // The rating form: the total and its band as the items are chosen.
  const form = document.getElementById("rate-form");
  if (form) {
    const bands = JSON.parse(form.dataset.bands);
    const update = function () {
      let total = 0, chosen = 0;
      form.querySelectorAll("fieldset.item").forEach(function (fs) {
        const c = fs.querySelector("input:checked");
        if (c) { total += parseInt(c.value, 10); chosen += 1; }
      });
      const all = chosen === form.querySelectorAll("fieldset.item").length;
      document.getElementById("rate-total").textContent = all ? String(total) : "choose every item";
      const band = bands.find(function (b) { return total <= b[0]; });
      document.getElementById("rate-band").textContent = all && band ? "(NIPS " + band[1] + ": " + band[2] + ")" : "";
      document.getElementById("rate-send").textContent = all ? "Send rating NIPS " + total + " to the device"
                                                             : "Send rating to the device";
    };
    form.addEventListener("change", update);
    update();
  }

  if (page !== "board" && page !== "bed") return;  // the login page has nothing live
  const source = new EventSource("/events" + (ownBed ? "?bed=" + encodeURIComponent(ownBed) : ""));
  source.onopen = function () { stats.connected = true; document.getElementById("page-down").hidden = true; };
  source.onerror = function () { stats.connected = false; document.getElementById("page-down").hidden = false; };
  source.onmessage = function (m) {
    const received = Date.now();
    const ev = JSON.parse(m.data);
    stats.events += 1;
    if (ev.type === "resync") { location.reload(); return; }
    setBroker(ev);
    if (ev.type === "rating") { refreshChart(); return; }
    if (ev.type !== "beds" && ev.type !== "hello") return;
    Object.keys(ev.beds).forEach(function (key) {
      const item = ev.beds[key];
      if (!item) return;
      upsert(key, item);
      const created = item.view.created_ms;
      if (ev.type === "beds" && created && lastCreated.get(key) !== created) {
        stats.scores += 1;
        if (stats.latencies.length < 500000) stats.latencies.push(received - created);
      }
      lastCreated.set(key, created);
      if (ev.type === "beds") refreshChart();
    });
  };

})();
