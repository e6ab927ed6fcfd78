// durable dashboard: auto-refresh of the instances list (state in the URL: refresh=1).
"use strict";
(function () {
  var box = document.getElementById("auto-refresh");
  if (!box) { return; }
  var url = new URL(window.location.href);
  if (url.searchParams.get("refresh") === "1") {
    box.checked = true;
    window.setTimeout(function () { window.location.reload(); }, 5000);
  }
  box.addEventListener("change", function () {
    var next = new URL(window.location.href);
    if (box.checked) { next.searchParams.set("refresh", "1"); } else { next.searchParams.delete("refresh"); }
    next.searchParams.delete("flash");
    next.searchParams.delete("msg");
    window.location.assign(next.toString());
  });
})();
