// Drives nostr-tools' nip77 Negentropy as the INITIATOR of a negentropy V1
// session whose responder is the factsync Go implementation.
//
// usage: node initiator.mjs <items.json> [frameSizeLimit]
//   items.json: [[timestamp, "64 hex id"], ...], this side's set
// Over stdout it writes one line per message to the responder,
//   MSG <hex>
// and reads the responder's reply as one hex line on stdin. When the
// session is complete it writes
//   DONE {"have": [...], "need": [...], "rounds": n}
// and exits.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { nip77 } from "nostr-tools";

const [itemsPath, frameArg] = process.argv.slice(2);
const storage = new nip77.NegentropyStorageVector();
for (const [timestamp, id] of JSON.parse(readFileSync(itemsPath, "utf8"))) {
  storage.insert(timestamp, id);
}
storage.seal();

const neg = new nip77.Negentropy(storage, frameArg ? Number(frameArg) : undefined);
const have = [];
const need = [];
let rounds = 0;

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
let msg = neg.initiate();
while (msg !== null) {
  process.stdout.write(`MSG ${msg}\n`);
  const { value: reply, done } = await lines.next();
  if (done) throw new Error("responder closed the session");
  rounds++;
  msg = neg.reconcile(reply.trim(), (id) => have.push(id), (id) => need.push(id));
}
process.stdout.write(`DONE ${JSON.stringify({ have, need, rounds })}\n`);
process.exit(0);
