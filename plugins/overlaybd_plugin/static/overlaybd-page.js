/*
 * The overlaybd page of the Airflow UI (a react_apps plugin of airflow-provider-overlaybd).
 *
 * Airflow 3 loads this module and renders globalThis.AirflowPlugin inside its own layout, with its
 * React, Chakra UI (theme, light/dark mode) and router, which it exposes as globals: so this file
 * needs no build step and no copy of React. Data comes from ../overlaybd/api/conversions (same
 * origin, the UI's session cookie). Links to runs and task logs are router links to Airflow's pages.
 */
const React = globalThis.React;
const Chakra = globalThis.ChakraUI;
const Router = globalThis.ReactRouterDOM;
const h = React.createElement;
const { Badge, Box, Code, EmptyState, Flex, Heading, HStack, Link, SimpleGrid, Spinner, Table, Text, Tooltip, Portal } = Chakra;

const API = "overlaybd/api/conversions";
const REFRESH_MS = 30000;
const SAVED_HELP =
  "Build time avoided: for every layer a conversion reused instead of building it (found in the " +
  "dedup database, mounted from another repository, shared between platforms, or a whole manifest " +
  "served by the manifest cache), the build time that layer cost when it was built and recorded. " +
  "The sum of those recorded costs; never an estimate. 0 when a reused layer has no recorded cost.";
const BYTES_HELP = "Converted layer bytes that were reused instead of rebuilt and re-pushed.";

// -- formatting ---------------------------------------------------------------------------------
function bytes(n) {
  let value = Number(n) || 0;
  for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
    if (Math.abs(value) < 1024 || unit === "TiB") return unit === "B" ? `${value} B` : `${value.toFixed(1)} ${unit}`;
    value /= 1024;
  }
  return `${value.toFixed(1)} TiB`;
}

function seconds(s) {
  const v = Number(s) || 0;
  if (v < 60) return `${v.toFixed(1)} s`;
  const total = Math.round(v);
  const m = Math.floor(total / 60);
  if (m < 60) return `${m} min ${String(total % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

function short(digest, n = 12) {
  if (!digest) return "";
  const [algo, hex] = digest.includes(":") ? digest.split(":", 2) : ["", digest];
  return hex ? `${algo}:${hex.slice(0, n)}` : digest.slice(0, n);
}

function when(iso) {
  const text = (iso || "").replace("T", " ").slice(0, 19);
  return [text.slice(0, 10), text.slice(11)];
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const STATUS_LABEL = { success: "success", failed: "failed", up_for_retry: "up for retry", running: "running" };

// -- small building blocks ----------------------------------------------------------------------
function RouterLink({ to, children, ...rest }) {
  return h(Link, { asChild: true, color: "fg.info", ...rest }, h(Router.Link, { to }, children));
}

function UiLink({ path, children, ...rest }) {
  return path ? h(RouterLink, { to: `/${path}`, ...rest }, children) : h(Text, { as: "span", ...rest }, children);
}

function Mono(props) {
  return h(Text, { as: "span", fontFamily: "mono", fontSize: "xs", ...props });
}

function Wrapping(props) {
  return h(Box, { overflowWrap: "anywhere", wordBreak: "break-word", ...props });
}

function Hint({ label, text }) {
  return h(
    Tooltip.Root,
    { openDelay: 100, closeDelay: 100, positioning: { placement: "top" } },
    h(
      Tooltip.Trigger,
      { asChild: true },
      h(
        "span",
        {
          "aria-label": label,
          "data-testid": "hint",
          role: "img",
          tabIndex: 0,
          style: { cursor: "help", display: "inline-flex", verticalAlign: "middle", marginLeft: "4px" },
        },
        h(
          "svg",
          { width: 14, height: 14, viewBox: "0 0 16 16", fill: "none", stroke: "currentColor", strokeWidth: 1.5 },
          h("circle", { cx: 8, cy: 8, r: 6.5 }),
          h("path", { d: "M8 7.2v4", strokeLinecap: "round" }),
          h("circle", { cx: 8, cy: 4.9, r: 0.5, fill: "currentColor" }),
        ),
      ),
    ),
    h(
      Portal,
      null,
      h(Tooltip.Positioner, null, h(Tooltip.Content, { maxW: "sm", "data-testid": "hint-content" }, text)),
    ),
  );
}

function StateBadge({ status }) {
  return h(
    Badge,
    { colorPalette: status, variant: "solid", borderRadius: "full", px: 2, "data-testid": "status" },
    STATUS_LABEL[status] || status,
  );
}

function LayerBar({ reused, built }) {
  const total = reused + built || 1;
  return h(
    Flex,
    { h: "6px", w: "100px", mt: 1, borderRadius: "full", overflow: "hidden", bg: "bg.emphasized" },
    h(Box, { bg: "success.solid", w: `${(100 * reused) / total}%` }),
    h(Box, { bg: "brand.solid", w: `${(100 * built) / total}%` }),
  );
}

function Stat({ label, value, help, hint, testid, tone }) {
  return h(
    Box,
    { borderWidth: "1px", borderColor: "border", borderRadius: "md", px: 3, py: 2, bg: "bg", "data-testid": testid },
    h(
      Text,
      { fontSize: "xs", color: "fg.muted", fontWeight: "semibold", whiteSpace: "nowrap" },
      label,
      hint ? h(Hint, { label: `${label}: how it is computed`, text: hint }) : null,
    ),
    h(Text, { fontSize: "xl", fontWeight: "bold", color: tone || "fg" }, value),
    h(Text, { fontSize: "xs", color: "fg.muted" }, help),
  );
}

function TaskLinks({ row }) {
  const { links } = row;
  const task = row.task_id ? row.task_id + (row.map_index >= 0 ? ` [${row.map_index}]` : "") : "";
  return h(
    Wrapping,
    { fontSize: "xs" },
    h(Box, null, h(UiLink, { path: links.dag_run, fontFamily: "mono", "data-testid": "run-link" }, row.run_id || "—")),
    task
      ? h(
          Box,
          { color: "fg.muted" },
          h(UiLink, { path: links.task_instance, "data-testid": "task-link" }, `${task} log`),
          row.try_number > 0 ? ` · try ${row.try_number}` : "",
        )
      : null,
  );
}

function ErrorLine({ text }) {
  return h(
    Text,
    { fontSize: "sm", color: "fg.error", lineClamp: 3, title: text, "data-testid": "error-line", overflowWrap: "anywhere" },
    text || "(no error line recorded)",
  );
}

// -- sections -----------------------------------------------------------------------------------
function Stats({ totals }) {
  const layers = totals.layers_reused + totals.layers_built;
  const ratio = layers ? Math.round((100 * totals.layers_reused) / layers) : 0;
  return h(
    SimpleGrid,
    { minChildWidth: "160px", gap: 3, mb: 4 },
    h(Stat, { label: "Images", value: totals.images, help: plural(totals.conversions, "conversion"), testid: "stat-images" }),
    h(Stat, {
      label: "Failed",
      value: totals.failed,
      help: `${totals.retrying} retrying · ${totals.succeeded} succeeded`,
      tone: totals.failed ? "fg.error" : "fg",
      testid: "stat-failed",
    }),
    h(Stat, {
      label: "Layers reused",
      value: `${totals.layers_reused} / ${layers}`,
      help: `${ratio}% reused · ${totals.layers_built} built`,
    }),
    h(Stat, { label: "Bytes reused", value: bytes(totals.bytes_saved), help: "not rebuilt nor re-pushed", hint: BYTES_HELP }),
    h(Stat, {
      label: "Build time avoided",
      value: seconds(totals.seconds_saved),
      help: "recorded cost of reused layers",
      hint: SAVED_HELP,
      tone: totals.seconds_saved > 0 ? "fg.success" : "fg",
      testid: "stat-saved",
    }),
    h(Stat, {
      label: "Dedup database",
      value: plural(totals.dedup_layers, "layer"),
      help: `${bytes(totals.dedup_layer_bytes)} · ${plural(totals.dedup_manifests, "manifest")}`,
    }),
  );
}

function Failures({ rows }) {
  if (!rows.length) return null;
  return h(
    Box,
    { mb: 6, "data-testid": "failures" },
    h(Heading, { size: "md", mb: 2 }, `Failed and retrying conversions (${rows.length})`),
    h(
      Box,
      { borderWidth: "1px", borderColor: "border.error", borderRadius: "md", overflow: "hidden" },
      h(
        Table.Root,
        { size: "sm", tableLayout: "fixed", w: "100%" },
        h(
          Table.Header,
          null,
          h(
            Table.Row,
            { bg: "bg.muted" },
            h(Table.ColumnHeader, { w: "104px" }, "When (UTC)"),
            h(Table.ColumnHeader, { w: "110px" }, "Status"),
            h(Table.ColumnHeader, { w: "28%" }, "Image"),
            h(Table.ColumnHeader, null, "Error"),
            h(Table.ColumnHeader, { w: "22%" }, "Run / task log"),
          ),
        ),
        h(
          Table.Body,
          null,
          rows.map((r) =>
            h(
              Table.Row,
              { key: r.run_key, "data-testid": "failure-row" },
              h(Table.Cell, { verticalAlign: "top" }, h(Mono, null, when(r.recorded_at)[0]), h("br"), h(Mono, null, when(r.recorded_at)[1])),
              h(Table.Cell, { verticalAlign: "top" }, h(StateBadge, { status: r.status })),
              h(
                Table.Cell,
                { verticalAlign: "top" },
                h(
                  Wrapping,
                  null,
                  h(RouterLink, { to: `?image=${encodeURIComponent(r.source)}`, fontFamily: "mono", fontSize: "xs" }, r.source || "(unknown image)"),
                  r.target ? h(Box, { color: "fg.muted" }, h(Mono, null, `→ ${r.target}`)) : null,
                ),
              ),
              h(Table.Cell, { verticalAlign: "top" }, h(ErrorLine, { text: r.error })),
              h(Table.Cell, { verticalAlign: "top" }, h(TaskLinks, { row: r })),
            ),
          ),
        ),
      ),
    ),
  );
}

// the optional verify stage's result (overlaybd verify after push): its summary line on hover
function VerifyBadge({ verify: v }) {
  return h(
    Badge,
    { colorPalette: v.identical ? "success" : "red", variant: "subtle", size: "sm", title: v.summary, "data-testid": "verify-badge" },
    v.identical ? "verified" : `${v.differences} difference(s)`,
  );
}

function ConversionRow({ row: r }) {
  const [day, time] = when(r.recorded_at);
  const ok = r.status === "success";
  const platforms = (r.platforms || "").split(",").filter(Boolean);
  const cell = (props, ...children) => h(Table.Cell, { verticalAlign: "top", fontSize: "sm", ...props }, ...children);
  const outcome = ok
    ? [
        cell(
          { key: "layers" },
          `${r.layers_reused} reused / ${r.layers_built} built`,
          h(LayerBar, { reused: r.layers_reused, built: r.layers_built }),
        ),
        cell(
          { key: "sizes" },
          `${bytes(r.source_bytes)} → ${bytes(r.target_bytes)}`,
          r.meta_bytes != null
            ? h(Text, { color: "fg.muted", fontSize: "xs", "data-testid": "turbo-saved" },
                `TurboOCI meta ${bytes(r.meta_bytes)}, ${bytes(r.bytes_saved)} saved`)
            : null,
        ),
        cell(
          { key: "reused" },
          h(Text, { color: r.reused_bytes ? "fg.success" : "fg.muted", fontWeight: "semibold" }, bytes(r.reused_bytes)),
          h(Text, { color: "fg.muted", fontSize: "xs" }, seconds(r.seconds_saved)),
        ),
        cell({ key: "duration" }, seconds(r.seconds)),
      ]
    : [cell({ key: "error", colSpan: 4 }, h(ErrorLine, { text: r.error }))];
  return h(
    Table.Row,
    { "data-testid": "conversion-row", "data-status": r.status },
    cell({}, h(Mono, null, day), h("br"), h(Mono, null, time)),
    cell({}, h(StateBadge, { status: r.status })),
    cell(
      {},
      h(
        Wrapping,
        null,
        h(Mono, null, r.target || "—"),
        r.target_digest ? h(Box, null, h(Mono, { color: "fg.muted", title: r.target_digest }, short(r.target_digest))) : null,
        platforms.length || r.manifest_cached || r.verify || r.flatten || (r.format && r.format !== "overlaybd")
          ? h(
              Flex,
              { gap: 1, wrap: "wrap", mt: 1 },
              platforms.map((p) => h(Badge, { key: p, variant: "outline", size: "sm" }, p)),
              r.format && r.format !== "overlaybd"
                ? h(Badge, { colorPalette: "purple", variant: "subtle", size: "sm", "data-testid": "format" }, r.format)
                : null,
              r.manifest_cached ? h(Badge, { colorPalette: "success", variant: "subtle", size: "sm" }, "manifest cache") : null,
              r.verify ? h(VerifyBadge, { verify: r.verify }) : null,
              r.flatten
                ? h(
                    Badge,
                    { variant: "subtle", size: "sm", "data-testid": "flatten-badge", title: `${bytes(r.flatten.source_bytes)} → ${bytes(r.flatten.bytes)}` },
                    `flattened ${r.flatten.source_layers} → ${r.flatten.layers}`,
                  )
                : null,
            )
          : null,
      ),
    ),
    ...outcome,
    cell({}, h(TaskLinks, { row: r })),
  );
}

function ImageSection({ image }) {
  const rows = image.conversions;
  return h(
    Box,
    { borderWidth: "1px", borderColor: "border", borderRadius: "md", overflow: "hidden", mb: 4, "data-testid": "image" },
    h(
      Flex,
      { bg: "bg.muted", px: 3, py: 2, gap: 3, justify: "space-between", align: "center", wrap: "wrap" },
      h(
        Wrapping,
        { fontWeight: "semibold", fontFamily: "mono", fontSize: "sm" },
        h(RouterLink, { to: `?image=${encodeURIComponent(image.source)}` }, image.source || "(unknown image)"),
      ),
      h(
        Text,
        { fontSize: "xs", color: "fg.muted" },
        `${rows.length} recent · reused ${image.layers_reused} / built ${image.layers_built} layers · `,
        h(Text, { as: "span", color: image.bytes_saved ? "fg.success" : "fg.muted", fontWeight: "semibold" }, `${bytes(image.bytes_saved)} reused`),
        ` · ${seconds(image.seconds_saved)} build time avoided`,
        image.failed ? h(Text, { as: "span", color: "fg.error", fontWeight: "semibold" }, ` · ${image.failed} failed`) : null,
      ),
    ),
    h(
      Table.Root,
      { size: "sm", tableLayout: "fixed", w: "100%" },
      h(
        Table.Header,
        null,
        h(
          Table.Row,
          null,
          h(Table.ColumnHeader, { w: "104px" }, "When (UTC)"),
          h(Table.ColumnHeader, { w: "104px" }, "Status"),
          h(Table.ColumnHeader, null, "Target · platforms"),
          h(Table.ColumnHeader, { w: "130px" }, "Layers"),
          h(Table.ColumnHeader, { w: "112px" }, "Size"),
          h(
            Table.ColumnHeader,
            { w: "98px" },
            "Reused",
            h(Hint, { label: "Reused: how it is computed", text: `${BYTES_HELP} Below: ${SAVED_HELP}` }),
          ),
          h(Table.ColumnHeader, { w: "88px" }, "Duration"),
          h(Table.ColumnHeader, { w: "19%" }, "Run / task log"),
        ),
      ),
      h(Table.Body, null, rows.map((r) => h(ConversionRow, { key: r.run_key, row: r }))),
    ),
  );
}

function Empty({ filtered }) {
  return h(
    EmptyState.Root,
    { borderWidth: "1px", borderStyle: "dashed", borderColor: "border", borderRadius: "md" },
    h(
      EmptyState.Content,
      null,
      h(EmptyState.Title, null, filtered ? "No conversions of this image" : "No conversions recorded yet"),
      h(
        EmptyState.Description,
        null,
        "Trigger the ",
        h(RouterLink, { to: "/dags/overlaybd_convert" }, "overlaybd_convert"),
        " DAG to convert an image.",
      ),
    ),
  );
}

function FilterBar({ image, status }) {
  const to = (next) => {
    const params = new URLSearchParams();
    if (image) params.set("image", image);
    if (next) params.set("status", next);
    const query = params.toString();
    return query ? `?${query}` : "?";
  };
  const option = (value, label) =>
    h(
      Chakra.Button,
      { key: label, asChild: true, size: "sm", variant: (status || "") === value ? "solid" : "outline", colorPalette: "brand" },
      h(Router.Link, { to: to(value) }, label),
    );
  return h(
    HStack,
    { gap: 0, mb: 4, "data-testid": "filters" },
    h(Chakra.ButtonGroup, { attached: true, size: "sm" }, option("", "All"), option("success", "Succeeded"), option("failed", "Failed")),
  );
}

function OverlaybdPage() {
  const [params] = Router.useSearchParams();
  const image = params.get("image") || "";
  const status = params.get("status") || "";
  const [state, setState] = React.useState({ data: null, error: null });

  React.useEffect(() => {
    let cancelled = false;
    const query = new URLSearchParams();
    if (image) query.set("image", image);
    if (status) query.set("status", status);
    const url = new URL(`${API}${query.toString() ? `?${query}` : ""}`, document.baseURI);
    const load = () =>
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then((r) => (r.ok ? r.json() : r.text().then((t) => Promise.reject(new Error(`${r.status}: ${t.slice(0, 200)}`)))))
        .then((data) => !cancelled && setState({ data, error: null }))
        .catch((error) => !cancelled && setState((s) => ({ data: s.data, error: String(error.message || error) })));
    load();
    const timer = setInterval(() => document.visibilityState === "visible" && load(), REFRESH_MS);
    return () => {
      cancelled = true;
      clearInterval(timer);
    };
  }, [image, status]);

  const { data, error } = state;
  return h(
    Box,
    { p: 3, minW: 0, maxW: "100%", "data-testid": "overlaybd-page" },
    h(
      Flex,
      { justify: "space-between", align: "baseline", gap: 3, wrap: "wrap", mb: 3 },
      h(
        Box,
        { minW: 0 },
        h(Heading, { size: "lg" }, "overlaybd conversions"),
        h(
          Wrapping,
          { fontSize: "sm", color: "fg.muted" },
          image
            ? h(React.Fragment, null, "Image ", h(Code, { size: "sm" }, image), " · ", h(RouterLink, { to: "?" }, "all images"), " · ")
            : null,
          data ? h(React.Fragment, null, "dedup database ", h(Code, { size: "sm" }, data.database)) : null,
        ),
      ),
      h(
        Text,
        { fontSize: "xs", color: "fg.muted" },
        h(Box, { as: "span", display: "inline-block", w: "9px", h: "9px", borderRadius: "sm", bg: "success.solid", mr: 1 }),
        "layers reused",
        h(Box, { as: "span", display: "inline-block", w: "9px", h: "9px", borderRadius: "sm", bg: "brand.solid", ml: 3, mr: 1 }),
        "layers built",
      ),
    ),
    error ? h(Text, { color: "fg.error", mb: 3, "data-testid": "load-error" }, `Could not load conversions: ${error}`) : null,
    data === null
      ? error
        ? null
        : h(Spinner, { size: "lg" })
      : h(
          React.Fragment,
          null,
          h(Stats, { totals: data.totals }),
          h(FilterBar, { image, status }),
          h(Failures, { rows: data.failures }),
          data.images.length
            ? data.images.map((img) => h(ImageSection, { key: img.source, image: img }))
            : h(Empty, { filtered: Boolean(image || status) }),
        ),
  );
}

globalThis.AirflowPlugin = OverlaybdPage;
