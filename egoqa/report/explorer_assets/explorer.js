/* egoqa run explorer. data/index.js calls EGOQA.index(data); opening a card's turns loads
   data/clip-N.js, which calls EGOQA.clip(N, detail). Plain scripts (no modules, no fetch):
   the page works from file://. Item fields: c clip number, a annotation_uid, x query_idx,
   q text, t type, p template, k cluster, g ground truth [s, e], st graded job's state,
   o outcome, u top-1 tIoU, w ranked windows, n other samples' windows, j job id per turn,
   e error, r unparsed response, cmp per compared run {o, ok, u, w}. */
(function () {
  "use strict";
  var PAGE_SIZE = 25;
  var D = null;
  var view = [];
  var page = 0;
  var clipDetail = {};
  var clipWaiting = {};

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function $(id) { return document.getElementById(id); }
  function secs(t) { return (Math.round(t * 10) / 10).toFixed(1) + " s"; }
  function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"; }
  /* a rate with its 95 % interval, where the report gives one: "7.7% [1.4–33.3]" */
  function rate(s, key) {
    var span = s.intervals && s.intervals[key];
    if (!span) return pct(s[key]);
    return pct(s[key]) + " [" + (100 * span[0]).toFixed(1) + "–" + (100 * span[1]).toFixed(1) + "]";
  }
  function iou(v) { return v === null || v === undefined ? "–" : v.toFixed(2); }

  /* --- summary ----------------------------------------------------------------------------- */

  function renderSummary() {
    var s = D.summary;
    /* the headline: over every query of the file as exported (the official script's number),
       the enqueued-only number beside it; cards, filters and breakdowns are the enqueued */
    var head = D.headline ? D.headline : "R@1 IoU>0.3 " + rate(s, "r1_03");
    $("generated").textContent = head + " · " + s.n + " enqueued queries: " + s.done +
      " done, " + s.failed + " failed, " + s.pending + " pending · coverage " +
      rate(s, "coverage") + " · mean predicted length " + pct(s.pred_length) + " of the clip" +
      " (95 % intervals) · written " + D.generated + " by egoqa " + D.version;
    if (D.oracle && D.oracle.length) $("title").after(el("p", "oracle-note", oracleText()));
    if (s.pending) {
      var note = $("pending-note");
      note.hidden = false;
      note.textContent = "This run is still working: " + s.pending + " of " + s.n +
        " queries are pending (their cards say so). Write the explorer again to update it.";
    }
    var box = $("tables");
    D.tables.forEach(function (t) { box.appendChild(table(t[0], t[1], t[2])); });
    D.charts.forEach(function (src) {
      var img = el("img");
      img.src = src;
      img.alt = src;
      $("charts").appendChild(img);
    });
  }

  function table(title, columns, rows) {
    var t = el("table");
    t.appendChild(el("caption", null, title));
    var head = el("tr");
    columns.forEach(function (c) { head.appendChild(el("th", null, c)); });
    t.appendChild(head);
    rows.forEach(function (r) {
      var tr = el("tr");
      r.forEach(function (v) { tr.appendChild(el("td", null, v === null ? "" : v)); });
      t.appendChild(tr);
    });
    return t;
  }

  /* --- filters ----------------------------------------------------------------------------- */

  function options(id, values, label) {
    var sel = $(id);
    sel.appendChild(new Option("all", ""));
    values.forEach(function (v) { sel.appendChild(new Option(label ? label(v) : v, v)); });
    sel.addEventListener("change", refilter);
  }

  function distinct(key) {
    var seen = {};
    D.items.forEach(function (it) { if (it[key] !== null) seen[it[key]] = 1; });
    return Object.keys(seen).sort();
  }

  function setupFilters() {
    options("f-outcome", distinct("o"));
    options("f-type", distinct("t"));
    options("f-template", distinct("p"));
    options("f-cluster", distinct("k"));
    options("f-clip", D.clips.map(function (c, n) { return String(n); }),
      function (n) { return D.clips[+n][0]; });
    if (D.compare.length) {
      $("f-right-label").hidden = false;
      var runs = [D.run].concat(D.compare);
      options("f-right", ["all", "none"].concat(runs.map(function (r) { return "only:" + r; })));
    }
    $("search").addEventListener("input", refilter);
    $("sort").addEventListener("change", refilter);
    $("prev").addEventListener("click", function () { go(page - 1); });
    $("next").addEventListener("click", function () { go(page + 1); });
  }

  function rights(it) {
    var out = [it.o === "covered"];
    (it.cmp || []).forEach(function (c) { out.push(!!(c && c.o === "covered")); });
    return out;
  }

  function passesRight(it, want) {
    if (!want) return true;
    var r = rights(it);
    if (want === "all") return r.every(Boolean);
    if (want === "none") return !r.some(Boolean);
    var runs = [D.run].concat(D.compare);
    var i = runs.indexOf(want.slice(5));
    return r.every(function (ok, n) { return ok === (n === i); });
  }

  function refilter() {
    var f = {
      o: $("f-outcome").value, t: $("f-type").value, p: $("f-template").value,
      k: $("f-cluster").value, c: $("f-clip").value,
    };
    var right = D.compare.length ? $("f-right").value : "";
    var needle = $("search").value.trim().toLowerCase();
    view = [];
    D.items.forEach(function (it, i) {
      if (f.o && it.o !== f.o) return;
      if (f.t && it.t !== f.t) return;
      if (f.p && it.p !== f.p) return;
      if (f.k && it.k !== f.k) return;
      if (f.c && String(it.c) !== f.c) return;
      if (needle && it.q.toLowerCase().indexOf(needle) < 0) return;
      if (!passesRight(it, right)) return;
      view.push(i);
    });
    var sort = $("sort").value;
    if (sort) {
      var sign = sort === "iou-asc" ? 1 : -1;
      view.sort(function (a, b) {
        var ua = D.items[a].u, ub = D.items[b].u;
        if (ua === null && ub === null) return a - b;
        if (ua === null) return 1;
        if (ub === null) return -1;
        return sign * (ua - ub) || a - b;
      });
    }
    go(0);
  }

  function go(p) {
    var pages = Math.max(1, Math.ceil(view.length / PAGE_SIZE));
    page = Math.min(Math.max(0, p), pages - 1);
    var from = page * PAGE_SIZE, to = Math.min(view.length, from + PAGE_SIZE);
    $("count").textContent = view.length ? "showing " + (from + 1) + "–" + to + " of " +
      view.length + " matching (" + D.items.length + " in all) · page " + (page + 1) +
      " of " + pages : "no query matches (" + D.items.length + " in all)";
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
    var box = $("cards");
    box.textContent = "";
    view.slice(from, to).forEach(function (i) { box.appendChild(card(D.items[i], i)); });
  }

  function oracleText() {
    return "Oracle zoom in " + D.oracle.join(", ") + ": the ground truth chose each window, " +
      "so its scores are an upper bound, not a result.";
  }

  /* --- cards ------------------------------------------------------------------------------- */

  var PROBLEM = {
    pending: "pending: the graded turn has not run yet (job state ",
    unscored: "finished but not scored yet: run egoqa report --rescore",
  };

  function card(it, i) {
    var clip = D.clips[it.c];
    var node = el("article", "card o-" + it.o);
    node.dataset.item = i;
    var h = el("h3");
    h.appendChild(el("span", "badge outcome", it.o.replace("_", " ")));
    h.appendChild(el("span", "q", it.q));
    node.appendChild(h);
    var meta = [it.t, it.p, it.k ? "cluster " + it.k : null, clip[0] + " / " + it.a + " #" + it.x,
      "tIoU " + iou(it.u), it.g ? "truth " + secs(it.g[0]) + "–" + secs(it.g[1]) : "no truth",
      "clip " + secs(clip[1])];
    node.appendChild(el("div", "meta", meta.filter(Boolean).join(" · ")));
    if (D.oracle && D.oracle.length) node.appendChild(el("div", "oracle-note", oracleText()));
    if (it.o === "covered" && it.u === 0) {
      node.appendChild(el("div", "note", "covered by a lower-ranked segment: the top-ranked " +
        "one misses the truth (tIoU 0.00)"));
    }
    problem(node, it);
    if (it.zl) node.appendChild(zoomLine(it));
    node.appendChild(timeline(D.run, clip[1], it.g, it.w, it.n || [], "main", it.zf));
    (it.cmp || []).forEach(function (c, n) {
      var row = timeline(D.compare[n], clip[1], it.g, c ? c.w : [], [], "compare");
      if (!c) row.querySelector(".tl-end").textContent = "not in run";
      else if (c.o === "no_segment") row.querySelector(".tl-end").textContent = "no segment";
      node.appendChild(row);
    });
    if (it.cmp) node.appendChild(rightLine(it));
    node.appendChild(turns(it));
    return node;
  }

  function problem(node, it) {
    if (it.e) node.appendChild(el("div", "problem failed", "failed — " + it.e));
    else if (it.o === "pending") {
      node.appendChild(el("div", "problem pending", PROBLEM.pending + it.st + ")"));
    } else if (it.o === "unscored") node.appendChild(el("div", "problem pending", PROBLEM.unscored));
    else if (it.o === "no_segment") {
      node.appendChild(el("div", "problem", "no segment could be parsed from the answer:"));
      node.appendChild(el("pre", "problem", it.r));
    }
  }

  function zoomLine(it) {
    var steps = it.zl.map(function (l) {
      return secs(l.w[0]) + "–" + secs(l.w[1]) +
        (l.c ? " → shot " + secs(l.c[0]) + "–" + secs(l.c[1]) : "");
    });
    var last = it.zl.length ? it.zl[it.zl.length - 1] : null;
    var end = it.zf ? (last && last.r ? " · stopped: " + last.r.replace(/_/g, " ") : " · reached the target")
      : " · still zooming";
    return el("div", "zoom-line", "zoom (" + it.zl.length + " level" +
      (it.zl.length === 1 ? "" : "s") + "): " + steps.join(" ⟶ ") + end);
  }

  function timeline(label, duration, gt, windows, samples, kind, zoomed) {
    var row = el("div", "tl " + kind);
    if (D.oracle && D.oracle.indexOf(label) >= 0) label += " (oracle)";
    row.appendChild(el("div", "tl-label", label));
    var bar = el("div", "tl-bar");
    if (zoomed) bar.appendChild(mark("zoomed", zoomed, duration, "final zoom window"));
    if (gt) bar.appendChild(mark("gt", gt, duration, "ground truth"));
    windows.forEach(function (w, r) {
      var m = mark("pred" + (r ? " rank-low" : ""), w, duration, "prediction #" + (r + 1));
      m.dataset.rank = r + 1;
      m.textContent = r + 1;
      bar.appendChild(m);
    });
    samples.forEach(function (ws, s) {
      ws.forEach(function (w) { bar.appendChild(mark("sample", w, duration, "sample " + (s + 2))); });
    });
    row.appendChild(bar);
    row.appendChild(el("div", "tl-end", secs(duration)));
    return row;
  }

  function mark(kind, w, duration, what) {
    var m = el("div", "mark " + kind);
    var d = duration > 0 ? duration : 1;
    m.style.left = (100 * Math.max(0, w[0]) / d) + "%";
    m.style.width = (100 * Math.max(0, Math.min(w[1], d) - Math.max(0, w[0])) / d) + "%";
    m.dataset.start = w[0];
    m.dataset.end = w[1];
    m.title = what + ": " + secs(w[0]) + "–" + secs(w[1]);
    return m;
  }

  function rightLine(it) {
    var line = el("div", "runs-right", "right (truth inside a window): ");
    var runs = [D.run].concat(D.compare);
    rights(it).forEach(function (ok, n) {
      line.appendChild(el("span", ok ? "ok" : "no", (ok ? "✓ " : "✗ ") + runs[n] + "  "));
    });
    return line;
  }

  /* --- turns (loaded per clip on demand) ---------------------------------------------------- */

  function turns(it) {
    var box = el("details", "turns");
    box.appendChild(el("summary", null, "turns (" + it.j.length +
      "): frames shown, prompts and every sampled response"));
    var body = el("div", "turns-body", "loading…");
    box.appendChild(body);
    box.addEventListener("toggle", function () {
      if (!box.open || box.dataset.loaded) return;
      box.dataset.loaded = "1";
      loadClip(it.c, function (detail) { renderTurns(body, it, detail); });
    });
    return box;
  }

  function loadClip(n, done) {
    if (clipDetail[n]) return done(clipDetail[n]);
    if (clipWaiting[n]) return clipWaiting[n].push(done);
    clipWaiting[n] = [done];
    var s = document.createElement("script");
    s.src = "data/clip-" + n + ".js";
    document.body.appendChild(s);
  }

  function renderTurns(body, it, detail) {
    body.textContent = "";
    if (detail.note) body.appendChild(el("div", "note", detail.note));
    it.j.forEach(function (id, n) {
      var job = detail.jobs[String(id)];
      if (job) body.appendChild(turn(job, n));
    });
  }

  function turn(job, n) {
    var sec = el("section", "turn");
    var head = (n + 1) + ". " + job.turn + " — " + job.state +
      (job.finish_reason ? " (finish: " + job.finish_reason + ")" : "");
    sec.appendChild(el("h4", null, head));
    if (job.error) sec.appendChild(el("div", "problem", (job.error_kind || "error") + ": " + job.error));
    if (job.f) sec.appendChild(frames(job));
    if (job.fnote) sec.appendChild(el("div", "note", job.fnote));
    fold(sec, "prompt", job.prompt);
    fold(sec, "response (the one kept)", job.response);
    if (job.responses && job.responses.length > 1) {
      var all = el("details");
      all.appendChild(el("summary", null, "all " + job.responses.length + " sampled responses"));
      job.responses.forEach(function (r, i) { all.appendChild(el("pre", null, (i + 1) + ". " + r)); });
      sec.appendChild(all);
    }
    return sec;
  }

  function frames(job) {
    var box = el("div");
    if (job.f.length < job.of) {
      box.appendChild(el("div", "note", job.f.length + " of the " + job.of + " frames shown"));
    }
    var strip = el("div", "frames");
    job.f.forEach(function (f) {
      var fig = el("figure");
      var img = el("img");
      img.src = f[1];
      img.alt = "frame at " + secs(f[0]);
      img.loading = "lazy";
      fig.appendChild(img);
      fig.appendChild(el("figcaption", null, secs(f[0])));
      strip.appendChild(fig);
    });
    box.appendChild(strip);
    return box;
  }

  function fold(parent, title, text) {
    if (text === null || text === undefined) return;
    var d = el("details");
    d.appendChild(el("summary", null, title));
    d.appendChild(el("pre", null, text));
    parent.appendChild(d);
  }

  window.EGOQA = {
    index: function (data) {
      D = data;
      renderSummary();
      setupFilters();
      refilter();
      document.body.dataset.ready = "1";
      document.body.dataset.readyMs = String(Math.round(performance.now()));  // for bench/
    },
    clip: function (n, detail) {
      clipDetail[n] = detail;
      (clipWaiting[n] || []).forEach(function (f) { f(detail); });
      delete clipWaiting[n];
    },
    state: function () { return { view: view.slice(), page: page, pageSize: PAGE_SIZE }; },
  };
})();
