// Haven console: keeps the progress of running jobs current. Every second it reads
// /api/jobs (the running and waiting jobs, as JSON) and updates every job row marked
// data-active; on /jobs it also adds rows for jobs that started since the page was
// rendered. No library, no inline script (the content security policy allows only
// this file), and text is set with textContent, never as HTML.
(function () {
  "use strict";
  var tables = document.querySelectorAll("table.jobs");
  if (!tables.length) {
    return;
  }
  var UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  var refreshes = 0;

  function bytes(count) {
    var value = count;
    var unit = 0;
    while (value >= 1024 && unit < UNITS.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? count + " B" : value.toFixed(1) + " " + UNITS[unit];
  }

  function progressText(job) {
    return bytes(job.bytes_done) + " of " + bytes(job.bytes_total) + ", " +
      bytes(job.bytes_per_second) + "/s";
  }

  function time(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + "Z";
  }

  function addCell(row, text) {
    var cell = document.createElement("td");
    cell.textContent = text;
    row.appendChild(cell);
    return cell;
  }

  // A row like the server's (pages/jobs.rs, job_rows).
  function newRow(job) {
    var row = document.createElement("tr");
    row.dataset.job = job.id;
    row.dataset.active = "";
    addCell(row, job.id);
    addCell(row, job.kind);
    var vm = addCell(row, "");
    if (job.vm) {
      var link = document.createElement("a");
      link.href = "/vm/" + encodeURIComponent(job.vm);
      link.textContent = job.vm;
      vm.appendChild(link);
    }
    addCell(row, job.phase).className = "state s-" + job.state;
    addCell(row, job.worker);
    var cell = addCell(row, "");
    cell.className = "progress";
    cell.appendChild(document.createElement("progress"));
    cell.appendChild(document.createTextNode(" "));
    var done = document.createElement("span");
    done.className = "done";
    cell.appendChild(done);
    addCell(row, time(job.created_unix_ms));
    addCell(row, "");
    return row;
  }

  function update(row, job) {
    var state = row.querySelector("td.state");
    if (state) {
      state.textContent = job.phase;
      state.className = "state s-" + job.state;
    }
    var worker = row.children[4];
    if (worker) {
      worker.textContent = job.worker;
    }
    var bar = row.querySelector("progress");
    if (bar) {
      bar.max = Math.max(1, job.bytes_total);
      bar.value = job.bytes_done;
    }
    var done = row.querySelector("span.done");
    if (done) {
      done.textContent = progressText(job);
    }
  }

  function apply(data) {
    var byId = {};
    data.jobs.forEach(function (job) { byId[job.id] = job; });
    var ended = false;
    document.querySelectorAll("tr[data-active]").forEach(function (row) {
      var job = byId[row.dataset.job];
      if (job) {
        update(row, job);
        return;
      }
      ended = true;
      delete row.dataset.active;
      row.classList.add("ended");
      var state = row.querySelector("td.state");
      if (state) {
        state.textContent = "ended";
      }
    });
    var live = document.querySelector("#live-jobs tbody");
    if (live) {
      data.jobs.forEach(function (job) {
        if (!live.querySelector("tr[data-job=\"" + CSS.escape(job.id) + "\"]")) {
          var row = newRow(job);
          update(row, job);
          live.insertBefore(row, live.firstChild);
        }
      });
    } else if (ended) {
      // A VM's page: a job of it ended, show its new snapshot and result.
      window.location.reload();
      return;
    }
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
  }

  function refresh() {
    fetch("/api/jobs", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(apply)
      .catch(function (error) {
        document.body.dataset.refreshError = String(error);
      })
      .then(function () { window.setTimeout(refresh, 1000); });
  }

  window.setTimeout(refresh, 1000);
}());
