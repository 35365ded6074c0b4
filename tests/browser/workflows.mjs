// Loads workflows into a running ComfyUI's own frontend in headless Chromium and queues one from the UI.
// Usage: node workflows.mjs <job.json>; job = {url, chromium, userDataDir, artefacts, workflows: [{name, path}],
// queue: name, steps, viewport: {width, height}}. Prints one JSON line: {loaded: [{name, nodes, fileNodes,
// missingTypes, dialogs, prompt, groupShots: [{file, scale, groupSize, size}]}], queued: {...}, consoleErrors: [...]}. Playwright-core drives the system Chromium (no browser download).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(job.nodeModules, "noop.js"));
const { chromium } = require("playwright-core");

const consoleErrors = [];  // {phase, text}: phase "startup", "load <name>" or "queue <name>"
let phase = "startup";
const failedRequests = [];
const context = await chromium.launchPersistentContext(job.userDataDir, {
  executablePath: job.chromium,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
  viewport: job.viewport,
});
const result = { loaded: [], queued: null, consoleErrors, failedRequests };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push({ phase, text: msg.text() }); });
  page.on("pageerror", (err) => consoleErrors.push({ phase, text: `pageerror: ${err.message}` }));
  // Console lines for failed loads do not name the URL: keep them next to the errors.
  page.on("response", (r) => { if (r.status() >= 400) failedRequests.push({ phase, text: `${r.status()} ${r.url()}` }); });
  await page.goto(job.url, { waitUntil: "load" });
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph && document.querySelector("canvas"),
                             null, { timeout: 120000 });
  await page.waitForTimeout(1000);

  const visibleDialogs = () => page.evaluate(() =>
    [...document.querySelectorAll(".p-dialog, [role=dialog]")]
      .filter((d) => d.offsetParent !== null || d.getClientRects().length)
      .map((d) => d.innerText.slice(0, 300)));

  // One screenshot per group at 100% zoom (the size the editor draws its widgets at, so they can be read), for
  // the README gallery and the tutorial: the view moved so the group sits just inside the canvas's top-left
  // corner, clear of the editor's floating menus; a group larger than the window gets a larger window.
  const margin = [70, 150];  // below the floating workflow-name box
  const groupShots = async (name) => {
    const bounds = await page.evaluate(() => (window.app.graph.groups ?? window.app.graph._groups ?? [])
      .map((g) => [...(g._bounding ?? [...g.pos, ...g.size])]));
    const shots = [];
    for (const [i, [x, y, w, h]] of bounds.entries()) {
      const needed = { width: Math.max(job.viewport.width, Math.ceil(w) + 2 * margin[0]),
                        height: Math.max(job.viewport.height, Math.ceil(h) + 2 * margin[1]) };
      const current = page.viewportSize();
      if (current.width !== needed.width || current.height !== needed.height) {
        await page.setViewportSize(needed);
        await page.waitForTimeout(300);  // the editor resizes its canvas on the window's resize event
      }
      const clip = await page.evaluate(({ x, y, w, h, margin }) => {
        const canvas = window.app.canvas;
        const rect = canvas.canvas.getBoundingClientRect();
        canvas.ds.scale = 1;
        canvas.ds.offset = [margin[0] - x, margin[1] - y];
        canvas.setDirty(true, true);
        canvas.draw(true, true);
        return { x: rect.left + margin[0] - 4, y: rect.top + margin[1] - 4, width: Math.ceil(w) + 8,
                 height: Math.ceil(h) + 8, scale: canvas.ds.scale };
      }, { x, y, w, h, margin });
      await page.waitForTimeout(200);
      const file = `${name}.group${i + 1}.png`;
      const { scale, ...area } = clip;
      await page.screenshot({ path: path.join(job.artefacts, file), clip: area });
      shots.push({ file, scale, groupSize: [w, h], size: [area.width, area.height] });
    }
    await page.setViewportSize(job.viewport);
    return shots;
  };

  for (const wf of job.workflows) {
    const data = JSON.parse(readFileSync(wf.path, "utf8"));
    phase = `load ${wf.name}`;
    const info = await page.evaluate(async ({ data, name }) => {
      await window.app.loadGraphData(data, true, true, name);
      const nodes = window.app.graph.nodes ?? window.app.graph._nodes;
      const missingTypes = nodes.filter((n) => !window.LiteGraph.registered_node_types[n.type] || n.has_errors)
        .map((n) => n.type);
      const { output } = await window.app.graphToPrompt();
      return { nodes: nodes.length, missingTypes, prompt: output };
    }, { data, name: wf.name });
    // The whole graph in view for the screenshot (the editor's own Fit View command).
    await page.evaluate(() => window.app.extensionManager?.command?.execute?.("Comfy.Canvas.FitView"));
    await page.waitForTimeout(500);
    info.dialogs = await visibleDialogs();
    info.name = wf.name;
    info.fileNodes = data.nodes.length;
    await page.screenshot({ path: path.join(job.artefacts, `${wf.name}.png`) });
    info.groupShots = await groupShots(wf.name);
    result.loaded.push(info);
  }

  // Queue one workflow from the UI: its steps widgets lowered, then the editor's own Run button.
  phase = `queue ${job.queue}`;
  const target = job.workflows.find((w) => w.name === job.queue);
  const data = JSON.parse(readFileSync(target.path, "utf8"));
  await page.evaluate(async ({ data, name, steps }) => {
    await window.app.loadGraphData(data, true, true, name);
    for (const node of window.app.graph.nodes ?? window.app.graph._nodes)
      for (const w of node.widgets ?? [])
        if (w.name === "steps" || w.name.endsWith("_steps")) w.value = Math.max(steps, w.options?.min ?? 1);
  }, { data, name: target.name, steps: job.steps });
  const before = await page.evaluate(async () => (await (await fetch("/api/history")).json()));
  const button = page.locator('[data-testid="queue-button"]').first();
  let how = "run button";
  if (await button.count()) await button.click();
  else { how = "app.queuePrompt"; await page.evaluate(() => window.app.queuePrompt(0, 1)); }
  const saveIds = data.nodes.filter((n) => n.type === "SaveImage" || n.type === "CLIFSaveImage").map((n) => String(n.id));
  // Wait for the images on the save nodes; a prompt that failed on the server ends the wait at once.
  const deadline = Date.now() + job.timeoutMs;
  for (;;) {
    const state = await page.evaluate(async ({ ids, before }) => {
      const outs = window.app.nodeOutputs ?? {};
      if (ids.every((id) => outs[id]?.images?.length)) return { done: true };
      const history = await (await fetch("/api/history")).json();
      const failed = Object.entries(history).filter(([k, v]) => !(k in before) && v.status?.status_str === "error");
      return { done: false, failed: failed.map(([, v]) => v.status.messages) };
    }, { ids: saveIds, before });
    if (state.done) break;
    if (state.failed.length) throw new Error(`the queued prompt failed: ${JSON.stringify(state.failed).slice(0, 3000)}`);
    if (Date.now() > deadline) throw new Error(`no images on nodes ${saveIds} after ${job.timeoutMs} ms`);
    await page.waitForTimeout(500);
  }
  // The image shown on the node must have loaded from the server (/view), not just be listed.
  await page.waitForFunction((ids) => ids.every((id) => {
    const node = window.app.graph.getNodeById(Number(id));
    return node?.imgs?.length && node.imgs.every((im) => im.complete && im.naturalWidth > 0);
  }), saveIds, { timeout: 60000, polling: 500 });
  const shown = await page.evaluate((ids) => ids.map((id) => {
    const node = window.app.graph.getNodeById(Number(id));
    return { id, images: window.app.nodeOutputs[id].images, src: node.imgs.map((im) => im.src),
             size: node.imgs.map((im) => [im.naturalWidth, im.naturalHeight]) };
  }), saveIds);
  const after = await page.evaluate(async () => (await (await fetch("/api/history")).json()));
  await page.screenshot({ path: path.join(job.artefacts, `${target.name}.queued.png`) });
  result.queued = { name: target.name, how, shown,
                    newPrompts: Object.keys(after).filter((k) => !(k in before)) };
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
