window.addEventListener("load", function () {  // how many images the browser shows: data-images="loaded/total" on the body
  var i = Array.from(document.images);
  document.body.setAttribute("data-images", i.filter(function (m) { return m.complete && m.naturalWidth > 0; }).length + "/" + i.length);
});
