// Sends through the relay's HTTP send API with Resend's official Node SDK, pointed at the
// relay by its base-URL setting (RESEND_BASE_URL) and a project token as the key.
// Usage: RESEND_BASE_URL=http://127.0.0.1:PORT RESEND_API_KEY=smtpr_… node send.mjs <from> <to>
// Prints one JSON line: {"id": …, "batch": [ids…], "bad_key": {"statusCode": …, "name": …},
// "idem": [id, id], "idem_conflict": {"statusCode": …, "name": …}}.
import { Resend } from "resend";

const [from, to] = process.argv.slice(2);
const resend = new Resend(process.env.RESEND_API_KEY);
const sent = await resend.emails.send({
  from: `Node SDK <${from}>`,
  to: [to],
  subject: "Hello from the resend Node SDK",
  html: "<p>Sent with <strong>resend-node</strong>.</p>",
  text: "Sent with resend-node.",
  replyTo: from,
  headers: { "X-Entity-Ref-ID": "node-1" },
  attachments: [{ filename: "note.txt", content: Buffer.from("attached bytes\n") }],
  tags: [{ name: "sdk", value: "node" }],
});
if (sent.error) {
  console.log(JSON.stringify({ error: sent.error }));
  process.exit(1);
}
const batch = await resend.batch.send([
  { from, to: [to], subject: "batch 1", text: "one" },
  { from, to: [to], subject: "batch 2", text: "two" },
]);
if (batch.error) {
  console.log(JSON.stringify({ error: batch.error }));
  process.exit(1);
}
// The SDK's idempotency option: a retry gets the first id; another payload with it is refused.
const reset = { from, to: [to], subject: "reset", text: "code 4711" };
const idem = [];
for (let i = 0; i < 2; i++) {
  const r = await resend.emails.send(reset, { idempotencyKey: "node/reset-1" });
  idem.push(r.data ? r.data.id : r.error);
}
const conflict = await resend.emails.send(
  { ...reset, text: "code 4712" },
  { idempotencyKey: "node/reset-1" },
);
const bad = await new Resend("smtpr_not-a-real-token").emails.send({
  from, to: [to], subject: "x", text: "x",
});
console.log(JSON.stringify({
  id: sent.data.id,
  batch: batch.data.data.map((d) => d.id),
  bad_key: bad.error,
  idem,
  idem_conflict: conflict.error,
}));
