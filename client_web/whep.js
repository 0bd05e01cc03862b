// A small WHEP player (RFC 9725's receive side): POST an SDP offer, get the answer, DELETE on leave.
// Shared by the watch page and the OBS page. No dependencies.

const GATHER_TIMEOUT_MS = 2000;

/** Wait until ICE gathering is complete (the server does not take trickled candidates). */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

export class WhepError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

/**
 * One subscription. `onTrack(stream)`, `onEvent(msg)` (the stage channel), `onState(state)`.
 * `audio: false` asks for video only; `alpha: true` for the colour | alpha-matte video (twice as wide).
 */
export async function subscribe(stageId, { audio = true, alpha = false, token = "", onTrack, onEvent, onState } = {}) {
  const auth = token ? { Authorization: `Bearer ${token}` } : {};
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  if (audio) pc.addTransceiver("audio", { direction: "recvonly" });
  const channel = pc.createDataChannel("stage");
  channel.onmessage = (ev) => { try { onEvent?.(JSON.parse(ev.data)); } catch { /* not ours */ } };
  const stream = new MediaStream();
  pc.ontrack = (ev) => { stream.addTrack(ev.track); onTrack?.(stream); };
  pc.onconnectionstatechange = () => onState?.(pc.connectionState);
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const res = await fetch(`/whep/${encodeURIComponent(stageId)}${alpha ? "?alpha=1" : ""}`, {
    method: "POST", headers: { "Content-Type": "application/sdp", ...auth }, body: pc.localDescription.sdp,
  });
  const body = await res.text();
  if (res.status !== 201) {
    pc.close();
    let code = String(res.status), message = body;
    try { const e = JSON.parse(body).error; code = e.code; message = e.message; } catch { /* plain text */ }
    throw new WhepError(res.status, code, message);
  }
  const location = res.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: body });
  return {
    pc, channel, stream,
    send(msg) { if (channel.readyState === "open") channel.send(JSON.stringify(msg)); else throw new Error("not connected yet"); },
    async close() {
      pc.close();
      if (location) await fetch(location, { method: "DELETE", headers: auth }).catch(() => {});
    },
  };
}
