// The watch page: a viewer of one stage (/watch/<stage>) over WHEP, with audio, reactions and comments.
import { subscribe } from "/static/whep.js";

const $ = (id) => document.getElementById(id);
const stageId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const RETRY_MS = 2000;
const TOKEN = new URLSearchParams(location.search).get("token") || "";  // the watch link's viewer token

/** Read-only view for tests: state, frames shown, events. */
const watch = { state: "connecting", stage: stageId, framesShown: 0, events: [], error: null, muted: false, reconnects: 0 };
window.avatarWatch = watch;

const video = $("watch-video");
let sub = null;
let ended = false;

function setState(state, title, sub_ = "") {
  watch.state = state;
  document.body.dataset.state = state;
  $("status-text").textContent = { connecting: "Connecting…", waiting: "Waiting", live: "Live", ended: "Ended", error: "Problem" }[state] ?? state;
  $("watch-overlay").hidden = state === "live";
  if (title) { $("overlay-title").textContent = title; $("overlay-sub").textContent = sub_; }
}

async function play() {
  video.muted = false;
  try {
    await video.play();
    watch.muted = false;
  } catch (e) {
    if (e.name !== "NotAllowedError") return;
    // this browser's autoplay policy wants a gesture before sound: play muted, offer to unmute
    video.muted = true;
    watch.muted = true;
    $("btn-unmute").hidden = false;
    await video.play().catch(() => {});
  }
}

$("btn-unmute").addEventListener("click", () => {
  video.muted = false;
  watch.muted = false;
  $("btn-unmute").hidden = true;
  video.play().catch(() => {});
});

function countFrames() {
  if (!video.requestVideoFrameCallback) return;
  const cb = () => { watch.framesShown += 1; video.requestVideoFrameCallback(cb); };
  video.requestVideoFrameCallback(cb);
}

function onEvent(msg) {
  watch.events.push(msg);
  if (msg.type === "ended") {
    ended = true;
    setState("ended", "The stage has ended", msg.reason || "The speaker has left.");
    sub?.close();
  } else if (msg.type === "error") {
    $("watch-msg").textContent = msg.message;
  }
}

let stateTimer = null;
function onState(state) {
  if (state === "connected") {
    clearTimeout(stateTimer);
    setState("live");
  } else if ((state === "disconnected" || state === "failed") && !ended) {
    // a network change: give ICE 3 s to recover, then subscribe anew
    clearTimeout(stateTimer);
    stateTimer = setTimeout(() => reconnect(), state === "failed" ? 0 : 3000);
  }
}

async function reconnect() {
  if (ended) return;
  watch.reconnects += 1;
  const old = sub;
  sub = null;
  await old?.close();
  connect();
}

async function connect() {
  if (ended) return;
  try {
    sub = await subscribe(stageId, {
      onTrack: (stream) => { if (video.srcObject !== stream) { video.srcObject = stream; play(); } },
      onEvent, onState, token: TOKEN,
    });
    window.avatarWatchPc = sub.pc;  // for tests and the curious: getStats() of this viewer
  } catch (e) {
    watch.error = { status: e.status ?? null, code: e.code ?? null, message: e.message };
    if (e.status === 409) {
      setState("waiting", "Waiting for the speaker", "The stage starts when the speaker presses Start.");
      setTimeout(connect, RETRY_MS);
    } else if (e.status === 410) {
      ended = true;
      setState("ended", "The stage has ended", e.message);
    } else if (e.status === 401 || e.status === 403) {
      setState("error", "This link does not let you watch", e.message);
    } else if (e.status === 404) {
      setState("error", "No such stage", e.message);
    } else if (e.status === 503) {
      setState("error", "The stage is full", e.message);
    } else {
      setState("error", "Cannot connect", e.message);
      setTimeout(connect, RETRY_MS * 2);
    }
  }
}

document.querySelectorAll("[data-reaction]").forEach((b) => b.addEventListener("click", () => {
  try { sub?.send({ type: "reaction", kind: b.dataset.reaction }); } catch (e) { $("watch-msg").textContent = e.message; }
}));
$("comment-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("comment-text").value.trim();
  if (!text) return;
  try { sub?.send({ type: "comment", text }); $("comment-text").value = ""; } catch (e) { $("watch-msg").textContent = e.message; }
});
window.addEventListener("pagehide", () => sub?.close());

countFrames();
connect();
