// EventStream stream viewer: a protocol v1 client (docs/protocol.md) with no dependencies.
//
// It keeps, for its one subscription, the last offset seen per partition (and the live start
// the server reports in `subscribed`), and resubscribes with `since` after any disconnect, so
// nothing is lost or repeated. State the tests read is mirrored on <body data-*>.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_ROWS = 50;
  const HISTORY = 60; // seconds shown by the sparklines

  const params = new URLSearchParams(location.search);
  const s = {
    info: null,
    stream: null,
    wantedStream: params.get("stream"),
    epoch: null,
    channel: params.get("channel") || "*",
    seen: {}, // partition -> last offset seen (or live start - 1) for the current subscription
    ws: null,
    delay: 250,
    timer: null,
    subscribing: null,
    received: 0, holes: 0, dups: 0, gaps: 0, resumes: 0, resets: 0, connects: 0, disconnects: 0,
    rows: [],
    dirty: true,
    paused: false,
    channels: new Map(),
    channelsDirty: false,
    secCount: 0,
    secLat: [],
    rateHist: [],
    latHist: [],
    prefilledTime: null,
  };

  // ---- connection -------------------------------------------------------------------------

  function setState(state, text) {
    document.body.dataset.state = state;
    $("state").dataset.state = state;
    $("state-text").textContent = text;
  }

  function notice(text) {
    const n = $("notice");
    n.textContent = text;
    n.hidden = !text;
  }

  function retry(why) {
    if (s.ws) return;
    clearTimeout(s.timer);
    const wait = Math.round(s.delay * (0.8 + Math.random() * 0.4));
    s.delay = Math.min(s.delay * 2, 5000);
    setState("disconnected", `Disconnected (${why}); reconnecting in ${(wait / 1000).toFixed(1)} s…`);
    s.timer = setTimeout(connect, wait);
  }

  async function connect() {
    clearTimeout(s.timer);
    if (s.ws) return;
    setState("connecting", "Connecting…");
    let info;
    try {
      const r = await fetch("/streams", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      info = await r.json();
    } catch (e) {
      retry("server unreachable");
      return;
    }
    if (s.ws) return;
    applyInfo(info);
    if (!s.stream) {
      setState("disconnected", "The server has no streams");
      return;
    }
    if (!s.stream.websocket) {
      setState("disconnected", `Stream ${s.stream.name} has WebSocket fan-out disabled`);
      return;
    }
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + s.stream.paths.ws, "eventstream.v1.json");
    s.ws = ws;
    ws.onopen = () => {
      if (s.ws !== ws) return;
      s.delay = 250;
      s.connects++;
      setState("connected", `Connected to ${s.stream.name}`);
      subscribe();
    };
    ws.onmessage = (m) => {
      if (s.ws !== ws) return;
      let f;
      try {
        f = JSON.parse(m.data);
      } catch (e) {
        return;
      }
      onFrame(f);
    };
    ws.onclose = (ev) => {
      if (s.ws !== ws) return;
      s.ws = null;
      s.subscribing = null;
      s.disconnects++;
      counters();
      retry(ev.code === 1001 ? "server shutting down" : ev.code ? `code ${ev.code}` : "connection lost");
    };
  }

  function applyInfo(info) {
    const before = s.epoch;
    s.info = info;
    s.epoch = info.broker.epoch;
    if (before && before !== s.epoch && Object.keys(s.seen).length) {
      // A new embedded broker starts empty: offsets from the old one would point at nothing.
      s.seen = {};
      s.resets++;
      notice("The server restarted with a new, empty embedded broker: following live from its start.");
    }
    const select = $("stream");
    const names = info.streams.map((x) => x.name);
    if ([...select.options].map((o) => o.value).join() !== names.join()) {
      select.replaceChildren(...names.map((n) => new Option(n, n)));
    }
    select.disabled = names.length < 2;
    const wanted = s.stream ? s.stream.name : s.wantedStream;
    const fresh = !s.stream || s.stream.name !== wanted;
    s.stream = info.streams.find((x) => x.name === wanted) || info.streams[0] || null;
    if (!s.stream) return;
    select.value = s.stream.name;
    $("produce-path").textContent = s.stream.paths.produce;
    $("health-link").href = s.stream.paths.health;
    $("bootstrap").textContent = info.broker.bootstrap + (info.broker.embedded ? " (embedded)" : "");
    $("send").disabled = !s.stream.ingest;
    if (fresh || !$("event").value) fillExample();
    document.body.dataset.stream = s.stream.name;
  }

  function subscribe() {
    if (!s.ws || s.ws.readyState !== WebSocket.OPEN) return;
    const msg = { type: "subscribe", channel: s.channel };
    const resuming = Object.keys(s.seen).length > 0;
    if (resuming) msg.since = { ...s.seen };
    s.subscribing = { channel: s.channel, resuming };
    s.ws.send(JSON.stringify(msg));
    document.body.dataset.channel = s.channel;
  }

  function onFrame(f) {
    switch (f.type) {
      case "event":
        if (f.channel === s.channel) onEvent(f);
        break;
      case "subscribed":
        if (f.channel !== s.channel) break;
        for (const [p, next] of Object.entries(f.positions || {})) {
          const last = next - 1;
          const prev = s.seen[p];
          if (prev === undefined) {
            // "since" cannot say "before offset 0": an empty partition starts live.
            if (last >= 0) s.seen[p] = last;
          } else if (last > prev) {
            if (s.channel === "*") s.holes += last - prev;
            s.seen[p] = last;
          }
        }
        if (s.subscribing && s.subscribing.resuming) s.resumes++;
        s.subscribing = null;
        counters();
        break;
      case "gap":
        if (f.channel !== s.channel) break;
        s.gaps++;
        for (const [p, to] of Object.entries(f.to || {})) {
          s.seen[p] = Math.max(s.seen[p] ?? -1, to - 1);
        }
        notice(`Missed events (${f.reason}): from ${JSON.stringify(f.from)} to ${JSON.stringify(f.to)}.`);
        counters();
        break;
      case "error":
        if (f.code === "invalid_since" && f.channel === s.channel) {
          // The positions are past the end of the topic: the broker was reset.
          s.seen = {};
          s.resets++;
          notice("The saved positions are past the end of the stream (the broker was reset): following live.");
          subscribe();
        } else if (f.code !== "going_away" && f.code !== "already_subscribed") {
          notice(`${f.code}: ${f.message}`);
        }
        break;
      default:
        break;
    }
  }

  function pointer(value, ptr) {
    for (const raw of ptr.split("/").slice(1)) {
      if (value === null || typeof value !== "object") return undefined;
      value = value[raw.replace(/~1/g, "/").replace(/~0/g, "~")];
    }
    return value;
  }

  function channelOf(f) {
    const src = s.stream && s.stream.channel;
    if (!src) return undefined;
    if (src.source === "key") return f.keyEncoding ? undefined : f.key;
    if (src.source === "field") {
      const v = pointer(f.data, src.pointer);
      return ["string", "number", "boolean"].includes(typeof v) ? String(v) : undefined;
    }
    return undefined; // header channels are not in JSON frames
  }

  function onEvent(f) {
    const prev = s.seen[f.partition];
    if (prev !== undefined) {
      if (f.offset <= prev) {
        s.dups++;
        return;
      }
      if (s.channel === "*" && f.offset > prev + 1) s.holes += f.offset - prev - 1;
    }
    s.seen[f.partition] = f.offset;
    s.received++;
    s.secCount++;
    const now = Date.now();
    const live = !s.subscribing; // replayed events arrive before "subscribed": old by design
    const latency = typeof f.timestamp === "number" && f.timestamp > 0 ? Math.max(0, now - f.timestamp) : null;
    if (live && latency !== null) s.secLat.push(latency);
    const ch = channelOf(f);
    if (ch !== undefined && ch.length <= 256) {
      if (!s.channels.has(ch)) s.channelsDirty = true;
      s.channels.set(ch, now);
      if (s.channels.size > 200) s.channels.delete(s.channels.keys().next().value);
    }
    s.rows.unshift({ now, f, latency, live });
    if (s.rows.length > MAX_ROWS) s.rows.length = MAX_ROWS;
    s.dirty = true;
  }

  // ---- rendering --------------------------------------------------------------------------

  function counters() {
    const b = document.body.dataset;
    b.received = s.received;
    b.holes = s.holes;
    b.dups = s.dups;
    b.gaps = s.gaps;
    b.resumes = s.resumes;
    b.resets = s.resets;
    b.connects = s.connects;
    b.disconnects = s.disconnects;
    b.channel = s.channel;
    b.subscribing = s.subscribing ? "1" : "0";
    $("received").textContent = s.received.toLocaleString();
    $("resumes").textContent = s.resumes;
    $("gaps").textContent = s.gaps;
    const pos = JSON.stringify(s.seen);
    $("positions").dataset.positions = pos;
    $("positions").textContent = Object.keys(s.seen).length
      ? Object.entries(s.seen).map(([p, o]) => `${p}:${o}`).join(" ")
      : "–";
  }

  function time(ms) {
    const d = new Date(ms);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function render() {
    counters();
    if (s.channelsDirty) {
      s.channelsDirty = false;
      const names = [...s.channels.keys()].sort().slice(0, 100);
      $("channels").replaceChildren(...["*", ...names].map((n) => new Option(n === "*" ? "* (every event)" : n, n)));
    }
    if (!s.dirty || s.paused) return;
    s.dirty = false;
    const frag = document.createDocumentFragment();
    for (const { now, f, latency, live } of s.rows) {
      const tr = document.createElement("tr");
      let data = f.data;
      if (typeof data !== "string") data = JSON.stringify(data);
      if (f.encoding) data = `(${f.encoding}) ${data}`;
      const shown = data.length > 400 ? `${data.slice(0, 400)}…` : data;
      const dataCell = cell(shown);
      dataCell.title = data.slice(0, 4000);
      tr.append(
        cell(time(now)),
        cell(f.key ?? "–"),
        cell(`${f.partition}:${f.offset}`),
        cell(latency === null ? "–" : `${latency} ms${live ? "" : " (replay)"}`, "num"),
        dataCell,
      );
      frag.append(tr);
    }
    $("rows").replaceChildren(frag);
  }

  function median(xs) {
    if (!xs.length) return null;
    const v = [...xs].sort((a, b) => a - b);
    return v[Math.floor(v.length / 2)];
  }

  function spark(canvas, values, color) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width;
    const h = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(w * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(h * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const nums = values.filter((v) => v !== null);
    if (!nums.length) return;
    const max = Math.max(1, ...nums);
    const step = w / (HISTORY - 1);
    const x0 = w - (values.length - 1) * step;
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    values.forEach((v, i) => {
      if (v === null) {
        pen = false;
        return;
      }
      const x = x0 + i * step;
      const y = h - 2 - (v / max) * (h - 6);
      if (pen) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      pen = true;
    });
    ctx.stroke();
  }

  function tick() {
    s.rateHist.push(s.secCount);
    s.latHist.push(median(s.secLat));
    if (s.rateHist.length > HISTORY) s.rateHist.shift();
    if (s.latHist.length > HISTORY) s.latHist.shift();
    s.secCount = 0;
    s.secLat = [];
    const lat = s.latHist[s.latHist.length - 1];
    $("rate").textContent = s.rateHist[s.rateHist.length - 1].toLocaleString();
    $("latency").textContent = lat === null ? "–" : `${lat}`;
    const color = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#0969da";
    spark($("rate-chart"), s.rateHist, color);
    spark($("latency-chart"), s.latHist, color);
  }

  // ---- controls ---------------------------------------------------------------------------

  function follow(channel) {
    channel = channel.trim() || "*";
    $("channel").value = channel;
    if (channel === s.channel) return;
    if (s.ws && s.ws.readyState === WebSocket.OPEN) {
      s.ws.send(JSON.stringify({ type: "unsubscribe", channel: s.channel }));
    }
    s.channel = channel;
    s.seen = {};
    s.rows = [];
    s.dirty = true;
    notice("");
    remember();
    subscribe();
    counters();
  }

  function remember() {
    const q = new URLSearchParams();
    if (s.stream) q.set("stream", s.stream.name);
    if (s.channel !== "*") q.set("channel", s.channel);
    history.replaceState(null, "", `${location.pathname}?${q}`);
  }

  function fillExample() {
    const example = { ...(s.stream && s.stream.example) };
    if ("timestamp" in example) {
      example.timestamp = new Date().toISOString();
      s.prefilledTime = example.timestamp;
    }
    $("event").value = JSON.stringify(example, null, 2);
  }

  async function send(ev) {
    ev.preventDefault();
    const out = $("send-result");
    out.className = "";
    let event;
    try {
      event = JSON.parse($("event").value);
    } catch (e) {
      out.className = "bad";
      out.textContent = `Not JSON: ${e.message}`;
      return;
    }
    if (event && typeof event === "object" && event.timestamp === s.prefilledTime) {
      event.timestamp = new Date().toISOString(); // keep the prefilled example current
      s.prefilledTime = event.timestamp;
      $("event").value = JSON.stringify(event, null, 2);
    }
    out.textContent = "Sending…";
    try {
      const r = await fetch(s.stream.paths.produce, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(event),
      });
      const body = await r.json().catch(() => ({}));
      if (r.ok) {
        out.className = "ok";
        out.textContent = `Stored in Kafka: partition ${body.partition}, offset ${body.offset}`;
        out.dataset.partition = body.partition;
        out.dataset.offset = body.offset;
      } else {
        const e = body.error || {};
        const details = (e.details || []).map((d) => `${d.pointer}: ${d.reason}`).join("; ");
        out.className = "bad";
        out.textContent = `${r.status} ${e.code || ""}: ${e.message || r.statusText}${details ? ` (${details})` : ""}`;
      }
    } catch (e) {
      out.className = "bad";
      out.textContent = "The server cannot be reached; try again when the viewer is connected.";
    }
  }

  function init() {
    $("channel").value = s.channel;
    $("follow-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      follow($("channel").value);
    });
    $("all").addEventListener("click", () => follow("*"));
    $("pause").addEventListener("click", () => {
      s.paused = !s.paused;
      $("pause").setAttribute("aria-pressed", String(s.paused));
      $("table-note").textContent = s.paused ? "(paused)" : "";
      s.dirty = true;
    });
    $("stream").addEventListener("change", () => {
      const next = s.info && s.info.streams.find((x) => x.name === $("stream").value);
      if (!next || (s.stream && next.name === s.stream.name)) return;
      s.stream = next;
      s.channel = "*";
      $("channel").value = "*";
      s.seen = {};
      s.rows = [];
      s.channels.clear();
      s.channelsDirty = true;
      s.dirty = true;
      fillExample();
      remember();
      const old = s.ws;
      s.ws = null;
      if (old) old.close();
      connect();
    });
    $("send-form").addEventListener("submit", send);
    setInterval(render, 200);
    setInterval(tick, 1000);
    counters();
    connect();
  }

  init();
})();
