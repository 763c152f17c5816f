// avat3r rig viewer: a linear Gaussian rig (neutral + Σ code·delta) drawn with WebGL2, one slider per
// expression parameter, playback of an embedded expression sequence.
//
// Why our own renderer: the well-kept npm splat libraries (GaussianSplats3D, gsplat.js, three.js's
// GaussianSplat) treat a splat scene as static data with at most one transform per scene; rewriting every
// splat each frame means private fields or a full reload, and none follows gsplat's conventions (pinhole K,
// 0.3 px² dilation, alpha clamp 0.999, 1/255 skip) that let a test hold this page to avat3r's own renderer.
// A rig rewrites every splat on every slider move, so the page applies the rig, sorts and draws itself.
//
// Conventions (avat3r DESIGN §2, gsplat): OpenCV cameras (x right, y down, z forward), K in pixels with pixel
// centres at +0.5, world-to-camera w2c; EWA projection with the Jacobian's x/z, y/z clamped to 1.3× the field
// of view; 0.3 px² added to the 2D covariance; alpha = min(0.999, o·exp(−σ)), skipped below 1/255;
// back-to-front depth sort every frame and premultiplied "over" compositing on black.
"use strict";

(function () {
  const DATA = JSON.parse(document.getElementById("avat3r-data").textContent);
  const P = 14; // rig columns: x y z, r g b, opacity logit, 3 log scales, qw qx qy qz
  const NEAR = 0.01, ALPHA_MIN = 1 / 255;

  // -- data ----------------------------------------------------------------------------------------
  function bytesOf(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function halfToFloat(h) { // IEEE 754 binary16 → number
    const e = (h >> 10) & 31, m = h & 1023, s = h & 32768 ? -1 : 1;
    if (e === 0) return s * m * Math.pow(2, -24);
    if (e === 31) return m ? NaN : s * Infinity;
    return s * (1 + m / 1024) * Math.pow(2, e - 15);
  }
  function decodeDeltas(b64, dtype) {
    const bytes = bytesOf(b64);
    if (dtype === "float32") return new Float32Array(bytes.buffer);
    const halves = new Uint16Array(bytes.buffer), table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) table[h] = halfToFloat(h);
    const out = new Float32Array(halves.length);
    for (let i = 0; i < halves.length; i++) out[i] = table[halves[i]];
    return out;
  }
  const N = DATA.count, E = DATA.names.length;
  const base = new Float32Array(bytesOf(DATA.base).buffer);
  const deltas = decodeDeltas(DATA.deltas, DATA.deltas_dtype);
  const params = new Float32Array(N * P);
  const code = Float32Array.from(DATA.neutral);

  // -- the rig: params = base + Σ_k (code_k − neutral_k)·delta_k (zero weights skipped) ----------------
  function applyRig() {
    params.set(base);
    for (let k = 0; k < E; k++) {
      const w = code[k] - DATA.neutral[k];
      if (w === 0) continue;
      const off = k * N * P;
      for (let j = 0; j < N * P; j++) params[j] += w * deltas[off + j];
    }
  }

  // -- WebGL2 ----------------------------------------------------------------------------------------
  const canvas = document.getElementById("view");
  const gl = canvas.getContext("webgl2", {alpha: false, antialias: false, premultipliedAlpha: true,
                                          preserveDrawingBuffer: true});
  if (!gl) { document.getElementById("stats").textContent = "WebGL2 is not available"; return; }
  const VS = `#version 300 es
precision highp float;
layout(location = 0) in vec2 corner;
layout(location = 1) in vec3 center;
layout(location = 2) in vec4 quat;      // wxyz, unit
layout(location = 3) in vec3 scale;     // linear
layout(location = 4) in vec4 colorOpacity;
uniform mat3 R; uniform vec3 T; uniform vec4 intr; uniform vec2 size;
out vec3 vColor; out float vOpacity; out vec3 vConic; out vec2 vMean;
void main() {
  vec3 p = R * center + T;
  float o = colorOpacity.w;
  gl_Position = vec4(0.0, 0.0, 2.0, 1.0); // culled: outside the clip volume
  if (p.z <= ${NEAR} || o < ${ALPHA_MIN}) return;
  float w = quat.x, x = quat.y, y = quat.z, z = quat.w;
  mat3 Rq = transpose(mat3(1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
                           2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
                           2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)));
  mat3 M = Rq * mat3(scale.x, 0.0, 0.0, 0.0, scale.y, 0.0, 0.0, 0.0, scale.z);
  mat3 C = R * (M * transpose(M)) * transpose(R);
  float fx = intr.x, fy = intr.y, cx = intr.z, cy = intr.w;
  float tanx = 0.5 * size.x / fx, tany = 0.5 * size.y / fy;
  float tx = p.z * min((size.x - cx) / fx + 0.3 * tanx, max(-(cx / fx + 0.3 * tanx), p.x / p.z));
  float ty = p.z * min((size.y - cy) / fy + 0.3 * tany, max(-(cy / fy + 0.3 * tany), p.y / p.z));
  vec3 j0 = vec3(fx / p.z, 0.0, -fx * tx / (p.z * p.z));
  vec3 j1 = vec3(0.0, fy / p.z, -fy * ty / (p.z * p.z));
  float a = dot(j0, C * j0) + 0.3, b = dot(j0, C * j1), c = dot(j1, C * j1) + 0.3;
  float det = a * c - b * b;
  if (det <= 0.0) return;
  vConic = vec3(c, -b, a) / det;
  vMean = vec2(fx * p.x / p.z + cx, fy * p.y / p.z + cy);
  float extend = min(sqrt(2.0 * log(o / ${ALPHA_MIN})), 3.33);
  vec2 radius = ceil(extend * sqrt(vec2(a, c)));
  vec2 pix = vMean + corner * radius;
  vColor = colorOpacity.rgb; vOpacity = o;
  gl_Position = vec4(2.0 * pix.x / size.x - 1.0, 1.0 - 2.0 * pix.y / size.y, 0.0, 1.0);
}`;
  const FS = `#version 300 es
precision highp float;
in vec3 vColor; in float vOpacity; in vec3 vConic; in vec2 vMean;
uniform vec2 size;
out vec4 frag;
void main() {
  vec2 d = vMean - vec2(gl_FragCoord.x, size.y - gl_FragCoord.y); // image rows run down
  float sigma = 0.5 * (vConic.x * d.x * d.x + vConic.z * d.y * d.y) + vConic.y * d.x * d.y;
  if (sigma < 0.0) discard;
  float alpha = min(0.999, vOpacity * exp(-sigma));
  if (alpha < ${ALPHA_MIN}) discard;
  frag = vec4(vColor * alpha, alpha); // premultiplied
}`;
  function shader(type, src) {
    const s = gl.createShader(type);
    gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  }
  const prog = gl.createProgram();
  gl.attachShader(prog, shader(gl.VERTEX_SHADER, VS));
  gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, FS));
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
  gl.useProgram(prog);
  const U = {};
  for (const name of ["R", "T", "intr", "size"]) U[name] = gl.getUniformLocation(prog, name);

  const vao = gl.createVertexArray();
  gl.bindVertexArray(vao);
  gl.bindBuffer(gl.ARRAY_BUFFER, gl.createBuffer());
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
  gl.enableVertexAttribArray(0);
  gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
  const instances = new Float32Array(N * P); // per splat: centre 3, quat 4, scale 3, colour 3, opacity 1
  const instanceBuffer = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, instanceBuffer);
  gl.bufferData(gl.ARRAY_BUFFER, instances.byteLength, gl.DYNAMIC_DRAW);
  [[1, 3, 0], [2, 4, 3], [3, 3, 7], [4, 4, 10]].forEach(([loc, n, off]) => {
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, n, gl.FLOAT, false, P * 4, off * 4);
    gl.vertexAttribDivisor(loc, 1);
  });
  gl.enable(gl.BLEND);
  gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA); // "over", back to front, premultiplied
  gl.disable(gl.DEPTH_TEST);

  // -- camera: OpenCV K and w2c; orbit controls rebuild w2c with avat3r's look_at ----------------------
  const cam = {K: DATA.camera.K, w2c: DATA.camera.w2c, width: DATA.camera.width, height: DATA.camera.height};
  const orbit = {az: 0, el: 0, radius: DATA.camera.radius};
  function lookAt(eye) { // rows x, y, z of the camera in world coordinates (cameras.look_at)
    const norm = (v) => { const l = Math.hypot(v[0], v[1], v[2]); return v.map((c) => c / l); };
    const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
    const z = norm(eye.map((c) => -c)), x = norm(cross(z, [0, 1, 0])), y = cross(z, x);
    const t = [x, y, z].map((r) => -(r[0] * eye[0] + r[1] * eye[1] + r[2] * eye[2]));
    return [[...x, t[0]], [...y, t[1]], [...z, t[2]], [0, 0, 0, 1]];
  }
  function orbitCamera() {
    const {az, el, radius} = orbit;
    cam.w2c = lookAt([radius * Math.cos(el) * Math.sin(az), radius * Math.sin(el),
                      radius * Math.cos(el) * Math.cos(az)]);
    dirty = true;
  }
  function resize(width, height) {
    canvas.width = width; canvas.height = height;
    canvas.style.width = width + "px"; canvas.style.height = height + "px";
  }

  // -- per frame: rig, depth sort (radix on the float bits), upload, draw ------------------------------
  const depthKeys = new Uint32Array(N), depthF = new Float32Array(depthKeys.buffer);
  let order = new Uint32Array(N), scratch = new Uint32Array(N);
  let rigDirty = true, dirty = true;
  const sigmoid = (v) => 1 / (1 + Math.exp(-v));

  function sortBackToFront() { // visible splats, far to near; returns their count
    const R = cam.w2c;
    let n = 0;
    for (let i = 0; i < N; i++) {
      const o = i * P, z = R[2][0] * params[o] + R[2][1] * params[o + 1] + R[2][2] * params[o + 2] + R[2][3];
      if (z <= NEAR) continue;
      depthF[n] = z; order[n++] = i; // positive floats sort like their bits
    }
    const keys = depthKeys.slice(0, n);
    const counts = new Uint32Array(256);
    for (let shift = 0; shift < 32; shift += 8) {
      counts.fill(0);
      for (let i = 0; i < n; i++) counts[255 - ((keys[i] >>> shift) & 255)]++; // descending
      for (let b = 1; b < 256; b++) counts[b] += counts[b - 1];
      const keysOut = new Uint32Array(n);
      for (let i = n - 1; i >= 0; i--) {
        const slot = --counts[255 - ((keys[i] >>> shift) & 255)];
        scratch[slot] = order[i]; keysOut[slot] = keys[i];
      }
      [order, scratch] = [scratch, order];
      keys.set(keysOut);
    }
    return n;
  }

  function fillInstances(n) {
    for (let s = 0; s < n; s++) {
      const i = order[s] * P, o = s * P;
      instances[o] = params[i]; instances[o + 1] = params[i + 1]; instances[o + 2] = params[i + 2];
      const qw = params[i + 10], qx = params[i + 11], qy = params[i + 12], qz = params[i + 13];
      const ql = Math.hypot(qw, qx, qy, qz) || 1;
      instances[o + 3] = qw / ql; instances[o + 4] = qx / ql; instances[o + 5] = qy / ql; instances[o + 6] = qz / ql;
      instances[o + 7] = Math.exp(params[i + 7]); instances[o + 8] = Math.exp(params[i + 8]);
      instances[o + 9] = Math.exp(params[i + 9]);
      for (let c = 0; c < 3; c++) instances[o + 10 + c] = Math.min(1, Math.max(0, params[i + 3 + c]));
      instances[o + 13] = sigmoid(params[i + 6]);
    }
  }

  const pixel = new Uint8Array(4);
  const stats = {rig_ms: 0, sort_ms: 0, draw_ms: 0, count: 0};
  function renderOnce() {
    const t0 = performance.now();
    if (rigDirty) { applyRig(); rigDirty = false; }
    const t1 = performance.now();
    const n = sortBackToFront();
    const t2 = performance.now();
    fillInstances(n);
    if (canvas.width !== cam.width || canvas.height !== cam.height) resize(cam.width, cam.height);
    gl.viewport(0, 0, cam.width, cam.height);
    gl.clearColor(0, 0, 0, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    const W = cam.w2c, K = cam.K;
    gl.uniformMatrix3fv(U.R, true, [W[0][0], W[0][1], W[0][2], W[1][0], W[1][1], W[1][2], W[2][0], W[2][1], W[2][2]]);
    gl.uniform3f(U.T, W[0][3], W[1][3], W[2][3]);
    gl.uniform4f(U.intr, K[0][0], K[1][1], K[0][2], K[1][2]);
    gl.uniform2f(U.size, cam.width, cam.height);
    gl.bindBuffer(gl.ARRAY_BUFFER, instanceBuffer);
    gl.bufferSubData(gl.ARRAY_BUFFER, 0, instances, 0, n * P);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, n);
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel); // waits for the draw: honest draw time
    const t3 = performance.now();
    Object.assign(stats, {rig_ms: t1 - t0, sort_ms: t2 - t1, draw_ms: t3 - t2, count: n});
    document.getElementById("stats").textContent =
      `${n} splats · sort ${stats.sort_ms.toFixed(1)} ms · draw ${stats.draw_ms.toFixed(1)} ms · ` +
      `rig ${stats.rig_ms.toFixed(1)} ms`;
    dirty = false;
    return Object.assign({}, stats);
  }

  // -- controls --------------------------------------------------------------------------------------
  const sliders = [];
  function setCode(values) {
    for (let k = 0; k < E; k++) {
      code[k] = values[k];
      sliders[k].value = values[k];
      sliders[k].nextSibling.textContent = Number(values[k]).toFixed(2);
    }
    rigDirty = dirty = true;
  }
  const panel = document.getElementById("sliders");
  DATA.names.forEach((name, k) => {
    const row = document.createElement("label"), input = document.createElement("input");
    const value = document.createElement("span");
    input.type = "range"; input.min = DATA.ranges[k][0]; input.max = DATA.ranges[k][1]; input.step = 0.01;
    input.value = DATA.neutral[k];
    value.textContent = Number(DATA.neutral[k]).toFixed(2);
    input.addEventListener("input", () => {
      stopPlayback();
      code[k] = parseFloat(input.value); value.textContent = code[k].toFixed(2);
      rigDirty = dirty = true;
    });
    row.append(name + " ", input, value);
    panel.appendChild(row);
    sliders.push(input);
  });
  document.getElementById("reset").addEventListener("click", () => { stopPlayback(); setCode(DATA.neutral); });

  let dragging = null;
  canvas.addEventListener("pointerdown", (e) => { dragging = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointerup", () => { dragging = null; });
  canvas.addEventListener("pointermove", (e) => {
    if (!dragging) return;
    orbit.az -= (e.clientX - dragging[0]) * 0.01;
    orbit.el = Math.max(-1.5, Math.min(1.5, orbit.el + (e.clientY - dragging[1]) * 0.01));
    dragging = [e.clientX, e.clientY];
    orbitCamera();
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    orbit.radius = Math.max(0.2, Math.min(5, orbit.radius * Math.exp(e.deltaY * 0.001)));
    orbitCamera();
  }, {passive: false});

  // playback of the embedded sequence at its frame rate
  const seq = DATA.sequence, playButton = document.getElementById("play");
  let playing = null;
  function stopPlayback() { playing = null; playButton.textContent = "Play"; }
  if (!seq) playButton.disabled = true;
  playButton.addEventListener("click", () => {
    if (playing) { stopPlayback(); return; }
    playing = {start: performance.now()}; playButton.textContent = "Stop";
  });

  function loop() {
    if (playing) {
      const frame = Math.floor((performance.now() - playing.start) / 1000 * seq.fps) % seq.codes.length;
      if (frame !== playing.frame) { playing.frame = frame; setCode(seq.codes[frame]); }
    }
    if (dirty) renderOnce();
    requestAnimationFrame(loop);
  }

  // -- test and benchmark hook -----------------------------------------------------------------------
  window.avat3r = {
    names: DATA.names, count: N,
    setCode(values) { stopPlayback(); setCode(values); },
    setCamera(K, w2c, width, height) { Object.assign(cam, {K, w2c, width, height}); dirty = true; },
    renderOnce,
    bench(frames) { // every frame re-applies the rig and turns the camera: a full sort + draw each time
      const out = [];
      for (let f = 0; f < frames; f++) {
        const c = DATA.neutral.map((v, k) => v + (DATA.ranges[k][1] - v) * 0.5 * (1 + Math.sin(f * 0.3 + k)));
        setCode(c);
        orbit.az = 0.6 * Math.sin(f * 0.1); orbitCamera();
        const t = performance.now(), s = renderOnce();
        s.total_ms = performance.now() - t;
        out.push(s);
      }
      return out;
    },
  };
  resize(cam.width, cam.height);
  renderOnce();
  window.avat3r.ready = true;
  requestAnimationFrame(loop);
})();
