// The web console in headless Chromium against a real `weir serve` running
// the reservation example (started, deployed and stopped by
// tests/e2e/console.rs, which passes):
//   WEIR_URL        the server
//   WEIR_TOKEN      its API token (reads are open, actions need it)
//   WEIR_V2_WASM    a second build of the reservation component to upload as reservation@2
//   WEIR_SCREENSHOTS where the screenshots go
//   WEIR_CHROMIUM   the browser (default Debian's /usr/bin/chromium)
// With WEIR_SCENARIO=cluster (tests/e2e/cluster.rs) it checks one instance
// of a three-instance cluster on Kafka instead:
//   WEIR_URL, WEIR_SCREENSHOTS as above
//   WEIR_APP        the application the cluster runs
//   WEIR_INSTANCES  the instance ids, comma-separated
// Each step asserts what a person would see; the first failure exits 1 with
// what was expected and a screenshot of the page at that moment.
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const scenario = process.env.WEIR_SCENARIO || "reservation";
const url = need("WEIR_URL");
const shots = need("WEIR_SCREENSHOTS");
mkdirSync(shots, { recursive: true });

function need(name) {
  const v = process.env[name];
  if (!v) { console.error(`${name} is not set`); process.exit(2); }
  return v;
}

const browser = await chromium.launch({
  executablePath: process.env.WEIR_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
const pageErrors = [];
page.on("pageerror", e => pageErrors.push(e.message));
page.on("dialog", d => d.accept());

let step = "start";
async function shot(name) { await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true }); }

/** Polls `probe` (in Node, may use the page) until it returns a truthy value. */
async function waitFor(what, probe, ms = 20000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try { last = await probe(); if (last) return last; } catch (e) { last = e.message; }
    await page.waitForTimeout(200);
  }
  throw new Error(`${what}: not seen within ${ms} ms (last: ${JSON.stringify(last)})`);
}

async function text(selector) { return (await page.locator(selector).first().textContent()) || ""; }

async function produce(topic, lines) {
  const r = await fetch(`${url}/v1/topics/${topic}/records`, {
    method: "POST", headers: { Authorization: `Bearer ${process.env.WEIR_TOKEN}`, "Content-Type": "application/x-ndjson" }, body: lines.join("\n"),
  });
  if (!r.ok) throw new Error(`producing to ${topic}: ${r.status} ${await r.text()}`);
}

async function useToken(value) {
  await page.fill("#token", value);
  await page.click("#token-form button[type=submit]");
}

async function clusterScenario() {
  const app = need("WEIR_APP");
  const ids = need("WEIR_INSTANCES").split(",").sort();
  step = "the overview lists the cluster's instances";
  await page.goto(`${url}/`);
  await waitFor("every instance in the cluster section, alive", async () => {
    const rows = await page.locator("#cluster tr[data-instance]").evaluateAll(trs => trs.map(tr => [tr.dataset.instance, tr.textContent]));
    const seen = rows.map(r => r[0]).sort();
    return JSON.stringify(seen) === JSON.stringify(ids) && rows.every(r => r[1].includes("alive") && !r[1].includes("not alive"));
  });
  await shot("cluster-01-overview");
  step = "the application's page: every instance and every task";
  await page.goto(`${url}/#/apps/${app}`);
  await waitFor("every instance at generation 1, running", async () => {
    const rows = await page.locator("#instances tr[data-instance]").allTextContents();
    return rows.length === ids.length && rows.every(r => r.includes("gen 1 running"));
  });
  await waitFor("the four partitions' tasks, each on one of the instances", async () => {
    const rows = await page.locator("#tasks tbody tr").evaluateAll(trs => trs.map(tr => [tr.dataset.instance, tr.dataset.task]));
    const tasks = rows.map(r => r[1]).sort();
    return JSON.stringify(tasks) === JSON.stringify(["0_0", "0_1", "0_2", "0_3"]) && rows.every(r => ids.includes(r[0])) && new Set(rows.map(r => r[0])).size === ids.length;
  });
  await waitFor("the graph", async () => (await page.locator("#graph g.node").count()) > 0);
  // The store browser scans every partition, wherever its task runs.
  await waitFor("the counts of keys, served by more than one instance", async () => {
    const served = await page.locator("#store-results tbody td.served-by").allTextContents();
    return served.length >= 10 && new Set(served).size >= 2 && served.every(s => s.startsWith("http://127.0.0.1:"));
  });
  // The dead-letter browser reads the latest records from Kafka (none here).
  await waitFor("the dead-letter browser answered", async () => (await text("#dead-letters tbody")).includes("No dead letter yet."));
  await shot("cluster-02-app");
}

try {
  if (scenario === "cluster") {
    await clusterScenario();
    if (pageErrors.length) throw new Error(`the page threw: ${pageErrors.join("; ")}`);
    console.log("console test passed: every step");
    await browser.close();
    process.exit(0);
  }
  const token = need("WEIR_TOKEN");
  const v2 = need("WEIR_V2_WASM");
  step = "read-only without a token";
  await page.goto(`${url}/`);
  await waitFor("the reservation application listed", async () => (await page.locator("#apps tr[data-app=reservation]").count()) === 1);
  await waitFor("the read-only note", async () => (await text("#mode")).includes("read-only"));
  if (!(await page.locator("#upload-form button[type=submit]").isDisabled())) throw new Error("upload is enabled without a token");
  await shot("01-overview-read-only");

  step = "a wrong token is refused on screen";
  await useToken("not-the-token");
  await page.setInputFiles("#upload-form input[type=file]", v2);
  await page.fill("#upload-form input[name=name]", "reservation");
  await page.fill("#upload-form input[name=version]", "2");
  await page.click("#upload-form button[type=submit]");
  await waitFor("a 403 in the flash", async () => {
    const t = await text("#flash");
    return t.includes("403") && t.includes("forbidden") && t;
  });
  await shot("02-wrong-token-refused");

  step = "a bad spec shows its field paths";
  await useToken(token);
  await page.fill("#deploy-form input[name=app]", "broken");
  await page.fill("#deploy-form textarea", [
    "name: broken",
    "topics: { in: 1 }",
    "sources: { in: { topic: in, to: [p] } }",
    "processors:",
    "  p: { component: nothing@1, stores: [nope] }",
  ].join("\n"));
  await page.click("#deploy-form button[type=submit]");
  await waitFor("the problem under processors.p.stores[0]", async () => (await text("#deploy-form .spec-problems")).includes("processors.p.stores[0]"));
  await shot("03-bad-spec-problems");

  step = "upload a component with the token";
  await page.setInputFiles("#upload-form input[type=file]", v2);
  await page.fill("#upload-form input[name=name]", "reservation");
  await page.fill("#upload-form input[name=version]", "2");
  await page.click("#upload-form button[type=submit]");
  await waitFor("uploaded reservation@2", async () => (await text("#flash")).includes("uploaded reservation@2"));
  await waitFor("reservation in the components table", async () => (await text("#components")).includes("reservation"));

  step = "the topology graph has every node and edge of the spec";
  await page.goto(`${url}/#/apps/reservation`);
  await waitFor("the graph", async () => (await page.locator("#graph g.node").count()) > 0);
  const nodes = (await page.locator("#graph g.node").evaluateAll(els => els.map(e => e.getAttribute("data-id")))).sort();
  // Every node and edge of the spec (the same list Topology::describe's unit test checks).
  const want = JSON.parse(readFileSync(new URL("./reservation-graph.json", import.meta.url), "utf8"));
  const wantNodes = want.nodes;
  if (JSON.stringify(nodes) !== JSON.stringify(wantNodes)) throw new Error(`graph nodes ${JSON.stringify(nodes)}, want ${JSON.stringify(wantNodes)}`);
  const edges = (await page.locator("#graph g.edge").evaluateAll(els => els.map(e => `${e.dataset.from} -${e.dataset.kind}-> ${e.dataset.to}`))).sort();
  const wantEdges = want.edges;
  if (JSON.stringify(edges) !== JSON.stringify(wantEdges)) throw new Error(`graph edges ${JSON.stringify(edges)}, want ${JSON.stringify(wantEdges)}`);
  const clusters = await page.locator("#graph g.cluster").count();
  if (clusters !== 2) throw new Error(`${clusters} sub-topology boxes, want 2 (the repartition topic is the boundary)`);
  if ((await page.locator("#chart-throughput canvas").count()) === 0) throw new Error("no throughput chart");

  step = "producing records makes the task table's counts move";
  const recordsIn = async () => (await page.locator("#tasks td.records-in").allTextContents()).reduce((a, t) => a + Number(t.replace(/,/g, "") || 0), 0);
  await waitFor("8 tasks in the table", async () => (await page.locator("#tasks tbody tr").count()) === 8);
  const before = await recordsIn();
  const orders = [];
  for (let i = 0; i < 40; i++) orders.push(JSON.stringify({ key: `c${i}`, value: { order_id: `c${i}`, product_id: i % 2 ? "ipad" : "pencil", qty: 1 } }));
  await produce("orders", orders);
  // Every order is read twice: by `rekey` from orders, by `reserve` from the repartition topic.
  await waitFor("records in +80", async () => (await recordsIn()) >= before + 80 && (await recordsIn()));
  // The counts moved between two polls: the poll after shows a rate.
  await waitFor("a non-zero in/s in the task table", async () => {
    const rates = await page.locator("#tasks tbody tr td:nth-child(6)").allTextContents();
    return rates.some(r => Number(r.replace(/,/g, "")) > 0);
  }, 5000);
  await shot("04-app-tasks-moving");

  step = "a trapping record appears in the dead-letter browser with its error";
  // The orders above used up the stock; the first adjustment lifts ipad's to
  // i64::MAX, the second overflows it: the guest panics, the call traps.
  const huge = `{"key": "ipad", "value": {"product_id": "ipad", "delta": 9223372036854775807}}`;
  await produce("adjustments", [huge, huge]);
  const trapRow = await waitFor("a trap in the dead letters", async () => {
    const rows = await page.locator("#dead-letters tbody tr").evaluateAll(trs => trs.map(tr => ({
      kind: tr.querySelector(".dl-kind")?.textContent, error: tr.querySelector(".dl-error")?.textContent,
      cells: [...tr.querySelectorAll("td")].map(td => td.textContent),
    })));
    return rows.find(r => r.kind === "trap");
  });
  if (!trapRow.error.includes("overflows")) throw new Error(`the trap's error does not carry the guest's panic message: ${trapRow.error}`);
  if (!trapRow.cells[5].includes("reserve")) throw new Error(`the trap's processor is ${trapRow.cells[5]}, want reserve`);
  if (!trapRow.cells[6].startsWith("adjustments/")) throw new Error(`the trap's source is ${trapRow.cells[6]}, want adjustments/…`);
  await waitFor("reserve painted as warned", async () => (await page.locator('#graph g.node[data-id="processor:reserve"]').getAttribute("data-health")) === "warn", 10000);
  await shot("05-dead-letter-trap");

  step = "a swap done from the page shows in the history";
  await waitFor("reservation@2 offered", async () => (await page.locator("#swap-form select[name=version] option").allTextContents()).includes("reservation@2"));
  await page.selectOption("#swap-form select[name=processor]", "reserve");
  await page.selectOption("#swap-form select[name=version]", "reservation@2");
  await page.click("#swap-form button[type=submit]");
  const swap = await waitFor("a swap to reservation@2 in the history", async () => {
    const rows = await page.locator("#swaps tbody tr").allTextContents();
    return rows.find(r => r.includes("reservation@2"));
  }, 30000);
  await waitFor("every task switched", async () => {
    const rows = await page.locator("#swaps tbody tr").allTextContents();
    return rows.some(r => r.includes("reservation@2") && r.includes("8/8") && (r.includes("switched") || r.includes("applied")));
  }, 30000);
  await waitFor("the graph shows reserve's new version", async () => (await text('#graph g.node[data-id="processor:reserve"]')).includes("reservation@2"));
  await shot("06-swap-in-history");
  console.log(`swap row: ${swap}`);

  step = "the store browser reads stock through interactive queries";
  await page.reload();
  await waitFor("the stock listed when the page opens", async () => {
    const keys = await page.locator("#store-results tbody tr td:first-child").allTextContents();
    return keys.includes("ipad") && keys.includes("pencil");
  });
  await page.fill("#store-form input[name=key]", "pencil");
  await page.click("#store-form button[name=lookup]");
  await waitFor("pencil's stock", async () => {
    const cells = await page.locator("#store-results tbody tr td").allTextContents();
    return cells.length === 4 && cells[0] === "pencil" && cells[3] !== "" && cells;
  });
  await page.fill("#store-form input[name=key]", "");
  await page.click("#store-form button[name=scan]");
  await waitFor("a scan listing ipad and pencil", async () => {
    const keys = await page.locator("#store-results tbody tr td:first-child").allTextContents();
    return keys.includes("ipad") && keys.includes("pencil");
  });
  await shot("07-store-browser");

  step = "delete the application from the page";
  await page.click("#delete-form button[type=submit]");
  await waitFor("back on the overview without reservation", async () =>
    (await page.evaluate(() => location.hash)) === "#/" && (await page.locator("#apps tr[data-app=reservation]").count()) === 0);
  await shot("08-deleted");

  if (pageErrors.length) throw new Error(`the page threw: ${pageErrors.join("; ")}`);
  console.log("console test passed: every step");
} catch (e) {
  console.error(`console test failed at step "${step}": ${e.message}`);
  await shot("failure").catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
