document.querySelectorAll("th").forEach(function (th, c) {  // click a column header to sort by it (numbers by data-v)
  th.addEventListener("click", function () {
    var t = th.closest("table"), rs = Array.from(t.querySelectorAll("tr")).slice(1), d = th.dataset.d = th.dataset.d == "1" ? "-1" : "1";
    rs.sort(function (a, b) {
      var x = a.cells[c], y = b.cells[c];
      var u = x.dataset.v !== undefined ? parseFloat(x.dataset.v) - parseFloat(y.dataset.v) : x.textContent.localeCompare(y.textContent);
      return d * u;
    });
    rs.forEach(function (r) { t.appendChild(r); });
  });
});
