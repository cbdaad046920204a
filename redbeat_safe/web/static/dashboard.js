// Live countdowns for <span class="countdown" data-ms="...">: the next run's time,
// on the Redis server's clock (body data-now is the server's time at render).
(function () {
  "use strict";
  var now = Number(document.body.dataset.now || Date.now());
  var offset = now - Date.now();
  function words(ms) {
    var s = Math.round(Math.abs(ms) / 1000);
    var text = s < 120 ? s + "s" : s < 7200 ? Math.round(s / 60) + "m" : (s / 3600).toFixed(1) + "h";
    return ms >= 0 ? "in " + text : text + " ago";
  }
  function tick() {
    var t = Date.now() + offset;
    var all = document.querySelectorAll(".countdown");
    for (var i = 0; i < all.length; i++) {
      var ms = Number(all[i].dataset.ms) - t;
      all[i].textContent = "(" + words(ms) + ")";
      all[i].classList.toggle("due", ms < 0);
    }
  }
  tick();
  setInterval(tick, 1000);
})();
