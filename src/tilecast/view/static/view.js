// The tilecast map page: layers from /config.json, a legend, an opacity slider and the values under the cursor.
"use strict";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawLegend(layers) {
  const box = document.getElementById("legend");
  box.replaceChildren();
  layers.forEach((layer) => {
    const legend = layer.legend || {};
    if (legend.kind === "classes") {
      box.appendChild(el("div", {class: "legend-title"}, layer.name));
      legend.items.forEach((item) => {
        const row = el("div", {class: "row legend-item", "data-value": item.value});
        row.appendChild(el("span", {class: "swatch", style: "background:" + item.color}));
        row.appendChild(el("span", {}, item.name));
        box.appendChild(row);
      });
    } else if (legend.kind === "range") {
      box.appendChild(el("div", {class: "legend-title"}, (legend.label || layer.name) + " (" + legend.colormap + ")"));
      box.appendChild(el("div", {class: "ramp", style: "background: linear-gradient(to right, " + legend.stops.join(", ") + ")"}));
      const labels = el("div", {class: "ramp-labels"});
      const fmt = (v) => (v === null || v === undefined ? "from data" : Number(v).toPrecision(3));
      labels.appendChild(el("span", {}, fmt(legend.min)));
      labels.appendChild(el("span", {}, fmt(legend.max)));
      box.appendChild(labels);
    }
  });
}

function describe(values) {
  const lines = [];
  Object.entries(values).forEach(([key, v]) => {
    if (v === null) return;
    if (v.computed === false) { lines.push(key + ": not computed yet"); return; }
    const shown = (v.values || []).map((x, i) => (v.bands ? v.bands[i] + "=" : "") + (x === null ? "nodata" : +x.toPrecision(6)));
    lines.push(key + ": " + (v["class"] ? v["class"] + " (" + shown.join(", ") + ")" : shown.join(", ")));
  });
  return lines.length ? lines.join("\n") : "no data here";
}

// A range taken from data settles with the first tile computed: until then the legend says "from data".
function unsettled(layers) {
  return layers.some((l) => l.legend && l.legend.kind === "range" && (l.legend.min === null || l.legend.min === undefined));
}

// Tiles that failed (the model, or reading the input): the server keeps the last errors; say what they were.
function showErrors(stats) {
  const box = document.getElementById("errors");
  const messages = [...new Set((stats.errors || []).map((e) => e.error))];
  if (!messages.length) return;
  box.replaceChildren(el("div", {class: "errors-title"}, "Some tiles failed:"));
  messages.slice(-3).forEach((m) => box.appendChild(el("div", {}, m)));
  box.hidden = false;
}

async function main() {
  const config = await (await fetch("config.json")).json();
  document.getElementById("title").textContent = config.title;
  document.title = config.title + " - tilecast view";
  const [w, s, e, n] = config.bounds;
  const map = L.map("map", {zoomControl: true, attributionControl: false, maxZoom: 24});
  map.fitBounds([[s, w], [n, e]]);
  if (config.basemap) L.tileLayer(config.basemap, {maxZoom: 24}).addTo(map);
  const opacity = document.getElementById("opacity");
  const overlays = [];
  let errorCheck = null;
  const onTileError = () => {
    if (errorCheck) return;
    errorCheck = setTimeout(async () => {
      errorCheck = null;
      showErrors(await (await fetch("stats.json")).json());
    }, 250);
  };
  const onLoad = async () => {
    if (!unsettled(config.layers)) return;
    const fresh = await (await fetch("config.json")).json();
    config.layers.forEach((l, i) => { l.legend = fresh.layers[i].legend; });
    drawLegend(config.layers);
  };
  const tilejsons = await Promise.all(config.layers.map(async (l) => (await fetch(l.tilejson)).json()));
  // the input below the prediction: add in reverse order
  config.layers.slice().reverse().forEach((layer) => {
    const tj = tilejsons[config.layers.indexOf(layer)];
    const options = {maxNativeZoom: tj.maxzoom, maxZoom: 24, tileSize: 256,
                     bounds: [[tj.bounds[1], tj.bounds[0]], [tj.bounds[3], tj.bounds[2]]]};
    // No minZoom: below a guarded layer's minzoom the page still asks, and the server answers from blocks
    // already computed, or with a "zoom in to predict" tile; it never fans out into model calls.
    const tiles = L.tileLayer(tj.tiles[0], options);
    tiles.on("tileerror", onTileError);
    tiles.on("load", onLoad);
    tiles.addTo(map);
    if (layer === config.layers[0]) { tiles.setOpacity(opacity.value / 100); overlays.push(tiles); }
    const box = el("label", {class: "row"});
    const check = el("input", {type: "checkbox"});
    check.checked = true;
    check.addEventListener("change", () => (check.checked ? tiles.addTo(map) : tiles.remove()));
    box.appendChild(check);
    box.appendChild(el("span", {}, layer.name));
    document.getElementById("layers").prepend(box);
  });
  opacity.addEventListener("input", () => overlays.forEach((t) => t.setOpacity(opacity.value / 100)));
  drawLegend(config.layers);
  (config.notes || []).forEach((note) => document.getElementById("panel").appendChild(el("div", {class: "note"}, note)));
  const guarded = config.layers.filter((l) => l.guarded);
  const guard = document.getElementById("guard");
  const checkZoom = () => {
    const low = guarded.filter((l) => map.getZoom() < l.minzoom);
    guard.hidden = low.length === 0;
    if (low.length) {
      guard.textContent = "Zoom in to predict (zoom " + low[0].minzoom + " or more; now " + map.getZoom() +
        "). Zoomed out, the map shows only what is already computed.";
    }
  };
  map.on("zoomend", checkZoom);
  checkZoom();
  const value = document.getElementById("value");
  let pending = null;
  map.on("mousemove", (ev) => {
    if (pending) clearTimeout(pending);
    pending = setTimeout(async () => {
      const r = await fetch("point?lon=" + ev.latlng.lng + "&lat=" + ev.latlng.lat);
      value.textContent = describe(await r.json());
    }, 80);
  });
  window.tilecastMap = map;
  document.body.setAttribute("data-ready", "1");
}

main().catch((err) => {
  document.getElementById("title").textContent = "tilecast: " + err;
});
