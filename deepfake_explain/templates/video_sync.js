(function () {  // the annotated video: its duration on the body once known (a test reads it), the current frame's label under it
  var v = document.getElementById("annotated"), lb = document.getElementById("vlabel"), f = VIDEO.labels;
  v.addEventListener("loadedmetadata", function () { document.body.setAttribute("data-video-duration", v.duration); });
  function show() { lb.textContent = f[Math.min(f.length - 1, Math.floor(v.currentTime * VIDEO.fps + 1e-6))] + " (" + f.length + " sampled frames)"; }
  v.addEventListener("timeupdate", show); v.addEventListener("seeked", show); show();
})();
