// The location trail as an SVG polyline scaled to its bounding box (no map tiles):
// north up, longitude scaled by cos(latitude) so distances keep their proportions.
import type { LatLng } from "./gen/securenow/v1/common_pb";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 320;
const HEIGHT = 200;
const PAD = 16;

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  return el;
}

/**
 * Longitudes made continuous along the trail: each step takes the short way round, so
 * a walk over the antimeridian (179.99 -> -179.99) is 0.02 degrees, not 359.98. The
 * result may leave [-180, 180]; it is only used for distances and drawing.
 */
function unwrappedLongitudes(points: LatLng[]): number[] {
  const out: number[] = [];
  for (const p of points) {
    if (out.length === 0) {
      out.push(p.longitude);
      continue;
    }
    const previous = out[out.length - 1];
    const step = ((((p.longitude - previous + 180) % 360) + 360) % 360) - 180; // in [-180, 180)
    out.push(previous + step);
  }
  return out;
}

/** Meters spanned by the trail's bounding box (for the caption). */
function spanMeters(points: LatLng[], lngs: number[]): number {
  const lats = points.map((p) => p.latitude);
  const midLat = ((Math.min(...lats) + Math.max(...lats)) / 2) * (Math.PI / 180);
  const dy = (Math.max(...lats) - Math.min(...lats)) * 111_320;
  const dx = (Math.max(...lngs) - Math.min(...lngs)) * 111_320 * Math.cos(midLat);
  return Math.hypot(dx, dy);
}

export function trailSvg(points: LatLng[]): SVGSVGElement {
  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "trail",
    role: "img",
    "data-testid": "trail",
    "data-points": points.length,
  });
  root.appendChild(svg("rect", { x: 0, y: 0, width: WIDTH, height: HEIGHT, class: "trail-bg" }));
  const title = svg("title", {});
  root.appendChild(title);
  if (points.length === 0) {
    title.textContent = "No location yet";
    const text = svg("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "trail-empty" });
    text.textContent = "No location yet";
    root.appendChild(text);
    return root;
  }
  const lats = points.map((p) => p.latitude);
  const lngs = unwrappedLongitudes(points);
  const minLat = Math.min(...lats);
  const maxLat = Math.max(...lats);
  const minLng = Math.min(...lngs);
  const maxLng = Math.max(...lngs);
  const cos = Math.cos((((minLat + maxLat) / 2) * Math.PI) / 180) || 1;
  const spanX = (maxLng - minLng) * cos;
  const spanY = maxLat - minLat;
  // One scale for both axes; a single point (zero span) sits in the middle.
  const scale = Math.min(
    spanX > 0 ? (WIDTH - 2 * PAD) / spanX : Infinity,
    spanY > 0 ? (HEIGHT - 2 * PAD) / spanY : Infinity,
  );
  const k = Number.isFinite(scale) ? scale : 0;
  const offX = (WIDTH - spanX * k) / 2;
  const offY = (HEIGHT - spanY * k) / 2;
  const xy = points.map((p, i) => [offX + (lngs[i] - minLng) * cos * k, offY + (maxLat - p.latitude) * k] as const);

  root.appendChild(
    svg("polyline", {
      points: xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "),
      class: "trail-line",
      fill: "none",
    }),
  );
  const [sx, sy] = xy[0];
  const [ex, ey] = xy[xy.length - 1];
  root.appendChild(svg("circle", { cx: sx, cy: sy, r: 4, class: "trail-start" }));
  root.appendChild(svg("circle", { cx: ex, cy: ey, r: 6, class: "trail-now" }));
  const last = points[points.length - 1];
  title.textContent =
    `${points.length} fix${points.length === 1 ? "" : "es"}, spanning about ${Math.round(spanMeters(points, lngs))} m; ` +
    `latest ${last.latitude.toFixed(5)}, ${last.longitude.toFixed(5)}`;
  return root;
}
