// Run Rhubarb Lip Sync (its WebAssembly port, npm rhubarb-lip-sync-wasm) over a list of clips.
//   node bench/rhubarb_run.mjs PACKAGE_DIR JOBS.json OUT.json
// JOBS.json: [{"name", "pcm": path to 16 kHz mono s16le, "text": dialog text or ""}]
// OUT.json:  {"<name>": [{"start", "end", "value"}, ...]}  (Rhubarb's mouthCues, seconds)
import fs from "fs";
import path from "path";
import { pathToFileURL } from "url";

const [pkgDir, jobsPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node rhubarb_run.mjs PACKAGE_DIR JOBS.json OUT.json");
  process.exit(2);
}
const { Rhubarb } = await import(pathToFileURL(path.join(pkgDir, "dist", "index.js")).href);
const jobs = JSON.parse(fs.readFileSync(jobsPath, "utf8"));
const out = {};
for (const job of jobs) {
  const pcm = fs.readFileSync(job.pcm);
  const res = await Rhubarb.getLipSync(pcm, job.text ? { dialogText: job.text } : {});
  out[job.name] = res.mouthCues;
}
fs.writeFileSync(outPath, JSON.stringify(out));
