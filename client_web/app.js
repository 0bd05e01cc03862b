// Avatar Live: browser client for the avatar server (protocol v1, docs/protocol.md).
// Microphone -> WebRTC (sendonly audio) -> server; avatar video (recvonly) + `visemes` data channel back.
// No dependencies, no build step: an ES module for current Chromium and Firefox.

const PROTOCOL_VERSION = 1;
const VISEME_NAMES = ["sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "I", "O", "U"];
const ICE_GATHER_TIMEOUT_MS = 3000; // host candidates (and a TURN allocation, when configured): gathering is quick
const WELCOME_TIMEOUT_MS = 5000;
const ANSWER_TIMEOUT_MS = 15000;
const PING_INTERVAL_MS = 2000;
const STATS_INTERVAL_MS = 1000;
const FRAME_TIMES_MAX = 300; // video frames reported per `frame_times` control (the server's limit)
// the whole path's segments as the server names them, and how the page labels them
const PATH_SEGMENTS = [
  ["uplink", "up", "capture → the server receiving the audio packet (encoder, network)"],
  ["jitter_decode", "jitter", "packet → decoded audio (server jitter buffer, Opus decode)"],
  ["server", "server", "decoded audio → the video frame leaving the server's renderer"],
  ["encode_send", "encode", "frame → its last packet sent (VP8 encode)"],
  ["downlink", "down", "packet sent → this page receiving the frame (network)"],
  ["client", "page", "frame received → presented here (jitter buffer, decode, display)"],
];
const EMOTION_BLEND_S = 0.4;

const $ = (id) => document.getElementById(id);
// An access token from the page's link (?token=...), when the server requires one: it goes to the
// signaling socket and the HTTP requests, and the server puts viewer tokens into the watch links.
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const authHeaders = () => (TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {});
const ui = {
  start: $("btn-start"), stop: $("btn-stop"), retry: $("btn-retry"), dismiss: $("btn-dismiss"),
  video: $("avatar-video"), overlayTitle: $("overlay-title"), overlaySub: $("overlay-sub"),
  statusText: $("status-text"), message: $("message"), messageTitle: $("message-title"),
  messageText: $("message-text"), liveRegion: $("live-region"),
  micSelect: $("mic-select"), avatarSelect: $("avatar-select"), removePhoto: $("btn-remove-photo"),
  intensity: $("intensity"), intensityOut: $("intensity-out"), emotionChips: $("emotion-chips"),
  meter: $("mic-meter"), meterFill: $("meter-fill"),
  visemeBars: $("viseme-bars"), visemeLabel: $("viseme-label"), vadDot: $("vad-dot"), vadText: $("vad-text"),
  badgeFps: $("badge-fps"), statFps: $("stat-fps"), statRtt: $("stat-rtt"), statLat: $("stat-lat"),
  statPath: $("stat-path"), statPathParts: $("stat-path-parts"),
  statFirst: $("stat-first"), statScale: $("stat-scale"),
  photoForm: $("photo-form"), photoFile: $("photo-file"), photoName: $("photo-name"),
  photoConsentBy: $("photo-consent-by"), photoConsent: $("photo-consent"), photoMsg: $("photo-msg"),
  uploadBtn: $("btn-upload"),
  shareCard: $("share-card"), shareWatch: $("share-watch"), shareObs: $("share-obs"),
  shareStage: $("share-stage"), shareViewers: $("share-viewers"), shareOffset: $("share-offset"),
  audienceFeed: $("audience-feed"),
};

/** Public, read-only view for tests and curious people (times: performance.now() ms). */
const client = {
  state: "idle",          // idle | connecting | live | error | stopped
  stats: {
    fps: null,            // received video frames per second (inbound-rtp framesPerSecond or counted)
    framesDecoded: 0,
    rttMs: null,          // WebSocket ping/pong round trip
    iceRttMs: null,       // ICE candidate-pair currentRoundTripTime
    serverFps: null,
    latencyP50: null,     // server-side audio -> frame latency (ms)
    latencyP95: null,
    wholePathP50: null,   // whole path: microphone capture -> this page presenting the frame (ms)
    wholePathP95: null,
    wholePathSegments: null, // {segment: {p50, p95, n}} (PATH_SEGMENTS)
    clockOffsetMs: null,  // server wallclock - this page's, from the ping with the shortest round trip
    framesReported: 0,    // video frames whose receive/presentation times went back to the server
    visemeMessages: 0,
    viseme: "sil",
    speaking: false,
    session: null,
    avatar: null,
    mic: null,            // label of the microphone being sent
    firstFrameMs: null,   // firstFrameAt - startedAt
    stage: null,          // this call's stage id (watch link /watch/<stage>)
    viewers: 0,           // people watching the stage now
    audience: [],         // reactions and comments received ({type, kind|text})
  },
  firstFrameAt: null,
  startedAt: null,
  lastError: null,        // {code, title, text}
  timings: {},            // ms after Start of each step: mic, socket, welcome, gathered, answer, connected, firstFrame
};
// the current call's RTCPeerConnection (getStats: which candidate pair carries the call); not
// enumerable, so serializing avatarClient stays plain data
Object.defineProperty(client, "pc", { get: () => (call && !call.closed ? call.pc : null), enumerable: false });
window.avatarClient = client;

/** Everything one call owns; replaced on each Start so late callbacks of an old call are ignored. */
let call = null;

// ---------------------------------------------------------------------------------------------
// State and messages

const STATE_LABEL = { idle: "Ready", connecting: "Connecting…", live: "Live", error: "Problem", stopped: "Stopped" };

function setState(state) {
  client.state = state;
  document.body.dataset.state = state;
  ui.statusText.textContent = STATE_LABEL[state] ?? state;
  const busy = state === "connecting" || state === "live";
  ui.start.disabled = busy;
  ui.stop.disabled = !busy;
  ui.start.querySelector("span").textContent = state === "stopped" || state === "error" ? "Start again" : "Start";
  if (state === "connecting") {
    ui.overlayTitle.textContent = "Connecting…";
    ui.overlaySub.textContent = "Setting up the microphone and the video link.";
  } else if (state === "stopped") {
    ui.overlayTitle.textContent = "Call ended";
    ui.overlaySub.textContent = "Press Start to talk to your avatar again.";
  } else if (state === "error") {
    ui.overlayTitle.textContent = "Not connected";
    ui.overlaySub.textContent = "See the message below the video.";
  } else if (state === "idle") {
    ui.overlayTitle.textContent = "Your avatar is waiting";
  }
  announce(STATE_LABEL[state]);
}

function announce(text) {
  ui.liveRegion.textContent = text;
}

function showMessage(title, text, { retry = false, kind = "error", code = null } = {}) {
  client.lastError = kind === "error" ? { code, title, text } : client.lastError;
  ui.message.hidden = false;
  ui.message.dataset.kind = kind;
  ui.message.dataset.code = code ?? "";
  ui.messageTitle.textContent = title;
  ui.messageText.textContent = text;
  ui.retry.hidden = !retry;
}

function clearMessage() {
  ui.message.hidden = true;
  ui.messageTitle.textContent = "";
  ui.messageText.textContent = "";
  ui.retry.hidden = true;
}

/** Fail the current call: tear everything down and explain what happened. */
function fail(callRef, title, text, { retry = true, code = null } = {}) {
  if (callRef !== call || callRef.closed) return;
  teardown(callRef, { sendBye: true });
  setState("error");
  showMessage(title, text, { retry, code });
}

/** Human text for a getUserMedia error. */
function micErrorMessage(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return ["Microphone blocked",
        "The browser was not allowed to use your microphone. Click the microphone or lock icon in the address bar, allow access for this site, then press Retry.", "mic_denied"];
    case "NotFoundError":
    case "OverconstrainedError":
      return ["No microphone found",
        "Plug in a microphone or headset (or pick another input), then press Retry.", "mic_missing"];
    case "NotReadableError":
    case "AbortError":
      return ["Microphone busy",
        "Another app or tab may be using your microphone. Close it, then press Retry.", "mic_busy"];
    default:
      return ["Microphone problem", `The microphone could not be opened (${err && err.name ? err.name + ": " : ""}${err && err.message ? err.message : err}).`, "mic_error"];
  }
}

// ---------------------------------------------------------------------------------------------
// Avatars and emotion

async function loadAvatars(selectName) {
  try {
    const r = await fetch("/avatars", { cache: "no-store", headers: authHeaders() });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const body = await r.json();
    const avatars = Array.isArray(body.avatars) ? body.avatars : [];
    const current = selectName ?? ui.avatarSelect.value ?? "";
    ui.avatarSelect.replaceChildren();
    const groups = new Map();
    const kindLabel = { "built-in": "Characters", sprite: "Cartoon packs", photo: "Photos" };
    for (const a of avatars) {
      const kind = a.kind ?? "other";
      if (!groups.has(kind)) {
        const g = document.createElement("optgroup");
        g.label = kindLabel[kind] ?? kind;
        groups.set(kind, g);
        ui.avatarSelect.append(g);
      }
      const o = document.createElement("option");
      o.value = a.name;
      o.dataset.kind = kind;
      o.textContent = prettyName(a.name);
      groups.get(kind).append(o);
    }
    const pick = avatars.some((a) => a.name === current) ? current : (body.default ?? avatars[0]?.name ?? "");
    ui.avatarSelect.value = pick;
    ui.avatarSelect.disabled = avatars.length === 0;
    if (avatars.length === 0) ui.avatarSelect.append(new Option("No avatars available", ""));
    updateRemoveButton();
  } catch (err) {
    ui.avatarSelect.replaceChildren(new Option("Avatars unavailable (server unreachable?)", ""));
    ui.avatarSelect.disabled = true;
  }
}

function updateRemoveButton() {
  const o = ui.avatarSelect.selectedOptions[0];
  ui.removePhoto.hidden = !(o && o.dataset.kind === "photo");
}

async function removePhoto() {
  const name = ui.avatarSelect.value;
  if (!name || !confirm(`Delete the photo avatar "${prettyName(name)}" and its files from the server? This cannot be undone.`)) return;
  const r = await fetch(`/avatars/${encodeURIComponent(name)}`, { method: "DELETE", headers: authHeaders() });
  let body = {};
  try { body = await r.json(); } catch { /* empty */ }
  if (r.ok) announce(`Removed ${prettyName(name)}`);
  else showMessage("Could not remove the photo", body.error || `HTTP ${r.status}`, { kind: "warn" });
  loadAvatars(r.ok ? "" : name);
}

function prettyName(name) {
  return String(name).replace(/[-_]+/g, " ").replace(/\b\w/g, (c) => c.toUpperCase());
}

function selectedEmotion() {
  const checked = ui.emotionChips.querySelector("input[name=emotion]:checked");
  return checked ? checked.value : "auto";
}

function sendEmotion() {
  if (!call || call.closed) return;
  sendWs(call, {
    type: "control", action: "set_emotion", emotion: selectedEmotion(),
    intensity: Number(ui.intensity.value), blend_s: EMOTION_BLEND_S,
  });
}

// ---------------------------------------------------------------------------------------------
// Microphone, devices, level meter

async function openMic(deviceId) {
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 };
  if (deviceId) audio.deviceId = { exact: deviceId };
  return navigator.mediaDevices.getUserMedia({ audio, video: false });
}

async function refreshDevices(activeTrack) {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  const activeId = activeTrack?.getSettings?.().deviceId ?? ui.micSelect.value;
  ui.micSelect.replaceChildren();
  devices.forEach((d, i) => {
    ui.micSelect.append(new Option(d.label || `Microphone ${i + 1}`, d.deviceId));
  });
  if (devices.length === 0) ui.micSelect.append(new Option("No microphone found", ""));
  if (activeId && devices.some((d) => d.deviceId === activeId)) ui.micSelect.value = activeId;
  ui.micSelect.disabled = devices.length === 0 || !devices[0].label; // labels appear after permission
}

function startMeter(c, stream) {
  stopMeter(c);
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  const ctx = c.audioCtx ?? new Ctx();
  c.audioCtx = ctx;
  if (ctx.state === "suspended") ctx.resume().catch(() => {});
  const src = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  analyser.smoothingTimeConstant = 0.2;
  src.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let level = 0;
  let lastAria = 0;
  const tick = (now) => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
    const rms = Math.sqrt(sum / buf.length);
    // dBFS -> 0..1 over -60..0 dB, fast attack and slow release
    const db = 20 * Math.log10(rms + 1e-9);
    const target = Math.min(1, Math.max(0, (db + 60) / 60));
    level = target > level ? target : level * 0.92 + target * 0.08;
    ui.meterFill.style.transform = `scaleX(${level.toFixed(3)})`;
    ui.meter.dataset.hot = level > 0.85 ? "1" : "";
    if (now - lastAria > 250) {
      ui.meter.setAttribute("aria-valuenow", String(Math.round(level * 100)));
      lastAria = now;
    }
    c.meterRaf = requestAnimationFrame(tick);
  };
  c.meterSrc = src;
  c.meterRaf = requestAnimationFrame(tick);
}

function stopMeter(c) {
  if (c.meterRaf) cancelAnimationFrame(c.meterRaf);
  c.meterRaf = 0;
  if (c.meterSrc) {
    try { c.meterSrc.disconnect(); } catch { /* already gone */ }
    c.meterSrc = null;
  }
  ui.meterFill.style.transform = "scaleX(0)";
  ui.meter.setAttribute("aria-valuenow", "0");
}

async function switchMic(deviceId) {
  const c = call;
  if (!c || c.closed || !c.stream) return; // used at the next Start
  try {
    const next = await openMic(deviceId);
    const track = next.getAudioTracks()[0];
    if (c !== call || c.closed) { track.stop(); return; }
    if (c.audioSender) await c.audioSender.replaceTrack(track);
    for (const t of c.stream.getTracks()) t.stop();
    c.stream = next;
    client.stats.mic = track.label || "microphone";
    watchMicTrack(c, track);
    startMeter(c, next);
    announce(`Microphone: ${track.label || "switched"}`);
  } catch (err) {
    const [title, text, code] = micErrorMessage(err);
    showMessage(title, text, { code, kind: "warn" });
  }
}

function watchMicTrack(c, track) {
  track.onended = () => {
    if (c !== call || c.closed) return;
    showMessage("Microphone disconnected", "Your microphone stopped. Pick another input in Setup.", { kind: "warn", code: "mic_ended" });
    refreshDevices(null);
  };
}

// ---------------------------------------------------------------------------------------------
// Signaling

function sendWs(c, msg) {
  if (c.ws && c.ws.readyState === WebSocket.OPEN) {
    c.ws.send(JSON.stringify({ v: PROTOCOL_VERSION, ...msg }));
    return true;
  }
  return false;
}

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws${TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : ""}`;
}

function openSocket(c) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      reject(err);
      return;
    }
    c.ws = ws;
    let opened = false;
    // settled by the socket, or by teardown() when the call ends first
    c.waiters.socket = (value, err) => { delete c.waiters.socket; if (err) reject(err); else resolve(value); };
    ws.onopen = () => { opened = true; c.waiters.socket?.(ws); };
    ws.onerror = () => { if (!opened) c.waiters.socket?.(null, new Error("WebSocket error")); };
    ws.onclose = (ev) => {
      if (!opened) { c.waiters.socket?.(null, new Error(`WebSocket closed (${ev.code})`)); return; }
      onSocketClosed(c, ev);
    };
    ws.onmessage = (ev) => onSocketMessage(c, ev);
  });
}

function waitFor(c, key, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
    c.waiters[key] = (value, err) => {
      clearTimeout(timer);
      delete c.waiters[key];
      if (err) reject(err); else resolve(value);
    };
  });
}

function onSocketClosed(c, ev) {
  if (c !== call || c.closed) return;
  const text = ev.reason
    ? `The server closed the connection: ${ev.reason}`
    : "The connection to the avatar server was lost. Check that the server is still running, then press Retry.";
  fail(c, "Disconnected from the server", text, { code: "ws_closed" });
}

function onSocketMessage(c, ev) {
  if (c !== call || c.closed) return;
  let msg;
  try {
    msg = JSON.parse(ev.data);
  } catch {
    console.warn("non-JSON message from server", ev.data);
    return;
  }
  switch (msg.type) {
    case "welcome":
      client.stats.session = msg.session ?? null;
      showShare(msg.stage);
      c.waiters.welcome?.(msg);
      break;
    case "answer":
      c.waiters.answer?.(msg);
      break;
    case "candidate":
      if (c.pc && msg.candidate) c.pc.addIceCandidate(msg.candidate).catch((e) => console.warn("addIceCandidate", e));
      break;
    case "event":
      onEvent(c, msg.name, msg.data ?? {});
      break;
    case "error":
      onServerError(c, msg);
      break;
    default:
      console.warn("unknown message type from server", msg.type);
  }
}

function onServerError(c, msg) {
  const text = msg.message || `Server error (${msg.code}).`;
  if (msg.fatal || c.waiters.answer) {
    // before the answer every error means the call cannot start
    if (c.waiters.answer) c.waiters.answer(null, Object.assign(new Error(text), { code: msg.code }));
    else fail(c, "The server ended the call", text, { code: msg.code });
    return;
  }
  if (msg.code === "unknown_avatar") {
    showMessage("Avatar not available", text, { kind: "warn", code: msg.code });
    loadAvatars(client.stats.avatar);
  } else {
    showMessage("The server refused a request", text, { kind: "warn", code: msg.code });
  }
}

function onEvent(c, name, data) {
  switch (name) {
    case "pong": {
      if (typeof data.t === "number") {
        client.stats.rttMs = performance.now() - data.t;
        ui.statRtt.textContent = client.stats.rttMs.toFixed(0);
        if (typeof data.wall_ms === "number" && (c.bestRttMs == null || client.stats.rttMs < c.bestRttMs)) {
          c.bestRttMs = client.stats.rttMs;
          client.stats.clockOffsetMs = data.wall_ms - (performance.timeOrigin + data.t + client.stats.rttMs / 2);
        }
      }
      break;
    }
    case "stats": {
      if (typeof data.fps === "number") client.stats.serverFps = data.fps;
      if (data.latency_ms) setLatency(data.latency_ms);
      if (data.whole_path_ms) setWholePath(data.whole_path_ms, data.whole_path_segments_ms);
      // < 1 while the server is overloaded and renders smaller to keep the frame rate
      if (typeof data.scale === "number") ui.statScale.hidden = data.scale >= 1;
      if (typeof data.viewers === "number") {
        client.stats.viewers = data.viewers;
        ui.shareViewers.textContent = `${data.viewers} watching`;
      }
      const delay = data.program?.audio_delay_ms;
      if (typeof delay === "number") ui.shareOffset.textContent = delay.toFixed(0);
      break;
    }
    case "audience": {
      client.stats.audience.push(data);
      const li = document.createElement("li");
      const icons = { applause: "👏", laugh: "😄", heart: "❤️", surprise: "😮", question: "❓" };
      li.textContent = data.type === "reaction" ? `${icons[data.kind] ?? ""} ${data.kind}` : `💬 ${data.text}`;
      ui.audienceFeed.prepend(li);
      while (ui.audienceFeed.children.length > 20) ui.audienceFeed.lastChild.remove();
      break;
    }
    case "avatar": {
      const name = data.avatar ?? data.name;
      if (name) {
        client.stats.avatar = name;
        if ([...ui.avatarSelect.options].some((o) => o.value === name)) ui.avatarSelect.value = name;
        else loadAvatars(name);
      }
      break;
    }
    case "emotion": {
      const em = data.emotion;
      const input = em && ui.emotionChips.querySelector(`input[value="${CSS.escape(em)}"]`);
      if (input && !c.emotionDirty) input.checked = true;
      break;
    }
    case "session_started":
      if (data.avatar) client.stats.avatar = data.avatar;
      break;
    case "session_closed":
      if (c === call && !c.closed) {
        teardown(c, { sendBye: false });
        setState("stopped");
        showMessage("Call ended by the server", data.reason ? String(data.reason) : "The server closed this session. Press Start to begin a new one.", { kind: "info", retry: true, code: "session_closed" });
      }
      break;
    default:
      break;
  }
}

function showShare(stage) {
  if (!stage || !stage.id) return;
  client.stats.stage = stage.id;
  const origin = window.location.origin;
  ui.shareWatch.value = origin + stage.watch;
  const obs = new URL(stage.obs, origin);
  obs.searchParams.set("width", "512");
  obs.searchParams.set("height", "512");
  ui.shareObs.value = obs.href;
  ui.shareStage.textContent = stage.id;
  ui.shareCard.hidden = false;
}

document.addEventListener("click", (ev) => {
  const id = ev.target?.dataset?.copy;
  if (!id) return;
  const input = $(id);
  input.select();
  navigator.clipboard?.writeText(input.value).then(() => announce("Link copied"), () => document.execCommand?.("copy"));
});

function setLatency(lat) {
  if (typeof lat.p50 === "number") client.stats.latencyP50 = lat.p50;
  if (typeof lat.p95 === "number") client.stats.latencyP95 = lat.p95;
  if (client.stats.latencyP50 != null) {
    ui.statLat.textContent = `${client.stats.latencyP50.toFixed(0)} / ${client.stats.latencyP95 != null ? client.stats.latencyP95.toFixed(0) : "—"}`;
  }
}

function setWholePath(whole, segments) {
  if (typeof whole.p50 !== "number") return;
  client.stats.wholePathP50 = whole.p50;
  client.stats.wholePathP95 = typeof whole.p95 === "number" ? whole.p95 : null;
  client.stats.wholePathSegments = segments ?? null;
  ui.statPath.textContent = `${whole.p50.toFixed(0)} / ${whole.p95 != null ? whole.p95.toFixed(0) : "—"}`;
  const parts = PATH_SEGMENTS.filter(([k]) => typeof segments?.[k]?.p50 === "number");
  ui.statPathParts.textContent = parts.map(([k, short]) => `${short} ${segments[k].p50.toFixed(0)}`).join(" · ");
  ui.statPathParts.title = `Median ms per segment:\n${parts.map(([k, , what]) => `${what}: ${segments[k].p50.toFixed(1)}`).join("\n")}`;
}

/** Tell the server when the avatar's frames arrived and were shown (it knows when their audio was captured). */
function reportFrames(c) {
  if (c !== call || c.closed || !c.frameRows.length) return;
  const rows = c.frameRows.splice(0, c.frameRows.length);
  for (let i = 0; i < rows.length; i += FRAME_TIMES_MAX) {
    sendWs(c, { type: "control", action: "frame_times", frames: rows.slice(i, i + FRAME_TIMES_MAX), clock_offset_ms: client.stats.clockOffsetMs });
  }
  client.stats.framesReported += rows.length;
}

// ---------------------------------------------------------------------------------------------
// Visemes data channel

function buildVisemeBars() {
  ui.visemeBars.replaceChildren();
  for (const name of VISEME_NAMES) {
    const col = document.createElement("div");
    col.className = "vbar";
    col.innerHTML = `<div class="vbar-track"><div class="vbar-fill"></div></div><span class="vbar-name"></span>`;
    col.querySelector(".vbar-name").textContent = name;
    ui.visemeBars.append(col);
  }
}

function onVisemes(c, data) {
  let msg;
  try { msg = JSON.parse(data); } catch { return; }
  if (msg.type !== "visemes") return;
  client.stats.visemeMessages += 1;
  if (Array.isArray(msg.names)) c.visemeNames = msg.names;
  if (msg.latency_ms) setLatency(msg.latency_ms);
  const rows = msg.weights;
  if (!Array.isArray(rows) || rows.length === 0) return;
  const w = rows[rows.length - 1];
  const names = c.visemeNames;
  let best = 0;
  for (let i = 1; i < w.length; i++) if (w[i] > w[best]) best = i;
  const speaking = !!(msg.vad && msg.vad.speaking);
  client.stats.viseme = names[best] ?? String(best);
  client.stats.speaking = speaking;
  // paint at most once per animation frame
  c.visemePending = { w, best, speaking };
  if (!c.visemeRaf) {
    c.visemeRaf = requestAnimationFrame(() => {
      c.visemeRaf = 0;
      const p = c.visemePending;
      if (!p) return;
      const fills = ui.visemeBars.querySelectorAll(".vbar-fill");
      const cols = ui.visemeBars.children;
      for (let i = 0; i < fills.length; i++) {
        const v = Math.max(0, Math.min(1, Number(p.w[i]) || 0));
        fills[i].style.transform = `scaleY(${v.toFixed(3)})`;
        cols[i].classList.toggle("top", i === p.best);
      }
      ui.visemeLabel.textContent = names[p.best] ?? "?";
      ui.vadDot.classList.toggle("on", p.speaking);
      ui.vadText.textContent = p.speaking ? "speaking" : "silent";
    });
  }
}

function resetVisemes() {
  for (const f of ui.visemeBars.querySelectorAll(".vbar-fill")) f.style.transform = "scaleY(0)";
  for (const col of ui.visemeBars.children) col.classList.remove("top");
  ui.visemeLabel.textContent = "sil";
  ui.vadDot.classList.remove("on");
  ui.vadText.textContent = "silent";
}

// ---------------------------------------------------------------------------------------------
// Video and statistics

function watchFirstFrame(c) {
  const v = ui.video;
  const onFirst = () => {
    if (c !== call || c.closed || client.firstFrameAt != null) return;
    client.firstFrameAt = performance.now();
    client.stats.firstFrameMs = client.firstFrameAt - client.startedAt;
    client.timings.firstFrame = Math.round(client.stats.firstFrameMs);
    ui.statFirst.textContent = client.stats.firstFrameMs.toFixed(0);
    setState("live");
    clearMessage();
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const cb = (now, meta) => {
      if (c !== call || c.closed) return;
      onFirst();
      c.frameTimes.push(now);
      if (typeof meta?.rtpTimestamp === "number" && c.frameRows.length < 10 * FRAME_TIMES_MAX) {
        // wallclock ms (performance.timeOrigin + ...): the server's `frame_times` are on wallclocks too
        const shown = meta.presentationTime ?? meta.expectedDisplayTime ?? now;
        const received = typeof meta.receiveTime === "number" ? performance.timeOrigin + meta.receiveTime : null;
        c.frameRows.push([meta.rtpTimestamp, received, performance.timeOrigin + shown]);
      }
      c.vfcHandle = v.requestVideoFrameCallback(cb);
    };
    c.vfcHandle = v.requestVideoFrameCallback(cb);
  } else {
    v.addEventListener("loadeddata", onFirst, { once: true });
  }
}

async function pollStats(c) {
  if (c !== call || c.closed || !c.pc) return;
  let fps = null;
  try {
    const report = await c.pc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && (s.kind === "video" || s.mediaType === "video")) {
        if (typeof s.framesPerSecond === "number") fps = s.framesPerSecond;
        if (typeof s.framesDecoded === "number") client.stats.framesDecoded = s.framesDecoded;
      }
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && typeof s.currentRoundTripTime === "number") {
        client.stats.iceRttMs = s.currentRoundTripTime * 1000;
      }
    });
  } catch { /* pc closed meanwhile */ }
  // fallback / cross-check: frames presented in the last second (requestVideoFrameCallback)
  const now = performance.now();
  c.frameTimes = c.frameTimes.filter((t) => now - t <= 1000);
  if (fps == null && c.frameTimes.length) fps = c.frameTimes.length;
  if (fps != null) {
    client.stats.fps = fps;
    ui.statFps.textContent = fps.toFixed(0);
    ui.badgeFps.textContent = `${fps.toFixed(0)} fps`;
  }
  if (client.stats.rttMs == null && client.stats.iceRttMs != null) ui.statRtt.textContent = client.stats.iceRttMs.toFixed(0);
}

// ---------------------------------------------------------------------------------------------
// Call lifecycle

function gatherComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs); // send what we have; the server may still connect
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** Open the microphone for call ``c``; false (and the call failed with a human message) if it cannot. */
async function acquireMic(c, mark) {
  let stream = null;
  let error = null;
  try {
    stream = await openMic(ui.micSelect.value || undefined);
  } catch (err) {
    error = err;
    if (err && err.name === "OverconstrainedError" && ui.micSelect.value) {
      try { stream = await openMic(undefined); } catch (err2) { error = err2; }
    }
  }
  if (c !== call || c.closed) {
    if (stream) for (const t of stream.getTracks()) t.stop();
    return false;
  }
  if (!stream) {
    const [title, text, code] = micErrorMessage(error);
    fail(c, title, text, { code });
    return false;
  }
  c.stream = stream;
  mark("mic");
  const track = stream.getAudioTracks()[0];
  client.stats.mic = track.label || "microphone";
  watchMicTrack(c, track);
  startMeter(c, stream);
  refreshDevices(track).catch(() => {});
  return true;
}

async function start() {
  if (call && !call.closed) teardown(call, { sendBye: true });
  clearMessage();
  const c = {
    closed: false, ws: null, pc: null, stream: null, audioSender: null, audioCtx: null,
    waiters: {}, timers: [], frameTimes: [], frameRows: [], bestRttMs: null, visemeNames: VISEME_NAMES.slice(), emotionDirty: false,
    meterRaf: 0, meterSrc: null, visemeRaf: 0, visemePending: null, vfcHandle: 0,
  };
  call = c;
  if (ui.photoMsg.dataset.kind === "ok") { ui.photoMsg.textContent = ""; ui.photoMsg.dataset.kind = ""; }
  client.startedAt = performance.now();
  client.firstFrameAt = null;
  client.lastError = null;
  client.timings = {};
  const mark = (name) => { if (c === call) client.timings[name] = Math.round(performance.now() - client.startedAt); };
  Object.assign(client.stats, {
    fps: null, framesDecoded: 0, rttMs: null, iceRttMs: null, serverFps: null, latencyP50: null,
    latencyP95: null, wholePathP50: null, wholePathP95: null, wholePathSegments: null, clockOffsetMs: null, framesReported: 0,
    visemeMessages: 0, viseme: "sil", speaking: false, session: null, firstFrameMs: null,
  });
  for (const el of [ui.statFps, ui.statRtt, ui.statLat, ui.statPath, ui.statFirst]) el.textContent = "—";
  ui.statPathParts.textContent = "";
  ui.badgeFps.textContent = "— fps";
  setState("connecting");

  if (!navigator.mediaDevices?.getUserMedia) {
    fail(c, "Microphone needs a secure page",
      "Browsers only share the microphone with https:// pages or http://localhost. Open this page through localhost (or https) and try again.",
      { retry: false, code: "insecure" });
    return;
  }

  // 1. the microphone and the signaling run in parallel (the permission prompt can take a while);
  //    the mic track joins the audio sender whenever it is ready
  const micReady = acquireMic(c, mark);

  // 2. signaling socket
  let welcomeMsg;
  try {
    const welcome = waitFor(c, "welcome", WELCOME_TIMEOUT_MS, "the server's welcome");
    welcome.catch(() => {});
    await openSocket(c);
    mark("socket");
    welcomeMsg = await welcome;
    mark("welcome");
  } catch (err) {
    fail(c, "Can't reach the avatar server",
      `No connection to ${location.host}. Check that the server is running and reachable, then press Retry.`,
      { code: "unreachable" });
    return;
  }
  if (c !== call || c.closed) return;

  // 3. peer connection: sendonly mic, recvonly video, `visemes` data channel (before the offer)
  // ice_servers carry TURN credentials minted for this connection; "relay" = only through TURN
  const iceServers = Array.isArray(welcomeMsg.ice_servers) ? welcomeMsg.ice_servers : [];
  const relayOnly = welcomeMsg.ice_transport_policy === "relay";
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: relayOnly ? "relay" : "all" });
  c.pc = pc;
  const turnErrors = []; // icecandidateerror: the TURN server refused (401) or did not answer (701)
  pc.onicecandidateerror = (ev) => {
    if (/^turns?:/.test(ev.url || "")) turnErrors.push(`${ev.url}: ${ev.errorCode} ${ev.errorText || ""}`.trim());
  };
  const turnFailed = () => fail(c, "Could not reach the TURN relay",
    "This server only connects calls through its TURN relay, and the relay could not be reached or refused the "
    + "call's credentials" + (turnErrors.length ? ` (${turnErrors.join("; ")})` : "")
    + ". Check that UDP to the relay is not blocked, or ask the operator to check its TURN set-up, then press Retry.",
    { code: "turn_failed" });
  const dc = pc.createDataChannel("visemes", { ordered: false, maxRetransmits: 0 });
  c.dc = dc;
  dc.onmessage = (ev) => { if (c === call && !c.closed) onVisemes(c, ev.data); };
  const micTrack = c.stream ? c.stream.getAudioTracks()[0] : null;
  c.audioSender = pc.addTransceiver(micTrack ?? "audio", { direction: "sendonly", streams: c.stream ? [c.stream] : [] }).sender;
  micReady.then((ok) => {
    if (ok && c === call && !c.closed && c.audioSender.track == null) {
      c.audioSender.replaceTrack(c.stream.getAudioTracks()[0]).catch((e) => console.warn("replaceTrack", e));
    }
  });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (ev) => {
    if (c !== call || c.closed || ev.track.kind !== "video") return;
    ui.video.srcObject = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
    ui.video.play().catch(() => { /* autoplay of a muted video is allowed; ignore races */ });
    watchFirstFrame(c);
  };
  pc.onconnectionstatechange = () => {
    if (c !== call || c.closed) return;
    const s = pc.connectionState;
    if (s === "connected" && client.timings.connected == null) mark("connected");
    if (s === "failed" && relayOnly) {
      turnFailed();
    } else if (s === "failed") {
      fail(c, "Connection failed",
        "The video link to the server could not be established or was lost (a firewall or VPN may block WebRTC). Press Retry to try again.",
        { code: "ice_failed" });
    } else if (s === "disconnected") {
      showMessage("Connection unstable", "The video link was interrupted; trying to recover…", { kind: "warn", code: "ice_disconnected" });
    } else if (s === "connected" && ui.message.dataset.code === "ice_disconnected") {
      clearMessage();
    }
  };
  // some browsers only report ICE state (not connectionState)
  pc.oniceconnectionstatechange = () => {
    if (c === call && !c.closed && pc.iceConnectionState === "failed" && pc.connectionState === undefined) {
      if (relayOnly) { turnFailed(); return; }
      fail(c, "Connection failed", "The video link to the server could not be established. Press Retry.", { code: "ice_failed" });
    }
  };

  try {
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await gatherComplete(pc, ICE_GATHER_TIMEOUT_MS);
    mark("gathered");
    if (c !== call || c.closed) return;
    if (relayOnly && !/ typ relay/.test(pc.localDescription.sdp)) {
      turnFailed(); // no relay candidate: the call cannot connect at all
      return;
    }
    const answerP = waitFor(c, "answer", ANSWER_TIMEOUT_MS, "the server's answer");
    const msg = { type: "offer", sdp: pc.localDescription.sdp };
    if (ui.avatarSelect.value) msg.avatar = ui.avatarSelect.value;
    const emotion = selectedEmotion();
    if (emotion) msg.emotion = emotion;
    sendWs(c, msg);
    const answer = await answerP;
    if (c !== call || c.closed) return;
    mark("answer");
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  } catch (err) {
    if (c !== call || c.closed) return;
    fail(c, "The server could not start the call", err && err.message ? err.message : String(err), { code: err && err.code ? err.code : "negotiation" });
    return;
  }
  client.stats.avatar = ui.avatarSelect.value || null;
  sendEmotion(); // the offer's emotion comes at full intensity: apply the slider

  // 4. periodic ping and stats
  const ping = () => sendWs(c, { type: "control", action: "ping", t: performance.now() });
  ping();
  c.timers.push(setInterval(ping, PING_INTERVAL_MS));
  c.timers.push(setInterval(() => pollStats(c), STATS_INTERVAL_MS));
  c.timers.push(setInterval(() => reportFrames(c), STATS_INTERVAL_MS));
}

/** Close everything the call owns. Idempotent. */
function teardown(c, { sendBye }) {
  if (!c || c.closed) return;
  if (sendBye) sendWs(c, { type: "bye" });
  c.closed = true;
  for (const t of c.timers) clearInterval(t);
  c.timers = [];
  for (const w of Object.values(c.waiters)) w(null, new Error("call closed"));
  if (c.visemeRaf) cancelAnimationFrame(c.visemeRaf);
  if (c.vfcHandle && ui.video.cancelVideoFrameCallback) ui.video.cancelVideoFrameCallback(c.vfcHandle);
  stopMeter(c);
  if (c.audioCtx) c.audioCtx.close().catch(() => {});
  if (c.dc) try { c.dc.close(); } catch { /* closed */ }
  if (c.pc) try { c.pc.close(); } catch { /* closed */ }
  if (c.stream) for (const t of c.stream.getTracks()) t.stop();
  if (c.ws) {
    c.ws.onclose = null;
    c.ws.onmessage = null;
    try { c.ws.close(1000, "bye"); } catch { /* closed */ }
  }
  ui.video.srcObject = null;
  resetVisemes();
}

function stop() {
  if (!call || call.closed) return;
  teardown(call, { sendBye: true });
  clearMessage();
  setState("stopped");
}

// ---------------------------------------------------------------------------------------------
// Photo upload

async function uploadPhoto(ev) {
  ev.preventDefault();
  ui.photoMsg.textContent = "";
  ui.photoMsg.dataset.kind = "";
  const file = ui.photoFile.files && ui.photoFile.files[0];
  const name = ui.photoName.value.trim();
  const consentBy = ui.photoConsentBy.value.trim();
  const problems = [];
  if (!file) problems.push("choose a portrait image");
  if (!/^[a-z0-9][a-z0-9_-]{0,39}$/.test(name)) problems.push("give the avatar a name of lowercase letters, digits, - or _");
  if (!consentBy) problems.push("enter who gives consent");
  if (!ui.photoConsent.checked) problems.push("tick the consent statement");
  if (problems.length) {
    ui.photoMsg.dataset.kind = "error";
    ui.photoMsg.textContent = `Please ${problems.join(", ")}.`;
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("name", name);
  form.append("consent_by", consentBy);
  ui.uploadBtn.disabled = true;
  ui.photoMsg.textContent = "Uploading and analysing the face…";
  try {
    const r = await fetch("/avatars/photo", { method: "POST", body: form, headers: authHeaders() });
    let body = null;
    const text = await r.text();
    try { body = JSON.parse(text); } catch { body = null; }
    if (!r.ok) {
      const reason = (body && (body.message || body.error?.message || body.error)) || text || `HTTP ${r.status}`;
      ui.photoMsg.dataset.kind = "error";
      ui.photoMsg.textContent = `The photo was refused: ${reason}`;
      return;
    }
    const newName = (body && (body.name || body.avatar?.name || body.avatar)) || name;
    await loadAvatars(String(newName));
    ui.avatarSelect.value = String(newName);
    ui.photoMsg.dataset.kind = "ok";
    ui.photoMsg.textContent = `“${prettyName(newName)}” is ready${call && !call.closed ? " and now in use" : ": press Start"}.`;
    if (call && !call.closed) sendWs(call, { type: "control", action: "set_avatar", avatar: String(newName) });
    ui.photoForm.reset();
  } catch (err) {
    ui.photoMsg.dataset.kind = "error";
    ui.photoMsg.textContent = "Upload failed: the server could not be reached.";
  } finally {
    ui.uploadBtn.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

function init() {
  buildVisemeBars();
  ui.start.addEventListener("click", () => { start(); });
  ui.retry.addEventListener("click", () => { start(); });
  ui.stop.addEventListener("click", stop);
  ui.dismiss.addEventListener("click", clearMessage);
  ui.micSelect.addEventListener("change", () => switchMic(ui.micSelect.value));
  ui.removePhoto.addEventListener("click", removePhoto);
  ui.avatarSelect.addEventListener("change", () => {
    updateRemoveButton();
    if (call && !call.closed && ui.avatarSelect.value) {
      sendWs(call, { type: "control", action: "set_avatar", avatar: ui.avatarSelect.value });
    }
  });
  ui.emotionChips.addEventListener("change", () => {
    if (call) call.emotionDirty = true;
    sendEmotion();
  });
  let slideTimer = 0;
  const updateIntensity = () => { ui.intensityOut.textContent = `${Math.round(Number(ui.intensity.value) * 100)}%`; };
  ui.intensity.addEventListener("input", () => {
    updateIntensity();
    clearTimeout(slideTimer);
    slideTimer = setTimeout(sendEmotion, 120);
  });
  updateIntensity();
  ui.photoForm.addEventListener("submit", uploadPhoto);
  const pip = $("btn-pip");
  if (document.pictureInPictureEnabled && ui.video.requestPictureInPicture) {
    pip.hidden = false;
    pip.addEventListener("click", () => {
      const p = document.pictureInPictureElement ? document.exitPictureInPicture() : ui.video.requestPictureInPicture();
      p.catch((err) => showMessage("Pop-out not available", String(err && err.message ? err.message : err), { kind: "warn" }));
    });
  }
  $("btn-full").addEventListener("click", () => {
    const stage = $("stage");
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    else if (stage.requestFullscreen) stage.requestFullscreen().catch(() => {});
  });
  navigator.mediaDevices?.addEventListener?.("devicechange", () => {
    refreshDevices(call && !call.closed && call.stream ? call.stream.getAudioTracks()[0] : null).catch(() => {});
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.code !== "Space" || ev.repeat) return;
    const t = ev.target;
    if (t && (t.closest("input, select, textarea, button, summary, [contenteditable]"))) return;
    ev.preventDefault();
    if (client.state === "connecting" || client.state === "live") stop(); else start();
  });
  window.addEventListener("pagehide", () => { if (call && !call.closed) teardown(call, { sendBye: true }); });
  setState("idle");
  loadAvatars();
}

init();
