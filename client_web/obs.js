// Chromeless page for an OBS Browser Source: the avatar only, over a transparent page, with the
// stage's delayed audio (enable "Control audio via OBS" in the source's properties).
//
// URL parameters:
//   width, height   size in px of the avatar (default 512 x 512)
//   audio=0         video only (when OBS captures the microphone itself: enter the speaker
//                   page's "audio offset" as the microphone's Sync Offset)
//   bg=RRGGBB       a solid page colour (e.g. 00ff00 for a chroma key) and the plain video
//   alpha=0         the plain video (with the avatar's own background) on the transparent page
// By default the server sends the colour and an alpha matte side by side in one video frame
// and a WebGL shader puts them back together into a transparent canvas: real transparency
// (WebRTC itself carries no alpha).
import { subscribe } from "/static/whep.js";

const q = new URLSearchParams(location.search);
const stageId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const width = Math.max(16, Math.min(3840, parseInt(q.get("width") || "512", 10) || 512));
const height = Math.max(16, Math.min(2160, parseInt(q.get("height") || "512", 10) || 512));
const audio = q.get("audio") !== "0";
const bg = q.get("bg");
const solid = bg && /^[0-9a-fA-F]{6}$/.test(bg);
if (solid) document.body.style.background = `#${bg}`;
const alpha = !solid && q.get("alpha") !== "0";
const token = q.get("token") || "";  // the OBS link's viewer token, when the server requires one

const video = document.createElement("video");
Object.assign(video, { autoplay: true, playsInline: true, muted: !audio });
const obs = { state: "connecting", stage: stageId, audio, alpha, width, height, error: null, framesDrawn: 0 };
window.avatarObs = obs;

function setupMatte() {
  // colour on the left half, alpha (grey) on the right half of each decoded frame
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  document.body.appendChild(canvas);
  const gl = canvas.getContext("webgl", { premultipliedAlpha: true, alpha: true });
  if (!gl) { obs.error = { message: "WebGL is not available: showing the plain video" }; return null; }
  const vs = `attribute vec2 p; varying vec2 uv; void main() { uv = vec2((p.x + 1.0) * 0.5, (1.0 - p.y) * 0.5); gl_Position = vec4(p, 0.0, 1.0); }`;
  const fs = `precision mediump float; varying vec2 uv; uniform sampler2D t;
    void main() {
      vec3 rgb = texture2D(t, vec2(uv.x * 0.5, uv.y)).rgb;          // premultiplied colour
      float a = texture2D(t, vec2(0.5 + uv.x * 0.5, uv.y)).r;       // the matte
      a = clamp((a - 0.02) / 0.96, 0.0, 1.0);                        // codec noise at 0 and 1
      gl_FragColor = vec4(min(rgb, vec3(a)), a);
    }`;
  const prog = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, src);
    gl.compileShader(sh);
    gl.attachShader(prog, sh);
  }
  gl.linkProgram(prog);
  gl.useProgram(prog);
  const buf = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, buf);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
  const loc = gl.getAttribLocation(prog, "p");
  gl.enableVertexAttribArray(loc);
  gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, tex);
  for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
    [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]]) gl.texParameteri(gl.TEXTURE_2D, k, v);
  gl.clearColor(0, 0, 0, 0);
  const draw = () => {
    if (video.videoWidth) {
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, video);
      gl.viewport(0, 0, width, height);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
      obs.framesDrawn += 1;
    }
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(draw); else requestAnimationFrame(draw);
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(draw); else requestAnimationFrame(draw);
  return canvas;
}

if (!alpha || !setupMatte()) {
  Object.assign(video, { width, height });
  video.style.objectFit = "contain";
  document.body.appendChild(video);
} else {
  // the video element plays (and sounds) off-screen; the canvas shows it
  Object.assign(video.style, { position: "absolute", width: "1px", height: "1px", opacity: "0", pointerEvents: "none" });
  document.body.appendChild(video);
}

let ended = false;
async function connect() {
  try {
    const sub = await subscribe(stageId, {
      audio, alpha, token,
      onTrack: (s) => { video.srcObject = s; video.play().catch(() => {}); },
      onEvent: (m) => { if (m.type === "ended") { ended = true; obs.state = "ended"; sub.close(); } },
      onState: (st) => {
        if (st === "connected") obs.state = "live";
        if ((st === "failed" || st === "disconnected") && !ended) { sub.close(); setTimeout(connect, 1000); }
      },
    });
  } catch (e) {
    obs.error = { status: e.status ?? null, message: e.message };
    if (e.status === 410) { ended = true; obs.state = "ended"; return; }
    obs.state = "waiting";
    setTimeout(connect, 2000);  // the stage is not live yet, or the server restarts
  }
}
connect();
