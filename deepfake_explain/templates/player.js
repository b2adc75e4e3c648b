(function () {  // the annotated frames: previous, play / pause, next
  var f = PLAYER.frames, i = 0, t = null, im = document.getElementById("player"), lb = document.getElementById("plabel");
  function show(k) { i = (k + f.length) % f.length; im.src = f[i][1]; lb.textContent = f[i][0] + " (" + (i + 1) + "/" + f.length + ")"; }
  document.getElementById("prev").onclick = function () { show(i - 1); };
  document.getElementById("next").onclick = function () { show(i + 1); };
  document.getElementById("play").onclick = function () {
    if (t) { clearInterval(t); t = null; } else { t = setInterval(function () { show(i + 1); }, PLAYER.interval_ms); }
  };
  show(0);
})();
