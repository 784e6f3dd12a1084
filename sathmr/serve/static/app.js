// The try-it page of `sathmr serve`: upload an image to /v1/infer, show the overlay, the people in 3D
// (the answer's GLB in <model-viewer>, served from the npm package by the server) and their scores.
const $ = (id) => document.getElementById(id);
let viewerReady = false;
let lastUrl = null;

function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message;
}

function bytesOf(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

async function loadModelInfo() {
  const info = await (await fetch("/v1/models")).json();
  $("model").textContent = `${info.model} · ${info.backend} on ${info.device} · ${info.precision} · ` +
    `config ${info.config} · sathmr ${info.version} · batches of up to ${info.max_batch_size}` +
    (info.embedded ? " · embedded default (synthetic mannequins, not a model of real people)" : "");
  $("threshold").value = info.default_threshold;
  if (info.viewer) {
    await import("/viewer/model-viewer.min.js");
    viewerReady = true;
  } else {
    $("viewer-caption").textContent = "3D view unavailable: start the server with --install-viewer (needs npm)";
  }
}

function showPeople(body) {
  const rows = body.people.map((p, i) => {
    const box = p.box_xyxy.map((v) => v.toFixed(1)).join(", ");
    return `<tr><td>${i}</td><td>${p.score.toFixed(3)}</td><td>${box}</td><td>${p.smpl.transl[2].toFixed(2)}</td></tr>`;
  });
  $("people").querySelector("tbody").innerHTML = rows.join("");
  const t = body.tokens;
  $("tokens").textContent = `${body.num_people} people above ${body.threshold} · tokens: ` +
    `${t.level0} high-res, ${t.level1} level 1, ${t.level2} level 2` +
    (t.sat_overflow ? ` (${t.sat_overflow} SAT cells over the budget)` : "");
}

function show3d(mesh) {
  const slot = $("viewer-slot");
  if (!viewerReady || !mesh) return Promise.resolve();
  if (lastUrl) URL.revokeObjectURL(lastUrl);
  lastUrl = URL.createObjectURL(new Blob([bytesOf(mesh.data)], { type: "model/gltf-binary" }));
  let viewer = slot.querySelector("model-viewer");
  if (!viewer) {
    viewer = document.createElement("model-viewer");
    viewer.id = "viewer";
    viewer.setAttribute("camera-controls", "");
    viewer.setAttribute("shadow-intensity", "0.5");
    viewer.setAttribute("alt", "the detected people as meshes");
    slot.appendChild(viewer);
  }
  return new Promise((resolve) => {
    viewer.addEventListener("load", () => resolve(), { once: true });
    viewer.addEventListener("error", () => resolve(), { once: true });
    viewer.src = lastUrl;
  });
}

async function run(file) {
  if (!file) return;
  setState("busy", `running on ${file.name}…`);
  const form = new FormData();
  form.append("image", file, file.name);
  const query = new URLSearchParams({ mesh: "glb", overlay: "png" });
  if ($("threshold").value !== "") query.set("threshold", $("threshold").value);
  const t0 = performance.now();
  let response, body;
  try {
    response = await fetch(`/v1/infer?${query}`, { method: "POST", body: form });
    body = await response.json();
  } catch (err) {
    setState("error", `request failed: ${err}`);
    return;
  }
  if (!response.ok) {
    setState("error", `error ${response.status}: ${body.error}`);
    return;
  }
  $("results").hidden = false;
  $("overlay").src = `data:image/png;base64,${body.overlay.data}`;
  showPeople(body);
  const { mesh, overlay, ...rest } = body;
  $("json").textContent = JSON.stringify(rest, null, 1);
  await show3d(mesh);
  const ms = performance.now() - t0;
  setState("done", `${file.name}: ${body.num_people} people in ${ms.toFixed(0)} ms ` +
    `(batch of ${response.headers.get("x-sathmr-batch-size")})`);
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  run(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => run(e.target.files[0]));
loadModelInfo().catch((err) => setState("error", `cannot reach the server: ${err}`));
