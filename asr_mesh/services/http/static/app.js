// Live captions and file upload for the asr-mesh HTTP service. No build step, no dependencies.
"use strict";

const TARGET_RATE = 16000;
const SEND_SAMPLES = 1600; // 100 ms per WebSocket message
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- microphone → WebSocket

class Downsampler {
  // Box-filter resampling from the audio context's rate to 16 kHz, s16le out.
  constructor(inputRate) { this.ratio = inputRate / TARGET_RATE; this.pos = 0; this.carry = new Float32Array(0); }
  push(frame) {
    const data = new Float32Array(this.carry.length + frame.length);
    data.set(this.carry); data.set(frame, this.carry.length);
    const out = [];
    let pos = this.pos;
    while (pos + this.ratio <= data.length) {
      const start = Math.floor(pos), end = Math.floor(pos + this.ratio);
      let sum = 0;
      for (let i = start; i < end; i++) sum += data[i];
      const v = Math.max(-1, Math.min(1, sum / Math.max(1, end - start)));
      out.push(v < 0 ? v * 0x8000 : v * 0x7fff);
      pos += this.ratio;
    }
    const keep = Math.floor(pos);
    this.carry = data.slice(keep);
    this.pos = pos - keep;
    return Int16Array.from(out);
  }
}

const live = { ws: null, ctx: null, stream: null, node: null, recorder: null, pending: [], pendingLen: 0,
               sentSamples: 0, sendTimes: [], started: 0, interim: "" };

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const token = $("token").value.trim();
  return `${proto}://${location.host}${location.pathname.replace(/[^/]*$/, "")}v1/stream` +
         (token ? `?token=${encodeURIComponent(token)}` : "");
}

function setStatus(text) { $("status").textContent = text; }

function sendPcm(samples) {
  live.pending.push(samples); live.pendingLen += samples.length;
  if (live.pendingLen < SEND_SAMPLES) return;
  const joined = new Int16Array(live.pendingLen);
  let offset = 0;
  for (const part of live.pending) { joined.set(part, offset); offset += part.length; }
  live.pending = []; live.pendingLen = 0;
  if (live.ws && live.ws.readyState === WebSocket.OPEN) {
    live.ws.send(joined.buffer);
    live.sentSamples += joined.length;
    live.sendTimes.push([live.sentSamples / TARGET_RATE, performance.now()]);
  }
}

function latencyFor(endSeconds) {
  // Time since the audio up to `endSeconds` left the browser.
  for (const [audioS, t] of live.sendTimes) if (audioS >= endSeconds) return (performance.now() - t) / 1000;
  return null;
}

function fmtTime(s) { const m = Math.floor(s / 60); return `${m}:${(s % 60).toFixed(1).padStart(4, "0")}`; }

function showFinal(msg) {
  if (!msg.text) return;
  const line = document.createElement("p");
  line.className = "final";
  const time = document.createElement("span");
  time.className = "time"; time.textContent = fmtTime(msg.start);
  line.appendChild(time);
  if (msg.speaker) {
    const who = document.createElement("span");
    who.className = "speaker"; who.textContent = msg.speaker + ":";
    line.appendChild(who);
  }
  line.appendChild(document.createTextNode(msg.text));
  $("finals").appendChild(line);
  $("interim").textContent = "";
  const latency = latencyFor(msg.end);
  if (latency !== null) $("latency").textContent = `${latency.toFixed(2)} s`;
}

window.asrEvents = []; // every message received, for debugging and the browser test

function onMessage(event) {
  const msg = JSON.parse(event.data);
  window.asrEvents.push(msg);
  if (msg.type === "interim") { $("interim").textContent = msg.text; }
  else if (msg.type === "final") { showFinal(msg); }
  else if (msg.type === "ready") { setStatus("Listening…"); }
  else if (msg.type === "summary") { setStatus(`Done: ${msg.final_count} captions, ${msg.audio_duration.toFixed(1)} s of audio.`); }
  else if (msg.type === "error") { setStatus(`Error ${msg.status}: ${msg.message}`); }
}

async function startMic() {
  $("start").disabled = true;
  setStatus("Asking for the microphone…");
  try {
    // No echo cancellation, noise suppression or gain control: they smear speech for the recogniser.
    live.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false,
                                                                       noiseSuppression: false, autoGainControl: false } });
  } catch (err) {
    setStatus(`No microphone: ${err.message}`); $("start").disabled = false; return;
  }
  const encoding = $("encoding").value;
  live.sentSamples = 0; live.sendTimes = []; live.pending = []; live.pendingLen = 0;
  live.ws = new WebSocket(wsUrl());
  live.ws.binaryType = "arraybuffer";
  live.ws.onmessage = onMessage;
  live.ws.onclose = () => { if ($("status").textContent.startsWith("Listening")) setStatus("Connection closed."); stopAudio(); $("start").disabled = false; $("stop").disabled = true; };
  await new Promise((resolve, reject) => { live.ws.onopen = resolve; live.ws.onerror = reject; });
  live.ws.send(JSON.stringify({ encoding, sample_rate: TARGET_RATE, language: $("language").value.trim() || "pt-BR",
                                profile: $("profile").value, interim_results: true }));
  if (encoding === "webm") { startRecorder(); } else { await startWorklet(); }
  $("stop").disabled = false;
}

function startRecorder() {
  // The browser compresses (Opus in WebM); the server decodes the stream with ffmpeg as it arrives.
  live.recorder = new MediaRecorder(live.stream, { mimeType: "audio/webm;codecs=opus" });
  live.started = performance.now();
  live.recorder.ondataavailable = (e) => {
    if (!e.data.size || !live.ws || live.ws.readyState !== WebSocket.OPEN) return;
    live.ws.send(e.data);
    live.sendTimes.push([(performance.now() - live.started) / 1000, performance.now()]);
  };
  live.recorder.onstop = () => { if (live.ws && live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ type: "stop" })); };
  live.recorder.start(250); // a piece every 250 ms
}

async function startWorklet() {
  live.ctx = new AudioContext();
  const down = new Downsampler(live.ctx.sampleRate);
  const source = live.ctx.createMediaStreamSource(live.stream);
  const onFrame = (frame) => sendPcm(down.push(frame));
  if (live.ctx.audioWorklet) {
    await live.ctx.audioWorklet.addModule("pcm-worklet.js");
    live.node = new AudioWorkletNode(live.ctx, "pcm-capture");
    live.node.port.onmessage = (e) => onFrame(e.data);
  } else { // older browsers
    live.node = live.ctx.createScriptProcessor(4096, 1, 1);
    live.node.onaudioprocess = (e) => onFrame(e.inputBuffer.getChannelData(0));
  }
  source.connect(live.node);
  live.node.connect(live.ctx.destination); // keeps the graph pulling; the worklet outputs silence
}

function stopAudio() {
  if (live.recorder) { if (live.recorder.state !== "inactive") live.recorder.stop(); live.recorder = null; }
  if (live.node) { live.node.disconnect(); live.node = null; }
  if (live.stream) { live.stream.getTracks().forEach((t) => t.stop()); live.stream = null; }
  if (live.ctx) { live.ctx.close(); live.ctx = null; }
}

function stopMic() {
  $("stop").disabled = true;
  const recording = live.recorder !== null; // its onstop sends "stop" after the last piece
  stopAudio();
  if (live.ws && live.ws.readyState === WebSocket.OPEN) {
    if (!recording) live.ws.send(JSON.stringify({ type: "stop" }));
    setStatus("Finishing…");
  }
}

$("start").addEventListener("click", startMic);
$("stop").addEventListener("click", stopMic);

// ---------------------------------------------------------------- file → job → downloads

function authHeaders(xhr) {
  const token = $("token").value.trim();
  if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
}

function fileStatus(text) { $("file-status").textContent = text; }

async function getJson(url) {
  const token = $("token").value.trim();
  const response = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function uploadFile(file) {
  $("downloads").innerHTML = ""; $("file-text").textContent = "";
  $("upload-progress").value = 0; $("job-progress").value = 0;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("language", $("language").value.trim() || "pt-BR");
  if ($("diarize").checked) form.append("diarize", "true");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "v1/jobs");
  authHeaders(xhr);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) $("upload-progress").value = Math.round(100 * e.loaded / e.total); };
  xhr.onload = () => {
    const body = JSON.parse(xhr.responseText || "{}");
    if (xhr.status !== 202) { fileStatus(`Error ${xhr.status}: ${body.error ? body.error.message : xhr.statusText}`); return; }
    $("upload-progress").value = 100;
    fileStatus(`Uploaded; job ${body.id} ${body.state}.`);
    pollJob(body.id);
  };
  xhr.onerror = () => fileStatus("Upload failed (network).");
  xhr.send(form);
  fileStatus(`Uploading ${file.name}…`);
}

async function pollJob(id) {
  let job;
  try { job = await getJson(`v1/jobs/${id}`); } catch (err) { fileStatus(`Error: ${err.message}`); return; }
  $("job-progress").value = Math.round(100 * job.progress);
  if (job.state === "queued" || job.state === "running") { fileStatus(`Job ${id}: ${job.state}…`); setTimeout(() => pollJob(id), 500); return; }
  if (job.state !== "succeeded") { fileStatus(`Job ${id} ${job.state}: ${job.error ? job.error.message : ""}`); return; }
  fileStatus(`Job ${id} finished.`);
  for (const [fmt, label] of [["srt", "SRT"], ["vtt", "VTT"], ["json", "JSON"]]) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `v1/jobs/${id}/result?format=${fmt}&download=true`;
    a.textContent = `Download ${label}`; a.id = `download-${fmt}`;
    a.setAttribute("download", "");
    li.appendChild(a); $("downloads").appendChild(li);
  }
  try { $("file-text").textContent = (await getJson(`v1/jobs/${id}/result?format=json`)).text; } catch (err) { /* links still work */ }
}

$("file").addEventListener("change", () => { if ($("file").files[0]) uploadFile($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) uploadFile(e.dataTransfer.files[0]); });
