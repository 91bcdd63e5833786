// Filter the alert list by analytic and host; a panel link opens its evidence.
(function () {
  var analytic = document.getElementById("f-analytic");
  var host = document.getElementById("f-host");
  var count = document.getElementById("f-count");
  var table = document.getElementById("alert-table");
  if (!analytic || !table) { return; }
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  function apply() {
    var a = analytic.value, h = host.value.trim(), shown = 0;
    rows.forEach(function (row) {
      var ok = (!a || row.dataset.analytic === a) &&
               (!h || row.dataset.hosts.split(" ").some(function (x) { return x.indexOf(h) === 0; }));
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " alerts shown";
  }
  analytic.addEventListener("change", apply);
  host.addEventListener("input", apply);
  function openTarget() {
    var target = location.hash && document.getElementById(location.hash.slice(1));
    var details = target && target.querySelector("details");
    if (details) { details.open = true; }
  }
  window.addEventListener("hashchange", openTarget);
  apply();
  openTarget();
})();
