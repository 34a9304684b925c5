"""The one web page: no build step, no external fonts or scripts (it works offline)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cardiomegaly</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #f6f6f6; color: #1b1b1b; }
.banner { background: #8a1c1c; color: #fff; padding: 10px 20px; font-weight: 600; }
main { max-width: 900px; margin: 0 auto; padding: 20px; }
#drop { border: 3px dashed #888; border-radius: 8px; padding: 28px; text-align: center;
        background: #fff; }
#drop.over { border-color: #1a5fb4; background: #eef4ff; }
#drop:focus-within { outline: 3px solid #1a5fb4; }
label.button { display: inline-block; background: #1a5fb4; color: #fff; padding: 8px 16px;
               border-radius: 4px; cursor: pointer; }
input[type=file] { position: absolute; opacity: 0; width: 1px; height: 1px; }
#result { margin-top: 20px; display: none; }
#overlay, #ctr-overlay { max-width: 100%; border: 1px solid #ccc; background: #000; }
.bar { position: relative; height: 28px; background: #ddd; border-radius: 4px; margin: 8px 0; }
.fill { height: 100%; background: #1a5fb4; border-radius: 4px; }
.threshold { position: absolute; top: -4px; bottom: -4px; width: 3px; background: #000; }
#error { color: #a01010; font-weight: 600; }
</style></head>
<body>
<div class="banner" role="note">Research use only. Not a medical device; not for diagnosis.</div>
<main>
<h1>Cardiomegaly on a chest X-ray</h1>
<p>Choose or drop one frontal chest film (PNG, JPEG or DICOM). It is scored in memory and not
stored. <a href="/v1/model">Model card</a> &middot; <a href="/docs">API</a></p>
<div id="drop">
  <label class="button" for="file">Choose an image</label>
  <input id="file" type="file"
         accept=".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom">
  <p>or drop it here</p>
</div>
<p id="view-choice" hidden><label for="view">View of a PNG or JPEG film, for the heart
  measurement (a DICOM film says its own):</label>
  <select id="view"><option value="">not known</option><option>PA</option><option>AP</option>
  </select></p>
<p id="error" role="alert"></p>
<section id="result" aria-live="polite">
  <p id="verdict" style="font-size:1.3em"></p>
  <div class="bar" aria-hidden="true"><div class="fill" id="fill"></div>
       <div class="threshold" id="mark" title="threshold"></div></div>
  <p id="numbers"></p>
  <p id="ctr" style="font-size:1.15em"></p>
  <img id="overlay" alt="the radiograph with the Grad-CAM heatmap over it">
  <img id="ctr-overlay" alt="the radiograph with the heart and lung outlines and both diameters">
</section>
</main>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("file");
const error = document.getElementById("error");
async function send(file) {
  error.textContent = ""; document.getElementById("verdict").textContent = "Scoring...";
  document.getElementById("result").style.display = "block";
  const form = new FormData(); form.append("file", file);
  let response;
  const view = document.getElementById("view").value;
  const url = "/v1/predict?cam=1" + (view ? "&view=" + view : "");
  try { response = await fetch(url, {method: "POST", body: form}); }
  catch (e) { error.textContent = "The server cannot be reached."; return; }
  const body = await response.json();
  if (!response.ok) {
    document.getElementById("result").style.display = "none";
    error.textContent = body.detail || ("Error " + response.status); return;
  }
  const p = body.probability, t = body.threshold;
  document.getElementById("verdict").textContent =
    (body.label === 1 ? "Cardiomegaly suggested" : "No cardiomegaly suggested") +
    ": probability " + p.toFixed(3);
  document.getElementById("fill").style.width = (100 * p).toFixed(1) + "%";
  document.getElementById("mark").style.left = (100 * t).toFixed(1) + "%";
  document.getElementById("numbers").textContent = "threshold " + t.toFixed(3) +
    " (chosen on the " + body.model.threshold_chosen_on + ") \\u00b7 " + body.model.name +
    " \\u00b7 " + body.inference_ms + " ms";
  document.getElementById("overlay").src = "data:image/png;base64," + body.cam_png_base64;
  const ctr = document.getElementById("ctr"), drawing = document.getElementById("ctr-overlay");
  ctr.textContent = ""; drawing.style.display = "none";
  if (body.ctr) {
    ctr.textContent = body.ctr.value === null
      ? "Cardiothoracic ratio: not measured (" + body.ctr.quality + ")"
      : "Cardiothoracic ratio " + body.ctr.value.toFixed(2) +
        (body.ctr.value > 0.5 ? " (over 0.5)" : " (0.5 or less)") +
        (body.ctr.note ? " \u00b7 " + body.ctr.note : "");
    if (body.combined && body.combined.score !== null) {
      ctr.textContent += " \u00b7 combined score " + body.combined.score.toFixed(3) +
        (body.combined.label === 1 ? " (at or above " : " (below ") +
        body.combined.threshold.toFixed(3) + "; probability and ratio ranked among " +
        body.combined.ranked_among + " films of the training cross-validation)";
    }
    if (body.ctr_png_base64) {
      drawing.src = "data:image/png;base64," + body.ctr_png_base64; drawing.style.display = "";
    }
  }
}
fetch("/v1/model").then(r => r.json()).then(card => {
  if (card.ctr_model) document.getElementById("view-choice").hidden = false;
}).catch(() => {});
input.addEventListener("change", () => { if (input.files.length) send(input.files[0]); });
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
</script>
</body></html>
"""
